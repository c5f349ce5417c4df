use super::*;
use crate::envelope::Method;
use crate::units::{Bytes, Dur, Percent};

#[test]
fn good_policy() {
    let text = r#"
[[policy]]
name = "db"
priority = 10
[policy.match]
names = ["db-*"]
[policy.memory]
headroom = "512MiB"
shrink_rate = "32MiB/s"
methods = ["balloon"]
"#;
    let (p, d) = parse_policy_text("x.toml", text);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(p[0].knobs.headroom, Bytes::from_mib(512));
    assert_eq!(p[0].knobs.methods, vec![Method::Balloon]);
    assert_eq!(p[0].origin, "x.toml:2");
}

#[test]
fn every_error_at_once_with_places() {
    let text = "[[policy]]\nname = \"a\"\n[policy.memory]\nheadrom = \"1GiB\"\nmin_free = \"64\"\ngrow_at = \"90%\"\nshrink_at = \"80%\"\n";
    let (p, d) = parse_policy_text("bad.toml", text);
    assert!(p.is_empty());
    let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert!(
        shown[0].starts_with("bad.toml:4:1: error: unknown key \"headrom\""),
        "{shown:?}"
    );
    assert!(shown[0].contains("did you mean \"headroom\""));
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("bad.toml:5:12: error: min_free: missing unit")),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.starts_with("bad.toml:7:13: error: shrink threshold")),
        "{shown:?}"
    );
}

#[test]
fn cpu_policy_parses_and_its_mistakes_are_named() {
    let text = "[[policy]]\nname = \"c\"\n[policy.cpu]\nenabled = true\ngrow_at = \"70%\"\nwindow = \"20s\"\nmax = 8\n";
    let (p, d) = parse_policy_text("c.toml", text);
    assert!(d.is_empty(), "{d:?}");
    assert!(p[0].cpu.enabled);
    assert_eq!(p[0].cpu.grow_at, Percent(0.70));
    assert_eq!(p[0].cpu.window, Dur::secs(20));
    assert_eq!(p[0].cpu.max, Some(8));
    assert!(!Policy::builtin().cpu.enabled, "off by default");
    let text =
        "[[policy]]\nname = \"c\"\n[policy.cpu]\nenabeld = true\nshrink_at = \"90%\"\nmin = 0\n";
    let (p, d) = parse_policy_text("c.toml", text);
    assert!(p.is_empty());
    let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    assert!(
        shown[0].starts_with("c.toml:4:1: error: unknown key \"enabeld\" in [policy.cpu]")
            && shown[0].contains("did you mean \"enabled\""),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|s| s.contains("min: 0 is out of range 1 to 4096 vCPUs")),
        "{shown:?}"
    );
    assert!(
        shown.iter().any(|s| s
            .starts_with("c.toml:5:13: error: cpu: shrink_at (90%) must be below grow_at (80%)")),
        "{shown:?}"
    );
}

#[test]
fn overlap_at_same_priority_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.toml");
    std::fs::write(&a, "[[policy]]\nname=\"a\"\n[policy.match]\nnames=[\"web-*\"]\n[[policy]]\nname=\"b\"\n[policy.match]\nnames=[\"web-1\"]\n").unwrap();
    let (set, d) = load_dir(dir.path(), 1);
    assert!(set.is_none());
    assert!(
        d[0].to_string().contains("may match the same guests"),
        "{d:?}"
    );
    assert_eq!(d[0].line, 5);
}

#[test]
fn syntax_errors_have_places() {
    let (_, d) = parse_policy_text("s.toml", "[[policy]]\nname = \"x\ncolor=1\n");
    assert_eq!(d[0].line, 2, "{d:?}");
    assert!(d[0].message.starts_with("syntax"));
}
