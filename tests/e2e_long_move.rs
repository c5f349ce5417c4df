//! End-to-end: a live migration that takes longer than the watchdog allows a tick. It runs
//! beside the host's loop: the watchdog is fed all along (a real `NOTIFY_SOCKET`), the other
//! guests of the source host keep being resized while it copies, and once past its timeout
//! memscale aborts it through libvirt, the guest running on as before on the source.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Seconds of the watchdog the daemon is told it has (`WATCHDOG_USEC`).
const WATCHDOG_S: f64 = 3.0;
/// The move's timeout: several times the watchdog.
const TIMEOUT_S: f64 = 20.0;

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

#[test]
fn a_long_migration_runs_beside_the_tick_and_is_aborted_past_its_timeout() {
    let a = Host::up("llma", 72);
    let b = Host::up("llmb", 73);
    // A has 2048 MiB to share. "mover" (512 MiB, idle) is the only guest B (560 MiB of room)
    // can take; "stayer" climbs to 600 MiB, and with everyone's 300 MiB free A is short.
    let mover = a.guest(
        "mover",
        &["--mem", "512", "--vmem", "0", "--stats-period", "1"],
    );
    let stayer = a.guest(
        "stayer",
        &[
            "--mem",
            "512",
            "--vmem",
            "1024",
            "--stats-period",
            "1",
            "--demand",
            "20:600@30",
        ],
    );
    let other = a.guest(
        "other",
        &["--mem", "640", "--vmem", "512", "--stats-period", "1"],
    );
    for g in [&mover, &stayer, &other] {
        g.wait_boot();
    }
    // 1 MiB/s: the mover's few dozen MiB of non-zero pages take about a minute to copy.
    let out = Command::new("virsh")
        .args(["-c", &a.uri, "migrate-setspeed", "mover", "1"])
        .output()
        .expect("virsh migrate-setspeed");
    assert!(out.status.success(), "{out:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock).expect("bind notify socket");
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let pets: Arc<Mutex<Vec<f64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = {
        let (pets, stop) = (pets.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = rx.recv(&mut buf)
                    && String::from_utf8_lossy(&buf[..n]).contains("WATCHDOG=1")
                {
                    pets.lock().expect("pets").push(now());
                }
            }
        })
    };
    let config = format!(
        "interval = \"1s\"\nstats_period = 1\n[migration]\nenabled = true\nmin_interval = \"10m\"\n\
         retry_after = \"10m\"\ntimeout = \"{TIMEOUT_S}s\"\n{}{}",
        host_block(&a, 2304),
        host_block(&b, 816)
    );
    let d = Daemon::start_env(
        &[],
        &[("fast.toml", FAST)],
        &config,
        &[],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap_or("")),
            ("WATCHDOG_USEC", &((WATCHDOG_S * 1e6) as u64).to_string()),
        ],
    );

    // The move starts: the mover's status says so.
    let mut started = 0.0;
    d.wait_until("the mover being moved", 240, || {
        assert!(stayer.oom().is_none(), "stayer OOM: {:?}", stayer.oom());
        if d.guest("mover")
            .is_some_and(|v| v["last_decision"]["reason"]["reason"] == "migrating")
        {
            started = now();
        }
        started > 0.0
    });
    // While it copies, "other" needs more: it is grown on the source host meanwhile.
    other.demand(660, 20);
    let mut ended = 0.0;
    d.wait_until("the move to end", (TIMEOUT_S as u64) + 120, || {
        let failed = d.audit().into_iter().find(|r| {
            r["reason"]["reason"] == "migrate"
                && r["result"]
                    .as_str()
                    .is_some_and(|x| x.starts_with("failed"))
        });
        if let Some(r) = failed {
            ended = r["time"].as_f64().unwrap_or(0.0);
        }
        ended > 0.0
    });
    let log = d.log_text();
    assert!(
        log.contains("migration past its timeout: aborting it"),
        "{}",
        tail(&log, 60)
    );
    let rec = d
        .audit()
        .into_iter()
        .find(|r| r["reason"]["reason"] == "migrate")
        .expect("the migration's record");
    assert!(
        rec["result"]
            .as_str()
            .is_some_and(|r| r.contains("aborted after its timeout")),
        "{rec}"
    );
    assert!(
        ended - started >= TIMEOUT_S - 2.0,
        "the move ended after {:.0} s, not past its timeout: {rec}",
        ended - started
    );
    // The guest runs where it ran; B has no copy of it.
    assert_eq!(a.domstate("mover"), "running");
    let on_b = Command::new("virsh")
        .args(["-q", "-c", &b.uri, "list", "--all", "--name"])
        .output()
        .expect("virsh list");
    assert!(
        !String::from_utf8_lossy(&on_b.stdout).contains("mover"),
        "a copy of the mover is left on B"
    );
    // The other guest was resized while the move ran.
    let during: Vec<_> = d
        .audit()
        .into_iter()
        .filter(|r| {
            r["guest"] == "other"
                && r["kind"] == "grow"
                && r["result"] == "applied"
                && r["time"].as_f64().is_some_and(|t| t > started && t < ended)
        })
        .collect();
    assert!(
        !during.is_empty(),
        "no resize of another guest during the move ({started:.0}..{ended:.0}):\n{}",
        tail(&log, 60)
    );
    // The watchdog was fed all along: no gap of a whole watchdog interval.
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = listener.join();
    let pets = pets.lock().expect("pets").clone();
    let inside: Vec<f64> = pets
        .iter()
        .copied()
        .filter(|t| *t >= started - WATCHDOG_S && *t <= ended + WATCHDOG_S)
        .collect();
    assert!(inside.len() >= 3, "pets during the move: {inside:?}");
    let worst = inside.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    assert!(
        worst < WATCHDOG_S,
        "the watchdog went {worst:.1} s unfed during the move (it allows {WATCHDOG_S} s)"
    );
    assert!(!log.contains("host loop stuck"), "{}", tail(&log, 40));
    assert!(d.get("/v1/status").is_some(), "the daemon is up");
    for g in [&stayer, &other] {
        assert!(
            g.oom().is_none(),
            "{} OOM: {:?}\n{}",
            g.name,
            g.oom(),
            tail(&log, 60)
        );
    }
}
