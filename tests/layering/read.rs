//! Reading the sources into a module graph: each `use` tree and path resolved to a crate
//! module or an external crate, test files left out.

use crate::CLOCK_READS;
use crate::lex::{is_ident, scan, use_paths};
use std::collections::{BTreeMap, BTreeSet};

/// A place in the sources, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// The module a file under `src/` holds (`None`: not part of the library).
fn module_of(path: &str) -> Option<String> {
    let rel = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    if rel == "main" {
        return None;
    }
    if rel == "lib" {
        return Some("crate".into());
    }
    let rel = rel.strip_suffix("/mod").unwrap_or(rel);
    Some(rel.replace('/', "::"))
}

pub fn join(m: &str, seg: &str) -> String {
    if m == "crate" {
        seg.to_string()
    } else {
        format!("{m}::{seg}")
    }
}

fn parent(m: &str) -> Option<String> {
    if m == "crate" {
        None
    } else {
        Some(
            m.rsplit_once("::")
                .map_or("crate".to_string(), |(p, _)| p.to_string()),
        )
    }
}

/// `m` is `root` or inside it.
pub fn within(m: &str, root: &str) -> bool {
    m == root || m.starts_with(&format!("{root}::"))
}

/// What the sources say, module by module.
#[derive(Default, Debug)]
pub struct Graph {
    /// Library modules by file, tests left out.
    pub nodes: BTreeSet<String>,
    /// module → module it uses → where first seen.
    pub edges: BTreeMap<String, BTreeMap<String, Site>>,
    /// module → external crate it names → where first seen.
    pub crates: BTreeMap<String, BTreeMap<String, Site>>,
    /// module → clock read (one of [`CLOCK_READS`]) → where first seen.
    pub clock: BTreeMap<String, BTreeMap<String, Site>>,
}

/// Path roots that are no crate of the build (or none worth a wall): primitives, the standard
/// library, path keywords, tool attributes.
const NOT_CRATES: &[&str] = &[
    "bool", "char", "str", "u8", "u16", "u32", "u64", "u128", "usize", "i8", "i16", "i32", "i64",
    "i128", "isize", "f32", "f64", "std", "core", "alloc", "self", "super", "crate", "Self",
    "clippy", "rustfmt",
];

/// Read `(path, text)` pairs (paths as `src/...`) into the module graph.
pub fn analyse(files: &[(String, String)]) -> Graph {
    let mut scans = BTreeMap::new();
    for (path, text) in files {
        if let Some(m) = module_of(path) {
            scans.insert(m.clone(), (path.clone(), scan(&m, text)));
        }
    }
    let tests: Vec<String> = scans
        .values()
        .flat_map(|(_, s)| s.test_children.clone())
        .collect();
    scans.retain(|m, _| !tests.iter().any(|t| within(m, t)));
    // Every module that exists (inline ones too), and the file module that holds each.
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (m, (_, s)) in &scans {
        owner.insert(m.clone(), m.clone());
        for i in &s.inline {
            owner.insert(i.clone(), m.clone());
        }
    }
    let mut g = Graph {
        nodes: scans.keys().cloned().collect(),
        ..Graph::default()
    };
    for (m, (path, s)) in &scans {
        let site = |line| Site {
            file: path.clone(),
            line,
        };
        // Names a `use` bound to a module, per (inline) module.
        let mut uses: Vec<(String, Vec<String>, Option<String>, usize)> = Vec::new();
        let mut paths: Vec<(String, Vec<String>, usize)> = Vec::new();
        let words: Vec<&str> = s.code.iter().map(|(_, t)| t.text.as_str()).collect();
        let mut i = 0;
        while i < words.len() {
            let (cur, tok) = &s.code[i];
            if words[i] == "use" {
                let mut found = Vec::new();
                let end = use_paths(&words, i + 1, Vec::new(), &mut found);
                for (p, name) in found {
                    uses.push((cur.clone(), p, name, tok.line));
                }
                i = end.max(i + 1);
                continue;
            }
            let starts = (is_ident(words[i])
                && (i == 0 || (words[i - 1] != "::" && words[i - 1] != ".")))
                || (words[i] == "::"
                    && words.get(i + 1).is_some_and(|w| is_ident(w))
                    && (i == 0 || !is_ident(words[i - 1]) && words[i - 1] != ">"));
            if starts {
                let mut p = Vec::new();
                let mut j = i;
                if words[j] == "::" {
                    p.push("::".to_string());
                    j += 1;
                }
                while j < words.len() && is_ident(words[j]) {
                    p.push(words[j].to_string());
                    if words.get(j + 1) == Some(&"::")
                        && words.get(j + 2).is_some_and(|w| is_ident(w))
                    {
                        j += 2;
                    } else {
                        break;
                    }
                }
                let n = p.iter().filter(|x| *x != "::").count();
                if n >= 2 {
                    paths.push((cur.clone(), p.clone(), tok.line));
                }
                // Clock reads, whether written as paths or bare calls.
                let text = p.join("::").replace("::::", "::");
                for r in CLOCK_READS {
                    if text.contains(r) && (r.contains("::") || p.iter().any(|x| x == r)) {
                        g.clock
                            .entry(m.clone())
                            .or_default()
                            .entry(r.to_string())
                            .or_insert(site(tok.line));
                    }
                }
                i = j + 1;
                continue;
            }
            i += 1;
        }
        // What each `use` binds, in its (inline) module: a crate module, a name from an
        // external crate (`use tokio::sync::watch` makes `watch::channel` tokio's), or nothing
        // of interest (an item, the standard library).
        let mut bound: BTreeMap<(String, String), Resolved> = BTreeMap::new();
        // Twice: a `use` may go through a name another `use` binds.
        for _ in 0..2 {
            for (cur, p, name, _) in &uses {
                if let Some(name) = name {
                    let b = match resolve_path(cur, p, &owner, &bound) {
                        Resolved::Module(_, false) => Resolved::Nothing,
                        r => r,
                    };
                    bound.insert((cur.clone(), name.clone()), b);
                }
            }
        }
        let all = uses
            .iter()
            .map(|(c, p, _, l)| (c, p, *l))
            .chain(paths.iter().map(|(c, p, l)| (c, p, *l)));
        for (cur, p, line) in all {
            match resolve_path(cur, p, &owner, &bound) {
                Resolved::Module(target, _) => {
                    let to = owner.get(&target).cloned().unwrap_or(target);
                    if to != *m {
                        g.edges
                            .entry(m.clone())
                            .or_default()
                            .entry(to)
                            .or_insert(site(line));
                    }
                }
                Resolved::Crate(name) => {
                    g.crates
                        .entry(m.clone())
                        .or_default()
                        .entry(name)
                        .or_insert(site(line));
                }
                Resolved::Nothing => {}
            }
        }
    }
    g
}

