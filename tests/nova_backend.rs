//! The Nova migration backend's protocol: Keystone v3 password token and catalog, the
//! `os-migrateLive` server action with microversion 2.34, polling until the server runs on
//! the destination, a refused token renewed, and every way Nova can say no.
//!
//! The test bed runs a real Keystone, Placement and nova-api (`tests/testbed/openstack.sh`), but
//! not nova-compute, the conductor or the scheduler that a live migration needs, so these tests
//! talk to a stand-in that answers as Nova's API reference says Nova does. They check
//! memscale's side of the conversation, not Nova.

use memscale::nova::{Nova, NovaConfig, NovaError};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct World {
    /// Requests seen: (method, path, token, microversion, body).
    seen: Vec<(String, String, String, String, Value)>,
    host: String,
    status: String,
    task: Option<String>,
    /// Polls left before a started migration ends.
    polls: u32,
    /// How the migration ends: "ok", "error", "stays".
    outcome: String,
    tokens_issued: u32,
    /// The first token is refused after this many compute calls.
    expire_after: Option<u32>,
    compute_calls: u32,
    /// The os-migrateLive POST is answered this late (past the client's HTTP timeout).
    answer_late: Option<Duration>,
    /// Whether a POST answered late is taken all the same.
    late_taken: bool,
}

fn serve(world: Arc<Mutex<World>>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let b2 = base.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let (world, b2) = (world.clone(), b2.clone());
            // One thread per connection: a late answer must not hold up the polls.
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    return;
                }
                let mut parts = line.split_whitespace();
                let (method, path) = (
                    parts.next().unwrap_or("").to_string(),
                    parts.next().unwrap_or("").to_string(),
                );
                let mut headers = std::collections::HashMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let (code, extra, answer) = answer(&world, &b2, &method, &path, &headers, body);
                let late = world.lock().expect("world").answer_late;
                if let (Some(d), true) = (late, path.ends_with("/action")) {
                    std::thread::sleep(d);
                }
                let text = answer.to_string();
                let _ = write!(
                    s,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
    base
}

fn answer(
    world: &Arc<Mutex<World>>,
    base: &str,
    method: &str,
    path: &str,
    headers: &std::collections::HashMap<String, String>,
    body: Value,
) -> (u16, String, Value) {
    let mut w = world.lock().expect("world");
    let token = headers.get("x-auth-token").cloned().unwrap_or_default();
    let mv = headers
        .get("openstack-api-version")
        .cloned()
        .unwrap_or_default();
    w.seen
        .push((method.into(), path.into(), token.clone(), mv, body.clone()));
    if path == "/identity/v3/auth/tokens" && method == "POST" {
        let u = &body["auth"]["identity"]["password"]["user"];
        if u["name"] != "memscale" || u["password"] != "pw" || u["domain"]["name"] != "Default" {
            return (
                401,
                String::new(),
                json!({"error": {"message": "bad credentials"}}),
            );
        }
        if body["auth"]["scope"]["project"]["name"] != "admin" {
            return (
                401,
                String::new(),
                json!({"error": {"message": "bad scope"}}),
            );
        }
        w.tokens_issued += 1;
        let tok = format!("tok{}", w.tokens_issued);
        return (
            201,
            format!("X-Subject-Token: {tok}\r\n"),
            json!({"token": {"catalog": [{"type": "compute", "endpoints": [
                {"interface": "internal", "region": "RegionOne", "url": "http://wrong.invalid/"},
                {"interface": "public", "region": "RegionOne", "url": format!("{base}/compute/v2.1")}
            ]}]}}),
        );
    }
    let Some(rest) = path.strip_prefix("/compute/v2.1") else {
        return (404, String::new(), json!({}));
    };
    w.compute_calls += 1;
    let current = format!("tok{}", w.tokens_issued);
    let expired = w.expire_after.is_some_and(|n| w.compute_calls > n) && token == "tok1";
    if token != current || expired {
        return (
            401,
            String::new(),
            json!({"error": {"message": "token expired"}}),
        );
    }
    if rest == "/servers/u-1" && method == "GET" {
        if w.task.is_some() {
            if w.polls == 0 {
                w.task = None;
                match w.outcome.as_str() {
                    "ok" => w.host = "compute-b".into(),
                    "error" => w.status = "ERROR".into(),
                    _ => {}
                }
            } else {
                w.polls -= 1;
            }
        }
        return (
            200,
            String::new(),
            json!({"server": {"id": "u-1", "status": w.status, "OS-EXT-SRV-ATTR:host": w.host,
                "OS-EXT-STS:task_state": w.task,
                "fault": if w.status == "ERROR" { json!({"message": "Migration pre-check error"}) } else { Value::Null }}}),
        );
    }
    if rest == "/servers/u-1/action" && method == "POST" {
        let dest = body["os-migrateLive"]["host"].as_str().unwrap_or("");
        if dest != "compute-b" {
            return (
                400,
                String::new(),
                json!({"badRequest": {"code": 400, "message": format!("Compute host {dest} could not be found.")}}),
            );
        }
        if w.answer_late.is_some() && !w.late_taken {
            return (202, String::new(), Value::Null);
        }
        w.task = Some("migrating".into());
        w.polls = 2;
        return (202, String::new(), Value::Null);
    }
    (
        404,
        String::new(),
        json!({"itemNotFound": {"message": "no such server"}}),
    )
}

fn nova(base: &str) -> (Nova, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "pw\n").expect("pw");
    let n = Nova::new(NovaConfig {
        auth_url: format!("{base}/identity/v3"),
        username: "memscale".into(),
        password_file: pw,
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region: Some("RegionOne".into()),
        interface: "public".into(),
        compute_url: None,
        poll_seconds: 0.05,
        http_timeout_seconds: 1.0,
        flavor_ttl_seconds: 0.0,
        placement_url: None,
        placement: None,
    })
    .expect("nova");
    (n, dir)
}

