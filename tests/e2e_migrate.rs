//! End-to-end: three private libvirt hosts. When sharing cannot hold a host's guests' needs,
//! memscale live-migrates a guest (libvirt peer to peer) to the host with the most room. In
//! propose-only mode it proposes the move and waits for an operator; a move to a destination
//! that is down fails, leaves the guest where it runs, is reported and retried elsewhere.

mod common;

use common::*;
use std::process::Command;

const FAST: &str = r#"
[[policy]]
name = "fast"
[policy.memory]
headroom = "320MiB"
min_free = "300MiB"
shrink_cooldown = "8s"
window = "12s"
shrink_interval = "2s"
shrink_rate = "256MiB/s"
"#;

fn host_block(h: &Host, capacity: u64, migration_uri: &str) -> String {
    let addr = h
        .tcp
        .trim_start_matches("qemu+tcp://")
        .trim_end_matches("/system")
        .to_string();
    format!(
        "[[hosts]]\nname = \"{}\"\nuri = \"{}\"\ncapacity = \"{capacity}MiB\"\nreserve = \"256MiB\"\n\
         migration_uri = \"{migration_uri}\"\nmigration_address = \"tcp://{addr}\"\n",
        h.name, h.uri
    )
}

fn proposals(d: &Daemon) -> Vec<serde_json::Value> {
    d.get("/v1/proposals")
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn cli(d: &Daemon, token: &std::path::Path, args: &[&str]) -> (i32, String) {
    // The daemon's address and token go before the action: `migrations --api A approve ID`.
    let out = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .arg(args[0])
        .args(["--api", &format!("127.0.0.1:{}", d.port)])
        .arg("--token-file")
        .arg(token)
        .args(&args[1..])
        .output()
        .expect("memscale cli");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_host_that_sharing_cannot_relieve_moves_a_guest_away() {
    let a = Host::up("lmiga", 34);
    let b = Host::up("lmigb", 35);
    let c = Host::up("lmigc", 36);
    // C has the most room, but nothing listens where the config says its libvirtd takes
    // migrations: the destination is down.
    let c_addr = c
        .tcp
        .trim_start_matches("qemu+tcp://")
        .trim_end_matches("/system")
        .to_string();
    let dead = format!("qemu+tcp://{c_addr}:1/system");
    let hosts = format!(
        "{}{}{}",
        host_block(&a, 2048, &a.tcp),
        host_block(&b, 2048, &b.tcp),
        host_block(&c, 3072, &dead)
    );
    let tokdir = tempfile::tempdir().expect("tempdir");
    let token = tokdir.path().join("token");
    std::fs::write(&token, "migrate-token\n").expect("token");
    let config = |propose: bool| {
        format!(
            "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\napi_token_file = \"{}\"\n\
             [migration]\nenabled = true\npropose_only = {propose}\nmin_interval = \"15s\"\n\
             retry_after = \"10m\"\n{hosts}",
            token.display()
        )
    };
    // On host A (1792 MiB to share): "mid" settles at 500 MiB, then "big" climbs to 700. Their
    // needs (what they use plus 300 MiB free each) pass what A has, though what they really
    // use still fits once squeezed: nobody is killed while a proposal waits for an operator.
    let mid = a.guest(
        "mid",
        &[
            "--mem",
            "512",
            "--vmem",
            "768",
            "--stats-period",
            "1",
            "--demand",
            "10:500@40",
        ],
    );
    let big = a.guest(
        "big",
        &[
            "--mem",
            "512",
            "--vmem",
            "1024",
            "--stats-period",
            "1",
            "--demand",
            "30:700@15",
        ],
    );
    let d = Daemon::start(&[], &[("fast.toml", FAST)], &config(true), &[]);
    mid.wait_boot();
    big.wait_boot();
    let no_oom = |d: &Daemon| {
        for g in [&mid, &big] {
            assert!(
                g.oom().is_none(),
                "{} OOM: {:?}\n{}",
                g.name,
                g.oom(),
                tail(&d.log_text(), 60)
            );
        }
    };

    // 1. Propose-only: the move is proposed (to C, the roomiest), listed by the API and the
    //    CLI, and nothing moves while nobody approves it.
    // A proposal stands while A stays short; if A's shortage dips for a moment it expires and
    // a new one comes: take whichever stands.
    let standing = |d: &Daemon, secs: u64| {
        let mut found = serde_json::Value::Null;
        d.wait_until("a migration proposed off A", secs, || {
            no_oom(d);
            if let Some(p) = proposals(d)
                .into_iter()
                .find(|p| p["state"] == "proposed" && p["from"] == "lmiga")
            {
                found = p;
            }
            !found.is_null()
        });
        found
    };
    let p = standing(&d, 300);
    assert_eq!(p["to"], "lmigc", "the roomiest host: {p}");
    let guest = p["guest"].as_str().unwrap_or("").to_string();
    assert!(guest == "mid" || guest == "big", "{p}");
    assert!(bytes(&p["deficit"]) > 0, "{p}");
    let t = std::time::Instant::now();
    d.wait_until("20 s with the proposal standing", 40, || {
        no_oom(&d);
        t.elapsed().as_secs() >= 20
    });
    for g in ["mid", "big"] {
        assert_eq!(a.domstate(g), "running", "{g} still on A");
    }
    let history = d.get("/v1/migrations").expect("/v1/migrations");
    let history = history.as_array().cloned().unwrap_or_default();
    assert!(!history.is_empty());
    assert!(
        history
            .iter()
            .all(|r| r["result"] == "proposed" && r["dry_run"] == true),
        "{history:?}"
    );
    assert!(
        d.metric("memscale_migrations_total{from=\"lmiga\",result=\"proposed\"")
            .is_some()
    );
    let (code, table) = cli(&d, &token, &["migrations"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        table.contains("proposed") && table.contains(&guest) && table.contains("lmigc"),
        "{table}"
    );
    // The proposal now standing (the same move may have been proposed again since).
    let p = standing(&d, 120);
    let id = p["id"].as_u64().expect("id");
    assert_eq!(p["to"], "lmigc");
    // Approving without the token is refused; an unknown id is named.
    let (code, _) = d
        .request("POST", &format!("/v1/proposals/{id}/approve"), None, None)
        .expect("answer");
    assert_eq!(code, 401);
    let (code, out) = cli(&d, &token, &["migrations", "approve", "9999"]);
    assert_ne!(code, 0);
    assert!(out.contains("no proposal 9999"), "{out}");

    // 2. The operator approves: the move runs, C is down, so it fails; the guest keeps
    //    running on A and the failure is reported.
    let (code, out) = cli(&d, &token, &["migrations", "approve", &id.to_string()]);
    let (id, guest, out) = if code == 0 {
        (id, p["guest"].as_str().unwrap_or("").to_string(), out)
    } else {
        // It expired between our look and the approval (said so): approve the next one.
        assert!(
            out.contains("is expired") || out.contains("is superseded"),
            "{out}"
        );
        let p = standing(&d, 120);
        let id = p["id"].as_u64().expect("id");
        assert_eq!(p["to"], "lmigc");
        let (code, out) = cli(&d, &token, &["migrations", "approve", &id.to_string()]);
        assert_eq!(code, 0, "{out}");
        (id, p["guest"].as_str().unwrap_or("").to_string(), out)
    };
    assert!(out.contains("approved"), "{out}");
    d.wait_until("the approved move to fail", 120, || {
        proposals(&d)
            .iter()
            .any(|p| p["id"] == id && p["state"] == "failed")
    });
    let failed = proposals(&d)
        .into_iter()
        .find(|p| p["id"] == id)
        .expect("proposal");
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    assert_eq!(a.domstate(&guest), "running", "{guest} still runs on A");
    assert!(d.audit().iter().any(|r| {
        r["reason"]["reason"] == "migrate"
            && r["result"]
                .as_str()
                .is_some_and(|x| x.starts_with("failed"))
            && r["guest"] == guest.as_str()
            && r["reason"]["to"] == "lmigc"
    }));
    assert_eq!(
        d.metric("memscale_migrations_total{from=\"lmiga\",result=\"failed\",to=\"lmigc\"}"),
        Some(1.0)
    );
    assert!(
        d.log_text()
            .contains("migration failed; the guest stays here")
    );
    // A proposal approved once cannot be approved again.
    let (code, out) = cli(&d, &token, &["migrations", "approve", &id.to_string()]);
    assert_ne!(code, 0);
    assert!(out.contains("is failed"), "{out}");

    // 3. The next proposal avoids C.
    let mut next = serde_json::Value::Null;
    d.wait_until("a proposal elsewhere", 60, || {
        no_oom(&d);
        if let Some(p) = proposals(&d)
            .into_iter()
            .find(|p| p["state"] == "proposed" && p["id"].as_u64() > Some(id))
        {
            next = p;
        }
        !next.is_null()
    });
    assert_eq!(
        next["to"], "lmigb",
        "C is avoided after the failure: {next}"
    );

    // 4. Switched to automatic by editing the config and SIGHUP: the move happens, to B.
    std::fs::write(d.dir.path().join("memscale.toml"), config(false)).expect("config");
    d.signal(libc::SIGHUP);
    d.wait_until("a guest to leave host A", 180, || {
        no_oom(&d);
        d.audit()
            .iter()
            .any(|r| r["reason"]["reason"] == "migrate" && r["result"] == "applied")
    });
    assert!(d.log_text().contains("migration settings applied"));
    let records = d.audit();
    let moves: Vec<_> = records
        .iter()
        .filter(|r| r["reason"]["reason"] == "migrate")
        .collect();
    let m = moves
        .iter()
        .find(|r| r["result"] == "applied")
        .expect("an applied migration");
    assert_eq!(m["host"], "lmiga");
    assert_eq!(m["reason"]["to"], "lmigb", "{moves:#?}");
    assert_eq!(
        moves
            .iter()
            .filter(|r| r["reason"]["to"] == "lmigc" && r["dry_run"] == false)
            .count(),
        1,
        "C was tried once, then avoided: {moves:#?}"
    );
    let moved = m["guest"].as_str().unwrap_or("").to_string();
    assert!(moved == "mid" || moved == "big", "{moves:?}");
    assert!(bytes(&m["reason"]["deficit"]) > 0);
    assert_eq!(b.domstate(&moved), "running", "{moved} runs on B");
    assert_ne!(a.domstate(&moved), "running", "{moved} left A");
    assert_ne!(c.domstate(&moved), "running", "{moved} is not on C");
    // Both guests' demand is met, the moved one on its new host, without OOM.
    let there = Guest {
        host: b.name.clone(),
        uri: b.uri.clone(),
        name: moved.clone(),
    };
    let (mid, big) = if moved == "mid" {
        (&there, &big)
    } else {
        (&mid, &there)
    };
    d.wait_until("mid at 500 MiB and big at 700 MiB", 180, || {
        for g in [mid, big] {
            assert!(g.oom().is_none(), "{} OOM: {:?}", g.name, g.oom());
        }
        mid.stat().demand_mib >= 500 && big.stat().demand_mib >= 700
    });
    assert_eq!(big.stat().oom_kill + mid.stat().oom_kill, 0);
    // Squeezing came first: a host-share decision on A before any proposal.
    let first = records
        .iter()
        .filter(|r| r["reason"]["reason"] == "migrate")
        .filter_map(|r| r["time"].as_f64())
        .fold(f64::MAX, f64::min);
    assert!(
        records.iter().any(|r| r["host"] == "lmiga"
            && r["reason"]["reason"] == "host-share"
            && r["time"].as_f64().unwrap_or(f64::MAX) <= first),
        "A shared its memory before moving a guest"
    );
    // The API lists the move, and the metrics count it.
    let listed = d.get("/v1/migrations").expect("/v1/migrations");
    assert!(listed.as_array().is_some_and(|a| {
        a.iter()
            .any(|r| r["guest"] == moved.as_str() && r["result"] == "applied")
    }));
    assert_eq!(
        d.metric("memscale_migrations_total{from=\"lmiga\",result=\"applied\",to=\"lmigb\"}"),
        Some(1.0)
    );
    // memscale now manages the moved guest on its new host.
    d.wait_until("the moved guest to be seen on its new host", 30, || {
        d.get(&format!("/v1/guests/{moved}"))
            .is_some_and(|g| g["host"].as_str() == Some("lmigb"))
    });
}
