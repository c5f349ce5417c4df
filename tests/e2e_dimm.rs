//! End-to-end: DIMM hotplug on real QEMU guests (ACPI memory hotplug, no virtio-mem). A guest
//! grows by 256 MiB DIMMs under demand and shrinks by unplugging them when idle; a guest that
//! refuses an unplug (kernel memory in the DIMM) is reported once and not asked again; a
//! two-node guest gets and gives back DIMMs evenly per node.

mod common;

use common::*;
use memscale::domain::DomainSpec;
use std::time::{Duration, Instant};

const DIMM: &str = r#"
[[policy]]
name = "dimm"
[policy.memory]
methods = ["dimm", "balloon"]
headroom = "160MiB"
shrink_cooldown = "8s"
window = "12s"
shrink_interval = "2s"
shrink_rate = "512MiB/s"
max_shrink_step = "1GiB"
"#;

const CONFIG: &str = "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n";

/// memscale's DIMMs in the live definition, per NUMA node.
fn dimms_per_node(g: &Guest, nodes: usize) -> Vec<usize> {
    let spec = DomainSpec::parse(&g.xml()).expect("live xml parses");
    let mut n = vec![0; nodes];
    for d in spec.dimms.iter().filter(|d| d.managed) {
        n[d.node.unwrap_or(0) as usize] += 1;
    }
    n
}

fn records<'a>(all: &'a [serde_json::Value], guest: &str) -> Vec<&'a serde_json::Value> {
    all.iter().filter(|r| r["guest"] == guest).collect()
}

fn no_oom(g: &Guest, d: &Daemon) {
    assert!(
        g.oom().is_none(),
        "guest {} hit OOM: {:?}\n{}",
        g.name,
        g.oom(),
        tail(&d.log_text(), 40)
    );
}

#[test]
fn dimm_guest_grows_shrinks_and_a_refused_unplug_is_not_retried() {
    let h = Host::up("hdimm", 50);
    let opts = [
        "--mem",
        "512",
        "--vmem",
        "0",
        "--acpi",
        "--slots",
        "8",
        "--stats-period",
        "1",
    ];
    let g = h.guest("dm", &opts);
    let d = Daemon::start(&[&h], &[("dimm.toml", DIMM)], CONFIG, &[]);
    g.wait_boot();
    d.wait_until("the guest to be managed", 60, || {
        d.guest("dm").is_some_and(|v| v["state"] == "ok")
    });
    let v = d.guest("dm").expect("guest view");
    assert_eq!(
        v["envelope"]["dimm"]["size"],
        256 << 20,
        "DIMM method in the envelope: {v}"
    );
    let boot_total = g.stat().memtotal_kib;

    // 1. Demand beyond the boot RAM: memscale plugs DIMMs, the guest onlines them.
    g.demand(600, 50);
    d.wait_until("600 MiB held on DIMMs", 180, || {
        no_oom(&g, &d);
        g.stat().demand_mib >= 600
    });
    let plugged = dimms_per_node(&g, 1)[0];
    assert!(plugged >= 1, "memscale's DIMMs plugged:\n{}", g.xml());
    let s = g.stat();
    assert!(
        s.memtotal_kib >= boot_total + 200 * 1024,
        "the guest onlined the DIMMs: MemTotal {} KiB from {boot_total} KiB",
        s.memtotal_kib
    );
    let audit = d.audit();
    let grows: Vec<_> = records(&audit, "dm")
        .into_iter()
        .filter(|r| r["kind"] == "grow" && r["method"] == "dimm" && r["result"] == "applied")
        .collect();
    assert!(!grows.is_empty(), "audited DIMM growth: {audit:?}");
    for r in &grows {
        let step = r["after"].as_u64().unwrap_or(0) - r["before"].as_u64().unwrap_or(0);
        assert_eq!(step % (256 << 20), 0, "whole DIMMs: {r}");
    }

    // 2. Idle: the DIMMs are unplugged again, the guest gives the memory back.
    g.demand(0, 0);
    d.wait_until("every DIMM unplugged", 180, || {
        no_oom(&g, &d);
        dimms_per_node(&g, 1)[0] == 0
    });
    d.wait_until("the guest's MemTotal back at boot size", 30, || {
        g.stat().memtotal_kib < boot_total + 64 * 1024
    });
    let audit = d.audit();
    assert!(
        records(&audit, "dm")
            .iter()
            .any(|r| r["kind"] == "shrink" && r["method"] == "dimm" && r["result"] == "applied"),
        "audited DIMM unplug"
    );

    // 3. Memory onlined as kernel memory and filled with slab: the guest refuses the unplug.
    assert!(g.control("online-kernel", &[]).contains("ok"));
    g.demand(600, 50);
    d.wait_until("DIMMs plugged again", 180, || {
        no_oom(&g, &d);
        g.stat().demand_mib >= 600 && dimms_per_node(&g, 1)[0] >= 1
    });
    assert!(g.control("slab", &["60000"]).contains("ok"));
    d.wait_until("the guest to fill its slab", 240, || {
        g.console().contains("MEVENT slab done")
    });
    g.demand(0, 0);
    d.wait_until("the refused unplug reported", 180, || {
        no_oom(&g, &d);
        records(&d.audit(), "dm")
            .iter()
            .any(|r| r["result"] == "refused")
    });
    let refused_at = Instant::now();
    let audit = d.audit();
    let refusal = records(&audit, "dm")
        .into_iter()
        .find(|r| r["result"] == "refused")
        .cloned()
        .expect("refusal record");
    assert!(
        refusal["why"]
            .as_str()
            .unwrap_or("")
            .contains("refused to release DIMM"),
        "{refusal}"
    );
    assert!(
        d.log_text().contains("refused to release DIMM"),
        "logged for the operator"
    );
    // Not retried in a loop: no further unplug of DIMMs for a while, the guest still runs.
    let unplugs_then = records(&d.audit(), "dm")
        .iter()
        .filter(|r| r["kind"] == "shrink" && r["method"] == "dimm")
        .count();
    while refused_at.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_secs(2));
        no_oom(&g, &d);
    }
    let unplugs_now = records(&d.audit(), "dm")
        .iter()
        .filter(|r| r["kind"] == "shrink" && r["method"] == "dimm")
        .count();
    assert_eq!(
        unplugs_now, unplugs_then,
        "no unplug asked again within 30 s of the refusal"
    );
    assert!(
        dimms_per_node(&g, 1)[0] >= 1,
        "the refused DIMM is still there"
    );
    assert!(g.is_running());
    let m = Daemon::request_port(d.port, "GET", "/metrics")
        .expect("metrics")
        .1;
    assert!(
        m.lines().any(|l| l.starts_with("memscale_resizes_total")
            && l.contains("method=\"dimm\"")
            && l.contains("result=\"refused\"")),
        "refusals counted"
    );
}