#[derive(Clone, Debug)]
enum Resolved {
    /// The longest module the path names a prefix of, and whether the whole path is that module.
    Module(String, bool),
    Crate(String),
    Nothing,
}

fn resolve_path(
    cur: &str,
    p: &[String],
    modules: &BTreeMap<String, String>,
    bound: &BTreeMap<(String, String), Resolved>,
) -> Resolved {
    let segs: Vec<&str> = p
        .iter()
        .map(|s| s.as_str())
        .filter(|s| *s != "self" || p.len() == 1)
        .collect();
    let Some(&first) = segs.first() else {
        return Resolved::Nothing;
    };
    let (mut base, rest): (String, &[&str]) = match first {
        "::" => {
            return match segs.get(1) {
                Some(c) if !NOT_CRATES.contains(c) => Resolved::Crate(c.to_string()),
                _ => Resolved::Nothing,
            };
        }
        "crate" => ("crate".to_string(), &segs[1..]),
        "super" => {
            let mut b = cur.to_string();
            let mut k = 0;
            while segs.get(k) == Some(&"super") {
                match parent(&b) {
                    Some(pb) => b = pb,
                    None => return Resolved::Nothing,
                }
                k += 1;
            }
            (b, &segs[k..])
        }
        _ if p.first().map(|s| s.as_str()) == Some("self") => (cur.to_string(), &segs[..]),
        _ => {
            // A child module, a name a `use` bound, else an external crate (lower case).
            let child = join(cur, first);
            if modules.contains_key(&child) {
                (child, &segs[1..])
            } else if let Some(b) = bound.get(&(cur.to_string(), first.to_string())) {
                match b {
                    Resolved::Module(b, _) => (b.clone(), &segs[1..]),
                    other => return other.clone(),
                }
            } else if first.chars().next().is_some_and(|c| c.is_lowercase())
                && !NOT_CRATES.contains(&first)
                && segs.len() >= 2
            {
                return Resolved::Crate(first.to_string());
            } else {
                return Resolved::Nothing;
            }
        }
    };
    let mut whole = true;
    for s in rest {
        let next = join(&base, s);
        if *s != "*" && modules.contains_key(&next) {
            base = next;
        } else {
            whole = false;
            break;
        }
    }
    if !modules.contains_key(&base) {
        return Resolved::Nothing;
    }
    Resolved::Module(base, whole)
}
