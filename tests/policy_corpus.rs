//! Every kind of broken policy file fails with the right `PATH:LINE:COL`, and the parser
//! survives garbage. Each corpus file states what it expects on its first line:
//! `# expect LINE:COL text`.

use memscale::policy::{Severity, load_files, parse_policy_text};
use proptest::prelude::*;
use std::path::PathBuf;

#[test]
fn corpus_of_broken_files() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/policy-corpus"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 12, "corpus present");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let first = text.lines().next().unwrap();
        let spec = first
            .strip_prefix("# expect ")
            .unwrap_or_else(|| panic!("{} has no expectation", f.display()));
        let (place, want) = spec.split_once(' ').unwrap();
        let (set, diags) = load_files(std::slice::from_ref(&f), 1);
        assert!(set.is_none(), "{} should not load", f.display());
        let expected = format!("{}:{place}: error: ", f.display());
        assert!(
            diags.iter().any(|d| d.severity == Severity::Error
                && d.to_string().starts_with(&expected)
                && d.message.contains(want)),
            "{}: wanted {expected}…{want}…, got:\n{}",
            f.display(),
            diags
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[test]
fn shipped_policies_load_as_one_set() {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/policies"));
    let (set, diags) = memscale::policy::load_dir(&dir, 1);
    assert!(diags.is_empty(), "{diags:?}");
    let set = set.unwrap();
    assert!(set.get("default").is_some());
    assert_eq!(set.policies.len(), 4);
}

fn knob_line() -> impl Strategy<Value = String> {
    let keys = prop::sample::select(vec![
        "headroom",
        "grow_at",
        "shrink_at",
        "min",
        "max",
        "window",
        "percentile",
        "methods",
        "shares",
        "headrom",
        "name",
        "priority",
    ]);
    let values = prop_oneof![
        Just("\"256MiB\"".to_string()),
        Just("\"15%\"".to_string()),
        Just("\"30s\"".to_string()),
        Just("[\"balloon\"]".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("\"\u{1F600}\"".to_string()),
        Just("99999999999999999999999".to_string()),
        "\"[ -~]{0,12}\"",
        "-?[0-9]{1,25}(\\.[0-9]{1,5})?",
    ];
    (keys, values).prop_map(|(k, v)| format!("{k} = {v}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes: never a panic, and any error has a place inside the text.
    #[test]
    fn garbage_never_panics(text in "\\PC{0,400}") {
        let (_, diags) = parse_policy_text("g.toml", &text);
        for d in diags {
            prop_assert!(d.line >= 1 && d.line <= text.lines().count().max(1) + 1);
        }
    }

    /// Plausible files with random keys and values: never a panic; a clean parse means
    /// every value is in range.
    #[test]
    fn random_policies_never_panic(lines in prop::collection::vec(knob_line(), 0..12), tables in 0usize..3) {
        let mut text = String::from("[[policy]]\nname = \"p\"\n");
        if tables > 0 { text.push_str("[policy.memory]\n"); }
        for l in &lines { text.push_str(l); text.push('\n'); }
        let (pols, diags) = parse_policy_text("r.toml", &text);
        if diags.is_empty() {
            for p in pols {
                prop_assert!(p.knobs.shrink_at.0 > p.knobs.grow_at.0);
                prop_assert!(p.knobs.min_free <= p.knobs.headroom);
            }
        }
    }
}
