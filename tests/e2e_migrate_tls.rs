//! End-to-end: `[migration] tls = true` moves a guest over libvirt's TLS transport
//! (`VIR_MIGRATE_TLS`). Both hosts have x509 certificates (one test-bed CA, a server and a
//! client certificate naming each host's address: `tests/testbed/tls.sh`) and take migrations
//! only over TLS (`migrate_tls_force`). Without `tls` the move is refused by libvirt; with it
//! (switched on by SIGHUP, as `[migration]` is live) the guest moves, its memory encrypted
//! between the QEMUs and both ends' certificates checked.

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

fn host_block(h: &Host, capacity: u64) -> String {
    let addr = h
        .tcp
        .trim_start_matches("qemu+tcp://")
        .trim_end_matches("/system")
        .to_string();
    format!(
        "[[hosts]]\nname = \"{}\"\nuri = \"{}\"\ncapacity = \"{capacity}MiB\"\nreserve = \"256MiB\"\n\
         migration_uri = \"{}\"\nmigration_address = \"tcp://{addr}\"\n",
        h.name, h.uri, h.tcp
    )
}

fn tls(h: &Host) {
    let out = Command::new(testbed().join("tls.sh"))
        .args(["enable", &h.name])
        .output()
        .expect("tls.sh");
    assert!(
        out.status.success(),
        "TEST BED FAILED: tls.sh enable {}: {}{}",
        h.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn running(h: &Host) -> Vec<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", &h.uri, "list", "--name"])
        .output()
        .expect("virsh list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn with_migration_tls_a_guest_moves_over_libvirts_tls_transport() {
    let a = Host::up("ltlsa", 164);
    let b = Host::up("ltlsb", 165);
    tls(&a);
    tls(&b);
    let hosts = format!("{}{}", host_block(&a, 2048), host_block(&b, 3072));
    let config = |tls: bool| {
        format!(
            "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n\
             [migration]\nenabled = true\nmin_interval = \"5s\"\nretry_after = \"5s\"\ntls = {tls}\n{hosts}"
        )
    };
    // On A (1792 MiB to share) the two guests' needs (use plus 300 MiB free each) pass what it
    // has, while what they use still fits squeezed: a guest must move, nobody starves meanwhile.
    let mut guests = Vec::new();
    for (name, vmem, demand) in [("tmid", "768", "10:500@40"), ("tbig", "1024", "30:700@15")] {
        guests.push(a.guest(
            name,
            &[
                "--mem",
                "512",
                "--vmem",
                vmem,
                "--stats-period",
                "1",
                "--demand",
                demand,
            ],
        ));
    }
    let d = Daemon::start(&[], &[("fast.toml", FAST)], &config(false), &[]);
    for g in &guests {
        g.wait_boot();
    }
    let moves = |d: &Daemon, result: &str| -> Vec<serde_json::Value> {
        d.audit()
            .into_iter()
            .filter(|r| {
                r["reason"]["reason"] == "migrate"
                    && r["result"].as_str().is_some_and(|s| s.starts_with(result))
            })
            .collect()
    };
    // Without tls: the TLS-only destination refuses the move, and the guest stays.
    d.wait_until("a move refused for want of TLS", 240, || {
        for g in &guests {
            assert!(g.oom().is_none(), "{} OOM: {:?}", g.name, g.oom());
        }
        !moves(&d, "failed").is_empty()
    });
    let failed = moves(&d, "failed");
    assert!(
        failed.iter().any(|r| r["result"]
            .as_str()
            .is_some_and(|s| s.contains("VIR_MIGRATE_TLS"))),
        "{failed:#?}"
    );
    assert!(moves(&d, "applied").is_empty());
    assert_eq!(running(&a).len(), 2, "both guests still on A");
    // With tls (a SIGHUP applies [migration]): the guest moves.
    std::fs::write(d.dir.path().join("memscale.toml"), config(true)).expect("config");
    d.signal(libc::SIGHUP);
    d.wait_until("a guest moved over TLS", 240, || {
        for g in &guests {
            assert!(g.oom().is_none(), "{} OOM: {:?}", g.name, g.oom());
        }
        !moves(&d, "applied").is_empty()
    });
    assert!(d.log_text().contains("migration settings applied"));
    let m = moves(&d, "applied").remove(0);
    assert_eq!(m["reason"]["to"], "ltlsb", "{m}");
    let moved = m["guest"].as_str().unwrap_or_default().to_string();
    assert!(running(&b).contains(&moved), "{moved} runs on B");
    assert!(!running(&a).contains(&moved), "{moved} left A");
    for g in &guests {
        assert!(g.oom().is_none(), "{} OOM: {:?}", g.name, g.oom());
    }
}
