//! End-to-end: three private libvirt hosts. When sharing cannot hold a host's guests' needs,
//! memscale live-migrates a guest (libvirt peer to peer) to the host with the most room.

mod common;

use common::*;
use std::process::Command;

const FAST: &str = r#"
[[policy]]
name = "fast"
[policy.memory]
headroom = "192MiB"
shrink_cooldown = "8s"
window = "12s"
shrink_interval = "2s"
shrink_rate = "256MiB/s"
"#;

fn host_block(h: &Host) -> String {
    let addr = h
        .tcp
        .trim_start_matches("qemu+tcp://")
        .trim_end_matches("/system")
        .to_string();
    format!(
        "[[hosts]]\nname = \"{}\"\nuri = \"{}\"\ncapacity = \"2048MiB\"\nreserve = \"256MiB\"\n\
         migration_uri = \"{}\"\nmigration_address = \"tcp://{addr}\"\n",
        h.name, h.uri, h.tcp
    )
}

fn domstate(h: &Host, guest: &str) -> String {
    let out = Command::new("virsh")
        .args(["-q", "-c", &h.uri, "domstate", guest])
        .output()
        .expect("virsh domstate");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_host_that_sharing_cannot_relieve_moves_a_guest_away() {
    let a = Host::up("lmiga", 34);
    let b = Host::up("lmigb", 35);
    let c = Host::up("lmigc", 36);
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n\
         [migration]\nenabled = true\nmin_interval = \"30s\"\n{}{}{}",
        host_block(&a),
        host_block(&b),
        host_block(&c)
    );
    // On host A (1792 MiB to share): "mid" settles at 700 MiB, then "big" climbs to 1150.
    let mid = a.guest(
        "mid",
        &[
            "--mem",
            "512",
            "--vmem",
            "1024",
            "--stats-period",
            "1",
            "--demand",
            "10:700@40",
        ],
    );
    let big = a.guest(
        "big",
        &[
            "--mem",
            "512",
            "--vmem",
            "1536",
            "--stats-period",
            "1",
            "--demand",
            "40:1150@15",
        ],
    );
    let d = Daemon::start(&[], &[("fast.toml", FAST)], &config, &[]);
    mid.wait_boot();
    big.wait_boot();
    d.wait_until("a guest to leave host A", 300, || {
        assert!(
            big.oom().is_none(),
            "big OOM: {:?}\n{}",
            big.oom(),
            tail(&d.log_text(), 60)
        );
        d.audit()
            .iter()
            .any(|r| r["reason"]["reason"] == "migrate" && r["result"] == "applied")
    });
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
    // Either guest may be the one: the smallest that covers the deficit among those not in
    // the middle of a resize at that moment.
    let moved = m["guest"].as_str().unwrap_or("").to_string();
    assert!(moved == "mid" || moved == "big", "{moves:?}");
    let to = m["reason"]["to"].as_str().unwrap_or("").to_string();
    assert!(to == "lmigb" || to == "lmigc", "{m}");
    assert!(bytes(&m["reason"]["deficit"]) > 0);
    let dest = if to == "lmigb" { &b } else { &c };
    assert_eq!(domstate(dest, &moved), "running", "{moved} runs on {to}");
    assert_ne!(domstate(&a, &moved), "running", "{moved} left A");
    // Both guests' demand is met, the moved one on its new host, without OOM.
    let there = Guest {
        host: dest.name.clone(),
        uri: dest.uri.clone(),
        name: moved.clone(),
    };
    let (mid, big) = if moved == "mid" {
        (&there, &big)
    } else {
        (&mid, &there)
    };
    d.wait_until("mid at 700 MiB and big at 1150 MiB", 180, || {
        for g in [mid, big] {
            assert!(g.oom().is_none(), "{} OOM: {:?}", g.name, g.oom());
        }
        mid.stat().demand_mib >= 700 && big.stat().demand_mib >= 1150
    });
    assert_eq!(big.stat().oom_kill + mid.stat().oom_kill, 0);
    // Squeezing came first: a host-share decision on A before the move.
    let first_move = m["time"].as_f64().unwrap_or(0.0);
    assert!(
        records.iter().any(|r| r["host"] == "lmiga"
            && r["reason"]["reason"] == "host-share"
            && r["time"].as_f64().unwrap_or(f64::MAX) <= first_move),
        "A shared its memory before moving a guest"
    );
    // The API lists the move, and the metrics count it.
    let listed = d.get("/v1/migrations").expect("/v1/migrations");
    assert!(listed.as_array().is_some_and(|a| {
        a.iter()
            .any(|r| r["guest"] == moved.as_str() && r["result"] == "applied")
    }));
    let (code, metrics) = Daemon::request_port(d.port, "GET", "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "memscale_migrations_total{{from=\"lmiga\",result=\"applied\",to=\"{to}\"}} 1"
        )),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("migrations"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // memscale now manages the moved guest on its new host.
    d.wait_until("the moved guest to be seen on its new host", 30, || {
        d.get(&format!("/v1/guests/{moved}"))
            .is_some_and(|g| g["host"].as_str() == Some(to.as_str()))
    });
}
