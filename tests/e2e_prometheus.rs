//! A real Prometheus server scrapes a live daemon on the test bed, and every PromQL expression
//! of every shipped dashboard (panels, annotations, template variables) must parse and return
//! data.

mod common;

use common::*;
use std::process::{Command, Stdio};

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every expression of a dashboard, with Grafana's variables filled in.
fn expressions(dash: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for a in dash["annotations"]["list"].as_array().unwrap() {
        out.push(a["expr"].as_str().unwrap().to_string());
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if v["type"] == "datasource" {
            // The data source picker: no query of its own.
            continue;
        }
        // label_values(SELECTOR, LABEL) is Grafana's; its PromQL equivalent:
        let q = v["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .expect("label_values query");
        let (sel, label) = inner.rsplit_once(',').unwrap();
        out.push(format!("count by ({}) ({})", label.trim(), sel.trim()));
    }
    out.into_iter()
        .map(|e| {
            e.replace("$__rate_interval", "1m")
                .replace("$host", ".*")
                .replace("$guest", ".*")
        })
        .collect()
}

struct Prom(std::process::Child);
impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_dashboard_query_returns_data() {
    let h = Host::up("lprom", 30);
    let g = h.guest(
        "pg",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    g.wait_boot();
    let d = Daemon::start(&[&h], &[], "interval = \"1s\"\n", &[]);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: memscale\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n", d.port),
    )
    .unwrap();
    let _prom = Prom(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus (Debian package prometheus) is installed by tests/testbed/install.sh",
            ),
    );
    let query = |q: &str| -> serde_json::Value {
        let (code, body) =
            Daemon::request_port(port, "GET", &format!("/api/v1/query?query={}", enc(q)))
                .unwrap_or((0, String::new()));
        serde_json::from_str(&body)
            .unwrap_or_else(|_| serde_json::json!({"status": "http", "code": code, "body": body}))
    };
    d.wait_until("prometheus scraping memscale", 60, || {
        query("up{job=\"memscale\"} == 1")["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
    });
    // a resize, so counters and annotations have something to show
    g.demand(350, 40);
    d.wait_until("a growth", 90, || g.current_mib() > 600);
    std::thread::sleep(std::time::Duration::from_secs(15));
    let mut checked = 0;
    for f in [
        "memscale-host.json",
        "memscale-guest.json",
        "memscale-daemon.json",
    ] {
        let path = format!("{}/dashboards/{f}", env!("CARGO_MANIFEST_DIR"));
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for e in expressions(&dash) {
            let r = query(&e);
            assert_eq!(r["status"], "success", "{f}: {e}: {r}");
            assert!(
                r["data"]["result"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty()),
                "{f}: no data for {e}: {r}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "checked {checked} expressions");
    eprintln!("{checked} dashboard expressions returned data");
}
