//! The checker on small made-up crates: it finds what it is for, and only that.

use crate::check::{clock_reads, cycles, wall_breaches};
use crate::read::{Graph, analyse};

fn fake(files: &[(&str, &str)]) -> Graph {
    analyse(
        &files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect::<Vec<_>>(),
    )
}

#[test]
fn checker_reports_a_cycle_with_its_path() {
    let g = fake(&[
        ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("src/a.rs", "use crate::b::Thing;\npub fn f() {}"),
        (
            "src/b.rs",
            "pub struct Thing;\npub fn g() {\n    crate::c::h();\n}",
        ),
        ("src/c.rs", "use crate::{units, a::f};\npub fn h() { f() }"),
        ("src/units.rs", "pub struct Bytes;"),
    ]);
    let c = cycles(&g, &[]);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].starts_with("a -> b -> c -> a")
            || c[0].starts_with("b -> c -> a -> b")
            || c[0].starts_with("c -> a -> b -> c"),
        "{}",
        c[0]
    );
    assert!(c[0].contains("b uses c at src/b.rs:3"), "{}", c[0]);
    assert!(
        g.edges["c"].contains_key("units"),
        "use groups: {:?}",
        g.edges
    );
    // Ignoring one edge of it breaks the cycle.
    assert!(cycles(&g, &[("b", "c")]).is_empty());
}

#[test]
fn checker_ignores_comments_strings_and_tests() {
    let a = r##"//! See [`crate::b`].
/* crate::b::x() /* nested */ crate::b */
const S: &str = "crate::b::x \" crate::b::y";
const R: &str = r#"crate::b "# ;
const C: char = '"'; fn f<'a>(x: &'a str) {}
#[cfg(test)]
mod tests { use crate::b::x; }
#[cfg(test)]
mod more;
#[cfg(test)]
fn helper() { crate::b::z() }
pub fn real() { crate::c::z() }
"##;
    let g = fake(&[
        ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
        ("src/a.rs", a),
        ("src/a/more.rs", "use crate::b::y;"),
        ("src/b.rs", "use crate::a;"),
        ("src/c.rs", "pub fn z() {}"),
    ]);
    assert!(!g.nodes.contains("a::more"), "{:?}", g.nodes);
    let from_a: Vec<&String> = g.edges["a"].keys().collect();
    assert_eq!(from_a, ["c"], "{:?}", g.edges);
    assert_eq!(g.edges["a"]["c"].line, 12);
    assert!(cycles(&g, &[]).is_empty());
}

#[test]
fn checker_resolves_bindings_inline_modules_and_crates() {
    let g = fake(&[
        ("src/lib.rs", "pub mod a; pub mod b; pub mod c;"),
        (
            "src/a.rs",
            "use crate::b as bee;\nuse tokio::sync::watch;\nuse std::fmt;\n\
             pub mod inner { pub fn f() { super::super::c::g() } }\n\
             fn f() { bee::h(); watch::channel(0); fmt::Error; self::inner::f() }",
        ),
        ("src/b.rs", "pub fn h() {}"),
        ("src/c.rs", "pub fn g() {}"),
    ]);
    let from_a: Vec<&String> = g.edges["a"].keys().collect();
    assert_eq!(from_a, ["b", "c"], "{:?}", g.edges);
    let crates: Vec<&String> = g.crates["a"].keys().collect();
    assert_eq!(crates, ["tokio"], "{:?}", g.crates);
    assert!(
        !g.nodes.contains("a::inner"),
        "an inline module counts as its file"
    );
}

#[test]
fn checker_reports_sibling_cycles_through_super_but_not_a_parent_and_its_child() {
    let g = fake(&[
        ("src/lib.rs", "pub mod p;"),
        (
            "src/p/mod.rs",
            "pub mod x; pub mod y; pub use x::X;\npub struct P;",
        ),
        (
            "src/p/x.rs",
            "use super::P;\npub struct X;\npub fn f() { super::y::g() }",
        ),
        ("src/p/y.rs", "use super::x::X;\npub fn g() {}"),
    ]);
    assert!(
        g.edges["p"].contains_key("p::x") && g.edges["p::x"].contains_key("p"),
        "{:?}",
        g.edges
    );
    let c = cycles(&g, &[]);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].contains("p::x -> p::y") && c[0].contains("p::y -> p::x"),
        "{}",
        c[0]
    );
    // Without the sibling edge, only the parent and its child use each other: allowed.
    assert!(cycles(&g, &[("p::x", "p::y")]).is_empty());
}

