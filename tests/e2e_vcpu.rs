//! End-to-end: vCPU live scaling on real QEMU guests. vCPUs added and removed through the API
//! and the CLI, seen online (and gone) inside the guest; refused, each with its own message,
//! for a CPU-pinned guest, an uneven NUMA split, beyond the ceiling and below the floor; a
//! guest that never brings a new vCPU online is reported.

mod common;

use common::*;

const CONFIG_TAIL: &str = "interval = \"1s\"\nstats_period = 1\ndriver_grace = \"12s\"\n";

/// Memory is not what this test is about: the balloon only, which has nothing to do here.
const BALLOON: &str = "[[policy]]\nname = \"b\"\n[policy.memory]\nmethods = [\"balloon\"]\n";

fn records(d: &Daemon, guest: &str) -> Vec<serde_json::Value> {
    d.audit()
        .into_iter()
        .filter(|r| r["guest"] == guest)
        .collect()
}

#[test]
fn vcpus_added_removed_and_refused_with_their_reasons() {
    let h = Host::up("hvcpu", 52);
    let base = ["--vmem", "0", "--acpi", "--stats-period", "1"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra.iter()).copied().collect()
    };
    let cp = h.guest(
        "cp",
        &with(&["--mem", "384", "--max-vcpus", "4", "--vcpus", "1"]),
    );
    let pn = h.guest(
        "pn",
        &with(&["--mem", "256", "--max-vcpus", "2", "--vcpus", "1", "--pin"]),
    );
    let n2 = h.guest(
        "n2",
        &with(&[
            "--mem",
            "384",
            "--numa",
            "2",
            "--max-vcpus",
            "4",
            "--vcpus",
            "2",
        ]),
    );
    let nx = h.guest(
        "nx",
        &with(&[
            "--mem",
            "256",
            "--max-vcpus",
            "2",
            "--vcpus",
            "1",
            "--cmdline",
            "memscale.nocpuonline=1",
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "vcpu-token\n").unwrap();
    let cfg = format!("{CONFIG_TAIL}api_token_file = \"{}\"\n", tok.display());
    let d = Daemon::start(&[&h], &[("b.toml", BALLOON)], &cfg, &[]);
    for g in [&cp, &pn, &n2, &nx] {
        g.wait_boot();
    }
    d.wait_until("every guest's definition read", 90, || {
        ["cp", "pn", "n2", "nx"].iter().all(|n| {
            d.guest(n)
                .is_some_and(|v| v["vcpus"].is_object() && v["state"] != "starting")
        })
    });
    let v = d.guest("cp").unwrap();
    assert_eq!(
        (
            v["vcpus"]["current"].as_u64(),
            v["vcpus"]["ceiling"].as_u64()
        ),
        (Some(1), Some(4)),
        "{v}"
    );
    assert_eq!(cp.cpus_online(), 1);
    let post = |guest: &str, body: &str| {
        d.request(
            "POST",
            &format!("/v1/guests/{guest}/adjust"),
            Some(body),
            Some("vcpu-token"),
        )
        .expect("answer")
    };

    // Refusals: each names its problem, and nothing is queued.
    let (c, b) = post("pn", r#"{"vcpus": 2}"#);
    assert_eq!(c, 409, "{b}");
    assert!(b.contains("CPU-pinned"), "{b}");
    let (c, b) = post("n2", r#"{"vcpus": 3}"#);
    assert_eq!(c, 422, "{b}");
    assert!(
        b.contains("cannot be split evenly across the guest's 2 NUMA node(s)")
            && b.contains("nearest valid counts are 2 and 4"),
        "{b}"
    );
    let (c, b) = post("cp", r#"{"vcpus": 8}"#);
    assert_eq!(c, 422, "{b}");
    assert!(b.contains("beyond the guest's ceiling of 4 vCPUs"), "{b}");
    let (c, b) = post("cp", r#"{"vcpus": 0}"#);
    assert_eq!(c, 422, "{b}");
    assert!(b.contains("below the guest's floor of 1 vCPUs"), "{b}");
    let (c, b) = post("cp", r#"{"vcpus": "two"}"#);
    assert_eq!(c, 400, "{b}");
    let (c, b) = post("cp", r#"{}"#);
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("memory_mib, vcpus or both"), "{b}");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(
        records(&d, "pn").iter().all(|r| r["method"] != "vcpu"),
        "a refused request changes nothing"
    );
    assert_eq!(pn.cpus_online(), 1);
    assert_eq!(n2.cpus_online(), 2);

    // Add through the CLI: the guest runs on three CPUs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(["adjust", "cp", "--vcpus", "3", "--api"])
        .arg(format!("127.0.0.1:{}", d.port))
        .arg("--token-file")
        .arg(&tok)
        .output()
        .expect("memscale adjust");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_until("three CPUs online inside the guest", 60, || {
        cp.cpus_online() == 3
    });
    d.wait_until("the growth audited", 10, || {
        records(&d, "cp").iter().any(|r| {
            r["method"] == "vcpu"
                && r["kind"] == "grow"
                && r["result"] == "applied"
                && r["vcpus"]["before"] == 1
                && r["vcpus"]["after"] == 3
        })
    });
    // The CLI's refusal carries the API's message.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(["adjust", "n2", "--vcpus", "3", "--api"])
        .arg(format!("127.0.0.1:{}", d.port))
        .arg("--token-file")
        .arg(&tok)
        .output()
        .expect("memscale adjust");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be split evenly"));

    // Remove one: the guest lets it go (seen inside), and the attempt is audited whatever
    // libvirt makes of it (see docs/guests.md on QEMU 7.2's missing DEVICE_DELETED).
    let (c, b) = post("cp", r#"{"vcpus": 2}"#);
    assert_eq!(c, 202, "{b}");
    d.wait_until("two CPUs online inside the guest", 60, || {
        cp.cpus_online() == 2
    });
    d.wait_until("the removal audited", 30, || {
        records(&d, "cp")
            .iter()
            .any(|r| r["method"] == "vcpu" && r["kind"] == "shrink" && r["vcpus"]["after"] == 2)
    });
    assert!(cp.is_running());

    // A guest that does not online the new vCPU is reported.
    let (c, b) = post("nx", r#"{"vcpus": 2}"#);
    assert_eq!(c, 202, "{b}");
    d.wait_until("the vCPU the guest left offline reported", 60, || {
        records(&d, "nx")
            .iter()
            .any(|r| r["result"] == "not onlined" && r["reason"]["reason"] == "vcpu-not-onlined")
    });
    assert_eq!(nx.cpus_online(), 1, "the guest really left it offline");
    assert!(
        d.log_text().contains("did not bring vCPU 1 online"),
        "logged for the operator"
    );
}

/// The optional CPU policy: a vCPU added while the guest keeps its one vCPU busy, taken away
/// again once it idles (seen inside the guest both times), each audited with its reason.
#[test]
fn cpu_policy_adds_a_vcpu_under_load_and_removes_it_when_idle() {
    let h = Host::up("hcpup", 53);
    let g = h.guest(
        "cb",
        &[
            "--mem",
            "320",
            "--vmem",
            "0",
            "--acpi",
            "--max-vcpus",
            "2",
            "--vcpus",
            "1",
            "--stats-period",
            "1",
        ],
    );
    // Thresholds low enough for a TCG guest on a loaded 2-core CI machine: a busy loop gets
    // well over 40% of a host core, an idle guest well under 15%.
    let policy = "[[policy]]\nname = \"cpu\"\n[policy.memory]\nmethods = [\"balloon\"]\n[policy.cpu]\nenabled = true\ngrow_at = \"40%\"\nshrink_at = \"15%\"\nwindow = \"8s\"\ncooldown = \"10s\"\nmax_delay = \"95%\"\n";
    // The daemon starts once the guest has booted and settled: the tail of a TCG boot keeps
    // its one vCPU over 40% busy for some seconds (seen: 54% over the first 8 s window on an
    // idle machine, where the boot is quick), which the policy rightly takes for load.
    g.wait_boot();
    std::thread::sleep(std::time::Duration::from_secs(15));
    let d = Daemon::start(&[&h], &[("cpu.toml", policy)], CONFIG_TAIL, &[]);
    d.wait_until("the guest's definition read", 60, || {
        d.guest("cb").is_some_and(|v| v["vcpus"].is_object())
    });
    assert_eq!(g.cpus_online(), 1);
    // Idle at one vCPU (the floor): nothing happens.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let changes: Vec<_> = records(&d, "cb")
        .into_iter()
        .filter(|r| r["method"] == "vcpu")
        .collect();
    assert!(
        changes.is_empty(),
        "no change at the floor while idle: {changes:?}"
    );
    assert!(g.control("burn", &["1"]).contains("ok burn 1"));
    d.wait_until("a second vCPU online inside the guest", 90, || {
        g.cpus_online() == 2
    });
    let grow = records(&d, "cb")
        .into_iter()
        .find(|r| r["method"] == "vcpu" && r["kind"] == "grow")
        .expect("audited growth");
    assert_eq!(grow["reason"]["reason"], "cpu-busy", "{grow}");
    assert_eq!(grow["result"], "applied", "{grow}");
    assert!(g.control("burn", &["0"]).contains("ok burn 0"));
    d.wait_until("back to one vCPU inside the guest", 120, || {
        g.cpus_online() == 1
    });
    d.wait_until("the removal audited", 30, || {
        records(&d, "cb").iter().any(|r| {
            r["method"] == "vcpu" && r["kind"] == "shrink" && r["reason"]["reason"] == "cpu-idle"
        })
    });
    assert!(g.is_running());
}
