//! The checks on the module graph: cycles, walls, clock reads. Each returns its findings as
//! messages with the chain of modules and where each step is written.

use crate::read::{Graph, join, within};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Every cycle among modules, as `a -> b -> ... -> a` with where each step is written.
///
/// A module may be tangled with its own submodules through itself: the parent declares, calls
/// or re-exports its children, the children use the parent's shared types and traits through
/// `super::`; that is one module split over files (`daemon` and `daemon::host`, `policy` and
/// `policy::parse`). Any other cycle is reported: one between modules neither of which holds
/// the other (siblings, cousins, unrelated modules), even when it also runs through a parent.
/// So the cycles allowed are exactly those that pass through the module holding all of their
/// members; each other one is found under the closest module holding its members, among that
/// module's descendants, the module itself left out. `ignore` edges are left out.
pub fn cycles(g: &Graph, ignore: &[(&str, &str)]) -> Vec<String> {
    let succ = |a: &str| -> Vec<String> {
        g.edges
            .get(a)
            .map(|m| {
                m.keys()
                    .filter(|b| !ignore.contains(&(a, b.as_str())))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for holder in &g.nodes {
        // The child of `holder` that `m` is in.
        let branch = |m: &str| -> Option<String> {
            let rest = if holder == "crate" {
                m
            } else {
                m.strip_prefix(holder.as_str())?.strip_prefix("::")?
            };
            let first = rest.split("::").next()?;
            Some(join(holder, first))
        };
        let members: BTreeSet<String> = g
            .nodes
            .iter()
            .filter(|m| *m != holder && *m != "crate" && branch(m).is_some())
            .cloned()
            .collect();
        let inner = |x: &str| -> Vec<String> {
            succ(x)
                .into_iter()
                .filter(|y| members.contains(y))
                .collect()
        };
        for comp in sccs(&members, &inner) {
            let inside: BTreeSet<&String> = comp.iter().collect();
            let within_comp = |x: &str| -> Vec<String> {
                inner(x)
                    .into_iter()
                    .filter(|y| inside.contains(y))
                    .collect()
            };
            // One cycle for each edge between two branches, until each such edge is in one.
            let mut covered: BTreeSet<(String, String)> = BTreeSet::new();
            for u in &comp {
                for v in within_comp(u) {
                    if branch(u) == branch(&v) || covered.contains(&(u.clone(), v.clone())) {
                        continue;
                    }
                    // The shortest way back from v to u closes the cycle.
                    let mut path = vec![u.clone()];
                    path.extend(
                        shortest(&v, u, within_comp).unwrap_or_else(|| vec![v.clone(), u.clone()]),
                    );
                    for w in path.windows(2) {
                        covered.insert((w[0].clone(), w[1].clone()));
                    }
                    out.push(describe(g, &path));
                }
            }
        }
    }
    out
}

/// A chain of modules, with where each step is written.
fn describe(g: &Graph, path: &[String]) -> String {
    let mut s = path.join(" -> ");
    for w in path.windows(2) {
        if let Some(site) = g.edges.get(&w[0]).and_then(|m| m.get(&w[1])) {
            s.push_str(&format!("\n    {} uses {} at {site}", w[0], w[1]));
        }
    }
    s
}

/// Tarjan's strongly connected components.
fn sccs(nodes: &BTreeSet<String>, succ: &dyn Fn(&str) -> Vec<String>) -> Vec<Vec<String>> {
    struct St<'a> {
        succ: &'a dyn Fn(&str) -> Vec<String>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        on: BTreeSet<String>,
        stack: Vec<String>,
        out: Vec<Vec<String>>,
    }
    fn visit(st: &mut St<'_>, v: &str) {
        let n = st.index.len();
        st.index.insert(v.into(), n);
        st.low.insert(v.into(), n);
        st.stack.push(v.into());
        st.on.insert(v.into());
        for w in (st.succ)(v) {
            if !st.index.contains_key(&w) {
                visit(st, &w);
                let l = st.low[&w].min(st.low[v]);
                st.low.insert(v.into(), l);
            } else if st.on.contains(&w) {
                let l = st.index[&w].min(st.low[v]);
                st.low.insert(v.into(), l);
            }
        }
        if st.low[v] == st.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = st.stack.pop() {
                st.on.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            comp.sort();
            st.out.push(comp);
        }
    }
    let mut st = St {
        succ,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        on: BTreeSet::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in nodes {
        if !st.index.contains_key(v) {
            visit(&mut st, v);
        }
    }
    st.out
}

/// The shortest path `from .. to` (both included), breadth first.
fn shortest(from: &str, to: &str, succ: impl Fn(&str) -> Vec<String>) -> Option<Vec<String>> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut q = VecDeque::from([from.to_string()]);
    let mut seen = BTreeSet::from([from.to_string()]);
    while let Some(x) = q.pop_front() {
        if x == to {
            let mut path = vec![x.clone()];
            let mut cur = x;
            while let Some(p) = prev.get(&cur) {
                path.push(p.clone());
                cur = p.clone();
            }
            path.reverse();
            return Some(path);
        }
        for y in succ(&x) {
            if seen.insert(y.clone()) {
                prev.insert(y.clone(), x.clone());
                q.push_back(y);
            }
        }
    }
    None
}

/// Modules of `g` that are `root` or inside it.
fn subtree<'a>(g: &'a Graph, root: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    g.nodes.iter().filter(move |m| within(m, root))
}

/// Every module reachable from `start` (itself included), each as the shortest way there; the
/// search goes no further than a module `stop` accepts.
fn ways(g: &Graph, start: &str, stop: impl Fn(&str) -> bool) -> Vec<Vec<String>> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut q = VecDeque::from([start.to_string()]);
    let mut seen = BTreeSet::from([start.to_string()]);
    let mut out = Vec::new();
    while let Some(x) = q.pop_front() {
        let mut way = vec![x.clone()];
        while let Some(p) = prev.get(way.last().expect("not empty")) {
            way.push(p.clone());
        }
        way.reverse();
        out.push(way);
        if stop(&x) {
            continue;
        }
        for y in g.edges.get(&x).into_iter().flat_map(|e| e.keys()) {
            if seen.insert(y.clone()) {
                prev.insert(y.clone(), x.clone());
                q.push_back(y.clone());
            }
        }
    }
    out
}

