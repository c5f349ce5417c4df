//! The shipped Prometheus alert rules pass `promtool check rules`, every alert has unit tests
//! that pass `promtool test rules` (each alert shown firing), and the Grafana dashboards can be
//! provisioned from files: their data source is a template variable, not an import input.

use std::collections::BTreeSet;
use std::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/alerts");

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(DIR)
        .output()
        .expect("promtool (Debian package prometheus, installed by tests/testbed/install.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

/// The names after `key` on lines of `text`, e.g. `- alert: X` or `alertname: X`.
fn names_after(text: &str, key: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches("- ").strip_prefix(key))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_check_and_every_alert_is_tested_firing() {
    let out = promtool(&["check", "rules", "memscale.rules.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let out = promtool(&["test", "rules", "memscale.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let rules = std::fs::read_to_string(format!("{DIR}/memscale.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(format!("{DIR}/memscale.test.yml")).unwrap();
    let alerts = names_after(&rules, "alert:");
    assert!(alerts.len() >= 6, "alerts: {alerts:?}");
    // A case that expects the alert to fire: an `alertname:` followed by a non-empty list.
    let mut fired = BTreeSet::new();
    let mut current = None;
    for l in tests.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("alertname:") {
            current = Some(n.trim().to_string());
        } else if l.starts_with("- exp_labels:")
            && let Some(n) = current.take()
        {
            fired.insert(n);
        }
    }
    let untested: Vec<_> = alerts.difference(&fired).collect();
    assert!(
        untested.is_empty(),
        "alerts no test shows firing: {untested:?}"
    );
    // The list, each covered by some alert.
    for (what, metric) in [
        ("guest under pressure", "kind=\"available\""),
        ("guest held", "memscale_guest_state{state=~\"held"),
        ("guest unconverged", "reason=\"unconverged\""),
        ("daemon not acting for a host", "memscale_host_acting"),
        ("migrations failing", "result=\"failed\""),
        (
            "policy reload failed",
            "memscale_policy_reloads_total{result=\"error\"}",
        ),
        ("stats stale", "memscale_guest_stats_age_seconds"),
    ] {
        assert!(rules.contains(metric), "no alert for {what} ({metric})");
    }
}

/// Grafana's file provisioning does not resolve `__inputs` (`${DS_PROMETHEUS}` stays
/// unresolved: "datasource not found"): every panel, target and variable must name its data
/// source through a `datasource` template variable of type datasource.
#[test]
fn dashboards_take_their_data_source_from_a_variable() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards");
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
        let name = p.display();
        assert!(dash.get("__inputs").is_none(), "{name}: import inputs");
        let vars = dash["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter().any(|v| v["name"] == "datasource"
                && v["type"] == "datasource"
                && v["query"] == "prometheus"),
            "{name}: no datasource variable"
        );
        let mut uids = Vec::new();
        collect_uids(&dash, &mut uids);
        assert!(!uids.is_empty(), "{name}: no data source references");
        let bad: Vec<_> = uids.iter().filter(|u| *u != "${datasource}").collect();
        assert!(bad.is_empty(), "{name}: data sources {bad:?}");
        n += 1;
    }
    assert!(n >= 3, "{n} dashboards");
}

fn collect_uids(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(ds) = m.get("datasource")
                && let Some(uid) = ds.get("uid").and_then(|u| u.as_str())
            {
                out.push(uid.to_string());
            }
            m.values().for_each(|x| collect_uids(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_uids(x, out)),
        _ => {}
    }
}