#[test]
fn two_node_guest_grows_and_shrinks_evenly_per_node() {
    let h = Host::up("hnuma", 51);
    let g = h.guest(
        "dn",
        &[
            "--mem",
            "512",
            "--vmem",
            "0",
            "--acpi",
            "--slots",
            "8",
            "--numa",
            "2",
            "--vcpus",
            "2",
            "--stats-period",
            "1",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "dimm-token\n").unwrap();
    let cfg = format!("{CONFIG}api_token_file = \"{}\"\n", tok.display());
    let d = Daemon::start(&[&h], &[("dimm.toml", DIMM)], &cfg, &[]);
    g.wait_boot();
    d.wait_until("the guest to be managed", 60, || {
        d.guest("dn").is_some_and(|v| v["state"] == "ok")
    });
    let v = d.guest("dn").expect("view");
    assert_eq!(v["envelope"]["dimm"]["nodes"], 2, "{v}");
    // A manual size two nodes cannot split into whole DIMMs is refused with the nearest ones.
    let (c, b) = d
        .request(
            "POST",
            "/v1/guests/dn/adjust",
            Some(r#"{"memory_mib": 768}"#),
            Some("dimm-token"),
        )
        .expect("answer");
    assert_eq!(c, 422, "{b}");
    assert!(
        b.contains("cannot be split evenly across the guest's 2 NUMA node(s) at 512 MiB steps")
            && b.contains("nearest valid sizes are 512 MiB and 1024 MiB"),
        "{b}"
    );
    g.demand(900, 50);
    d.wait_until("900 MiB held", 240, || {
        no_oom(&g, &d);
        g.stat().demand_mib >= 900
    });
    let grown = dimms_per_node(&g, 2);
    assert!(grown[0] >= 1, "DIMMs plugged: {grown:?}");
    assert_eq!(grown[0], grown[1], "even per node after growth: {grown:?}");
    // Down to a demand that still needs a DIMM on each node, so the end state says something.
    // Read once the unplugs have settled: a step unplugs one DIMM per node and they land one
    // at a time, so a look in the middle of a step sees the nodes uneven for a moment.
    g.demand(300, 0);
    let mut last = (grown.clone(), std::time::Instant::now());
    d.wait_until("the DIMMs unplugged and settled", 240, || {
        no_oom(&g, &d);
        let n = dimms_per_node(&g, 2);
        if n != last.0 || !memscale_idle(&d, "dn") {
            last = (n, std::time::Instant::now());
            return false;
        }
        n.iter().sum::<usize>() < grown.iter().sum::<usize>()
            && last.1.elapsed() > Duration::from_secs(10)
    });
    let shrunk = dimms_per_node(&g, 2);
    assert!(shrunk[0] >= 1, "300 MiB still needs DIMMs: {shrunk:?}");
    assert_eq!(
        shrunk[0], shrunk[1],
        "even per node after shrinking: {shrunk:?}"
    );
    for r in records(&d.audit(), "dn") {
        if r["method"] == "dimm" && r["result"] == "applied" {
            let (a, b) = (
                r["after"].as_u64().unwrap_or(0),
                r["before"].as_u64().unwrap_or(0),
            );
            assert_eq!(
                a.abs_diff(b) % (512 << 20),
                0,
                "one DIMM per node a step: {r}"
            );
        }
    }
}

/// No resize in flight for the guest.
fn memscale_idle(d: &Daemon, guest: &str) -> bool {
    d.guest(guest).is_some_and(|v| v["state"] != "resizing")
}