/// For every module in `from` (with its submodules): each chain of crate modules to a module in
/// `off` (with its submodules), or to one that names a crate in `crates`.
pub fn wall_breaches(g: &Graph, from: &[&str], off: &[&str], crates: &[&str]) -> Vec<String> {
    let banned = |m: &str| off.iter().find(|o| within(m, o)).copied();
    let mut out = Vec::new();
    for start in from.iter().flat_map(|root| subtree(g, root)) {
        for way in ways(g, start, |m| banned(m).is_some()) {
            let last = way.last().expect("not empty");
            if let Some(bad) = banned(last) {
                out.push(format!("{start} reaches {bad}: {}", describe(g, &way)));
                continue;
            }
            for (c, site) in g.crates.get(last).into_iter().flatten() {
                if crates.contains(&c.as_str()) {
                    out.push(format!(
                        "{start} uses the crate {c}: {}\n    {last} names {c} at {site}",
                        describe(g, &way)
                    ));
                }
            }
        }
    }
    out
}

/// For every module in `from` (with its submodules): each module it reaches (itself included)
/// that reads the clock.
pub fn clock_reads(g: &Graph, from: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for start in from.iter().flat_map(|root| subtree(g, root)) {
        for way in ways(g, start, |_| false) {
            let last = way.last().expect("not empty");
            for (what, site) in g.clock.get(last).into_iter().flatten() {
                out.push(format!(
                    "{start} reads the clock: {}\n    {last} calls {what} at {site}",
                    describe(g, &way)
                ));
            }
        }
    }
    out
}