fn world(outcome: &str) -> Arc<Mutex<World>> {
    Arc::new(Mutex::new(World {
        host: "compute-a".into(),
        status: "ACTIVE".into(),
        outcome: outcome.into(),
        ..Default::default()
    }))
}

#[test]
fn a_live_migration_is_asked_of_nova_and_followed_to_the_end() {
    let w = world("ok");
    let base = serve(w.clone());
    let (n, _d) = nova(&base);
    n.live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect("migrated");
    let w = w.lock().expect("world");
    assert_eq!(w.host, "compute-b");
    let action = w
        .seen
        .iter()
        .find(|s| s.1.ends_with("/action"))
        .expect("an action");
    assert_eq!(action.0, "POST");
    assert_eq!(
        action.4,
        json!({"os-migrateLive": {"host": "compute-b", "block_migration": "auto"}})
    );
    assert_eq!(action.3, "compute 2.34");
    assert_eq!(action.2, "tok1");
    // It looked at the server before and until the end.
    let gets = w.seen.iter().filter(|s| s.0 == "GET").count();
    assert!(gets >= 3, "{gets} looks at the server");
}

#[test]
fn an_unanswered_migration_is_followed_and_named_when_nova_did_not_take_it() {
    // Nova's API answers the POST after the client stopped waiting (1 s), but took it: the
    // server migrates, and memscale follows it to the end instead of calling it failed.
    let w = world("ok");
    {
        let mut g = w.lock().expect("world");
        g.answer_late = Some(Duration::from_secs(3));
        g.late_taken = true;
    }
    let (n, _d) = nova(&serve(w.clone()));
    n.live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect("followed to the end");
    let g = w.lock().expect("world");
    assert_eq!(g.host, "compute-b");
    assert_eq!(
        g.seen.iter().filter(|s| s.1.ends_with("/action")).count(),
        1,
        "the action is asked once, never again after the timeout"
    );
    drop(g);
    // The same silence, but Nova did not take it: named once the grace (twice the HTTP
    // timeout) has passed with no migration to see.
    let w = world("ok");
    w.lock().expect("world").answer_late = Some(Duration::from_secs(3));
    let (n, _d) = nova(&serve(w.clone()));
    let e = n
        .live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect_err("not taken");
    let m = e.to_string();
    assert!(
        m.contains("os-migrateLive of u-1 to compute-b got no answer")
            && m.contains("shows no migration")
            && m.contains("still on compute-a"),
        "{m}"
    );
}

#[test]
fn an_expired_token_is_renewed_once() {
    let w = world("ok");
    w.lock().expect("world").expire_after = Some(1);
    let base = serve(w.clone());
    let (n, _d) = nova(&base);
    n.live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect("migrated");
    let w = w.lock().expect("world");
    assert_eq!(w.tokens_issued, 2);
    assert!(w.seen.iter().any(|s| s.2 == "tok2"));
}

#[test]
fn every_refusal_is_named() {
    // Nova refuses the destination.
    let w = world("ok");
    let (n, _d) = nova(&serve(w.clone()));
    let e = n
        .live_migrate("u-1", "compute-x", Duration::from_secs(30))
        .expect_err("refused");
    assert!(
        matches!(&e, NovaError::Failed(m) if m.contains("HTTP 400") && m.contains("Compute host compute-x could not be found")),
        "{e}"
    );
    // The server goes to ERROR.
    let (n, _d) = nova(&serve(world("error")));
    let e = n
        .live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect_err("error");
    assert!(
        e.to_string().contains("went to ERROR") && e.to_string().contains("pre-check"),
        "{e}"
    );
    // Nova gives up and leaves the server where it was.
    let (n, _d) = nova(&serve(world("stays")));
    let e = n
        .live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect_err("stays");
    assert!(
        e.to_string().contains("left server u-1 on compute-a"),
        "{e}"
    );
    // An unknown server.
    let (n, _d) = nova(&serve(world("ok")));
    let e = n
        .live_migrate("u-2", "compute-b", Duration::from_secs(30))
        .expect_err("unknown");
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    // Wrong credentials: Keystone's answer is named.
    let w = world("ok");
    let base = serve(w);
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "wrong").expect("pw");
    let n = Nova::new(NovaConfig {
        auth_url: format!("{base}/identity/v3"),
        username: "memscale".into(),
        password_file: pw,
        project_name: "admin".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region: None,
        interface: "public".into(),
        compute_url: None,
        poll_seconds: 0.05,
        http_timeout_seconds: 1.0,
        flavor_ttl_seconds: 0.0,
        placement_url: None,
        placement: None,
    })
    .expect("nova");
    let e = n
        .live_migrate("u-1", "compute-b", Duration::from_secs(30))
        .expect_err("auth");
    assert!(
        matches!(&e, NovaError::Auth(m) if m.contains("HTTP 401") && m.contains("bad credentials")),
        "{e}"
    );
    // A missing or empty password file is named before anything is asked.
    let e = Nova::new(NovaConfig {
        auth_url: "http://127.0.0.1:9".into(),
        username: "u".into(),
        password_file: dir.path().join("none"),
        project_name: "p".into(),
        user_domain_name: "Default".into(),
        project_domain_name: "Default".into(),
        region: None,
        interface: "public".into(),
        compute_url: None,
        poll_seconds: 1.0,
        http_timeout_seconds: 30.0,
        flavor_ttl_seconds: 0.0,
        placement_url: None,
        placement: None,
    })
    .err()
    .expect("no file");
    assert!(e.contains("none") && e.contains("cannot read"), "{e}");
}
