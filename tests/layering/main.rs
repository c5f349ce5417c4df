//! The crate's layering, read from its sources: no import cycle among modules, the pure core and
//! the simulator walled off from libvirt, the daemon's edges, tokio and HTTP, and the planner's
//! side of the wall free of clock reads. No build needed: the `.rs` files under `src/` are read
//! as text, so a wall is kept the moment a `use` would breach it, not when someone notices.
//!
//! How the files are read (`lex`, `read`: a lexer, not a compiler): comments and string or char
//! literals are blanked; items under `#[cfg(test)]` and files declared `#[cfg(test)] mod x;`
//! are left out (tests may import anything); every `use` tree and every path of two segments
//! or more in the remaining code is resolved from `crate::`, `super::`, `self::`, a child
//! module, or a name a `use` bound, to the longest module that exists. What resolves to no
//! module is an external crate when it starts in lower case (`tokio::spawn`, `hyper::Request`).
//!
//! Modules are nodes by file (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; a module written
//! inline in a file counts as its file), a parent and its child distinct: a child's `super::`
//! is an edge to its parent like any other. The one tangle allowed is a module with its own
//! submodules through itself (`check::cycles` says why). `src/main.rs` is the binary, a crate
//! of its own that nothing here can import, so it is not read.

mod check;
mod checker;
mod lex;
mod read;

use check::{clock_reads, cycles, wall_breaches};
use read::{Graph, analyse};
use std::path::Path;

/// Modules that must stay pure or simulator-side: they reach, through any chain of crate
/// modules, none of [`WALLED_OFF`] and use none of [`FORBIDDEN_CRATES`]. `control` is listed for
/// when it exists; a listed module that does not exist is skipped.
const WALLED: &[&str] = &[
    "planner",
    "envelope",
    "policy",
    "fairshare",
    "units",
    "domain",
    "cpuplan",
    "rebalance",
    "trace",
    "sim",
    "control",
    "clock",
];

/// The daemon, its edges and what talks to the outside world (each with its submodules).
const WALLED_OFF: &[&str] = &[
    "libvirt", "daemon", "api", "cli", "notify", "nova", "coord", "metrics",
];

/// Runtimes, HTTP and the hypervisor binding.
const FORBIDDEN_CRATES: &[&str] = &[
    "tokio",
    "hyper",
    "hyper_util",
    "virt",
    "etcd_client",
    "ureq",
];

/// The decision core: no clock read anywhere it reaches (`now` is a parameter).
const CLOCK_FREE: &[&str] = &["planner", "envelope", "policy", "control", "fairshare"];

/// What reads the wall clock.
const CLOCK_READS: &[&str] = &["SystemTime::now", "Instant::now", "epoch_now"];

/// Cycles tolerated for now, each named by one edge of it, `(from, to)`, which the cycle check
/// leaves out. None is left; an entry whose edge is gone fails the test, so the list only
/// shrinks.
const KNOWN_CYCLE_EDGES: &[(&str, &str)] = &[];

fn read_src() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                let rel = p
                    .strip_prefix(root)
                    .expect("under the crate")
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((
                    rel,
                    std::fs::read_to_string(&p).expect("read a source file"),
                ));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    walk(&root.join("src"), root, &mut out);
    out
}

fn crate_graph() -> Graph {
    let g = analyse(&read_src());
    // A reader that finds nothing checks nothing: make sure it sees the crate.
    for m in [
        "daemon",
        "daemon::host",
        "planner",
        "sim",
        "sim::cmd",
        "policy::parse",
        "cli",
    ] {
        assert!(
            g.nodes.contains(m),
            "the reader lost the module {m}: {:?}",
            g.nodes
        );
    }
    assert!(
        !g.nodes.contains("planner::tests"),
        "planner::tests is a test module"
    );
    assert!(
        g.edges.get("cli").is_some_and(|e| e.contains_key("daemon")),
        "the reader lost cli -> daemon"
    );
    assert!(
        g.crates
            .get("libvirt")
            .is_some_and(|c| c.contains_key("virt")),
        "the reader lost libvirt -> virt"
    );
    g
}

fn fail_on(what: &str, problems: &[String]) {
    assert!(problems.is_empty(), "{what}:\n{}", problems.join("\n"));
}

#[test]
fn no_import_cycles() {
    let g = crate_graph();
    let stale: Vec<String> = KNOWN_CYCLE_EDGES
        .iter()
        .filter(|(a, b)| !g.edges.get(*a).is_some_and(|e| e.contains_key(*b)))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    fail_on(
        "KNOWN_CYCLE_EDGES lists edges that are gone: remove them",
        &stale,
    );
    fail_on(
        "import cycles among modules",
        &cycles(&g, KNOWN_CYCLE_EDGES),
    );
}

#[test]
fn the_core_and_the_simulator_stay_behind_their_wall() {
    let g = crate_graph();
    let present: Vec<&str> = WALLED
        .iter()
        .copied()
        .filter(|m| g.nodes.contains(*m))
        .collect();
    for m in ["planner", "envelope", "policy", "sim", "trace", "clock"] {
        assert!(present.contains(&m), "{m} is gone: update WALLED");
    }
    fail_on(
        "walled modules reach the daemon's side",
        &wall_breaches(&g, &present, WALLED_OFF, FORBIDDEN_CRATES),
    );
}

#[test]
fn the_decision_core_reads_no_clock() {
    let g = crate_graph();
    fail_on(
        "the decision core reads the clock",
        &clock_reads(&g, CLOCK_FREE),
    );
    // The check sees a clock read where there is one.
    assert!(
        !clock_reads(&g, &["clock"]).is_empty(),
        "clock::epoch_now was not seen reading the clock"
    );
}

#[test]
fn the_hypervisor_seam_does_not_reach_its_implementations() {
    let g = crate_graph();
    fail_on(
        "the hypervisor seam reaches an implementation",
        &wall_breaches(&g, &["hypervisor"], &["libvirt", "model"], &["virt"]),
    );
}