#[test]
fn checker_lets_a_module_and_its_parts_use_each_other_through_it() {
    // The parent re-exports from one child, which uses a sibling, which implements the
    // parent's trait: a ring through the parent, allowed. The siblings alone are not tangled.
    let g = fake(&[
        ("src/lib.rs", "pub mod p;"),
        (
            "src/p/mod.rs",
            "pub mod a; pub mod b;\npub use a::Spec;\npub trait T {}",
        ),
        ("src/p/a.rs", "pub enum Spec { B(super::b::B) }"),
        (
            "src/p/b.rs",
            "use super::T;\npub struct B;\nimpl T for B {}",
        ),
    ]);
    assert!(g.edges["p"].contains_key("p::a"), "{:?}", g.edges);
    assert!(g.edges["p::a"].contains_key("p::b"), "{:?}", g.edges);
    assert!(g.edges["p::b"].contains_key("p"), "{:?}", g.edges);
    assert!(cycles(&g, &[]).is_empty(), "{:?}", cycles(&g, &[]));
}

#[test]
fn checker_reports_a_parent_child_pair_inside_a_longer_cycle() {
    let g = fake(&[
        ("src/lib.rs", "pub mod p; pub mod q;"),
        ("src/p/mod.rs", "mod c;\npub fn run() { c::go() }"),
        (
            "src/p/c.rs",
            "pub fn go() { crate::q::help(); super::run2() }",
        ),
        ("src/q.rs", "pub fn help() { crate::p::run() }"),
    ]);
    let c = cycles(&g, &[]);
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(
        c[0].contains("q -> p") && c[0].contains("p::c -> q"),
        "{}",
        c[0]
    );
}

#[test]
fn checker_follows_walls_through_every_chain() {
    let g = fake(&[
        (
            "src/lib.rs",
            "pub mod sim; pub mod exit; pub mod cli; pub mod libvirt; pub mod planner; pub mod clock;",
        ),
        ("src/sim/mod.rs", "pub mod cmd;"),
        (
            "src/sim/cmd.rs",
            "use crate::cli::{self, EXIT};\nfn f() { cli::go() }",
        ),
        (
            "src/cli.rs",
            "use crate::libvirt::Host;\npub fn go() { tokio::spawn(async {}); }",
        ),
        ("src/libvirt.rs", "use virt::connect::Connect;"),
        ("src/exit.rs", "pub const EXIT: i32 = 1;"),
        (
            "src/planner.rs",
            "use crate::exit;\nfn f() -> f64 { crate::clock::epoch_now() }",
        ),
        (
            "src/clock.rs",
            "pub fn epoch_now() -> f64 { std::time::SystemTime::now(); 0.0 }",
        ),
    ]);
    let w = wall_breaches(&g, &["sim"], &["libvirt", "cli"], &["tokio", "virt"]);
    assert!(
        w.iter()
            .any(|x| x.starts_with("sim::cmd reaches cli: sim::cmd -> cli")),
        "{w:?}"
    );
    // Found through cli, which is itself off limits: reported once, at the first breach.
    assert!(w.iter().all(|x| !x.contains("tokio")), "{w:?}");
    let w = wall_breaches(&g, &["cli"], &["libvirt"], &["tokio"]);
    assert!(
        w.iter().any(|x| x.contains("cli uses the crate tokio")),
        "{w:?}"
    );
    assert!(wall_breaches(&g, &["exit"], &["libvirt", "cli"], &["tokio", "virt"]).is_empty());
    let c = clock_reads(&g, &["planner"]);
    assert!(
        c.iter()
            .any(|x| x.contains("planner -> clock") && x.contains("SystemTime::now")),
        "{c:?}"
    );
    assert!(
        c.iter()
            .any(|x| x.contains("epoch_now at src/planner.rs:2")),
        "{c:?}"
    );
}
