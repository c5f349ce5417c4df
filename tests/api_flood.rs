//! The API under abuse: a flood of bad requests (no token, wrong token, malformed JSON, huge
//! bodies, unknown guests, out-of-range values, wrong methods) from many clients at once, and
//! hundreds of connections opened and left idle. Each bad request gets its status and changes
//! nothing; the daemon answers well-formed requests afterwards, its memory stays bounded, and
//! it listens on loopback unless told otherwise. (The daemon's host is unreachable here: the
//! API does not depend on it.)

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Method, path, body, token, the status wanted.
type Case = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    u16,
);
type OwnedCase = (String, String, Option<String>, Option<String>, u16);

fn rss_kib(d: &Daemon) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", d.child.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Send a request whose body may be refused before it is all sent; return the status.
fn raw(port: u16, head: &str, body: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(head.as_bytes()).ok()?;
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[test]
fn a_flood_of_bad_requests_changes_nothing() {
    install();
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = dir.path().join("token");
    std::fs::write(&tok, "flood-token\n").expect("token");
    let config = format!(
        "interval = \"1s\"\napi_token_file = \"{}\"\n[[hosts]]\nname = \"nowhere\"\nuri = \"qemu+unix:///system?socket=/nonexistent/libvirt-sock\"\n",
        tok.display()
    );
    let d = Daemon::start(&[], &[], &config, &[]);
    // Loopback by default.
    let (_, m) = d.request("GET", "/metrics", None, None).expect("metrics");
    assert!(m.contains("memscale_"), "metrics served");
    let log = d.log_text();
    assert!(log.contains("127.0.0.1:"), "{log}");
    let rss0 = rss_kib(&d);
    let port = d.port;
    let big = "x".repeat(1 << 20);
    let cases: Vec<Case> = vec![
        ("POST", "/v1/guests/g/pin", None, None, 401),
        ("POST", "/v1/guests/g/pin", None, Some("wrong"), 401),
        // (malformed JSON for a guest that exists gets 400: tests/e2e_api.rs)
        (
            "POST",
            "/v1/guests/g/adjust",
            Some("{not json"),
            Some("flood-token"),
            404,
        ),
        (
            "POST",
            "/v1/guests/g/adjust",
            Some("{\"memory_mib\": 1}"),
            None,
            401,
        ),
        ("GET", "/v1/guests/nobody", None, None, 404),
        (
            "POST",
            "/v1/guests/nobody/adjust",
            Some("{\"memory_mib\": 1024}"),
            Some("flood-token"),
            404,
        ),
        ("DELETE", "/v1/status", None, None, 405),
        ("GET", "/v1/nothing-here", None, None, 404),
        (
            "POST",
            "/v1/proposals/abc/approve",
            None,
            Some("flood-token"),
            400,
        ),
        (
            "POST",
            "/v1/proposals/99/approve",
            None,
            Some("flood-token"),
            404,
        ),
    ];
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let cases = cases.clone();
            let cases: Vec<OwnedCase> = cases
                .into_iter()
                .map(|(m, p, b, k, c)| (m.into(), p.into(), b.map(Into::into), k.map(Into::into), c))
                .collect();
            let big = big.clone();
            std::thread::spawn(move || {
                let mut wrong = Vec::new();
                for i in 0..150 {
                    if (i + t) % 25 == 0 {
                        // A body over the 64 KiB limit.
                        let head = format!(
                            "POST /v1/guests/g/adjust HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer flood-token\r\nContent-Length: {}\r\n\r\n",
                            big.len()
                        );
                        let c = raw(port, &head, big.as_bytes());
                        if c != Some(413) {
                            wrong.push(format!("huge body: {c:?}"));
                        }
                        continue;
                    }
                    let (m, p, b, k, want) = &cases[(i + t) % cases.len()];
                    let got = http(port, m, p, b.as_deref(), k.as_deref()).map(|x| x.0);
                    if got != Some(*want) {
                        wrong.push(format!("{m} {p}: {got:?}, wanted {want}"));
                    }
                }
                wrong
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for t in threads {
        wrong.extend(t.join().expect("thread"));
    }
    assert!(
        wrong.is_empty(),
        "{} wrong answers: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
    // Nothing was pinned or changed by any of it.
    let st = d.get("/v1/status").expect("status");
    assert_eq!(st["policies"]["generation"], 1, "{st}");
    assert!(
        !d.dir.path().join("state/state.json").exists() || {
            let s: serde_json::Value = serde_json::from_slice(
                &std::fs::read(d.dir.path().join("state/state.json")).expect("state"),
            )
            .expect("json");
            s["pins"].as_array().is_none_or(|p| p.is_empty())
        }
    );
    // Hundreds of connections opened and left idle: more than the daemon keeps. They are
    // closed (past the limit at once, the rest when their headers do not come), and the API
    // answers again.
    let idle: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    assert!(idle.len() > 300, "{} connections opened", idle.len());
    let mut answered = false;
    for _ in 0..40 {
        if d.get("/v1/status").is_some() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(answered, "the API answers again despite idle connections");
    drop(idle);
    let (_, m) = d.request("GET", "/metrics", None, None).expect("metrics");
    let refused: f64 = m
        .lines()
        .filter(|l| l.starts_with("memscale_api_requests_total{code=\"503\",route=\"refused\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused > 0.0, "connections past the limit are counted");
    let counted: f64 = m
        .lines()
        .filter(|l| l.starts_with("memscale_api_requests_total{code=\"401\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(counted >= 200.0, "refusals counted: {counted}");
    // The daemon's memory did not grow with the flood.
    let rss1 = rss_kib(&d);
    assert!(
        rss1 < rss0 + 32 * 1024,
        "daemon RSS went from {rss0} KiB to {rss1} KiB"
    );
    assert!(
        d.child.id() > 0 && d.get("/v1/status").is_some(),
        "still alive"
    );
}
