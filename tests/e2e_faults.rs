//! End-to-end: a host whose libvirtd stops answering (SIGSTOP) or goes away stalls only
//! itself: its calls time out and are counted, ticks that overran are counted, the other host
//! keeps being served, and the daemon recovers when the host answers again.

mod common;

use common::*;

fn metric(d: &Daemon, prefix: &str) -> f64 {
    let m = d
        .request("GET", "/metrics", None, None)
        .map(|x| x.1)
        .unwrap_or_default();
    m.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `virsh -q -c URI ARGS…`, which must succeed; its output.
fn virsh(uri: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("virsh")
        .args(["-q", "-c", uri])
        .args(args)
        .output()
        .expect("virsh");
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_hung_host_stalls_only_itself() {
    let a = Host::up("lfa", 31);
    let b = Host::up("lfb", 32);
    let gb = b.guest(
        "fb",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    let ga = a.guest(
        "fa",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    gb.wait_boot();
    ga.wait_boot();
    let d = Daemon::start(&[&a, &b], &[], "interval = \"500ms\"\n", &[]);
    d.wait_until("both hosts connected", 30, || {
        d.get("/v1/status").is_some_and(|s| {
            s["hosts"]
                .as_array()
                .is_some_and(|h| h.len() == 2 && h.iter().all(|h| h["connected"] == true))
        })
    });
    let out = std::process::Command::new(testbed().join("host.sh"))
        .args(["pid", "lfa"])
        .output()
        .expect("host.sh pid");
    let pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("libvirtd pid");
    // SAFETY: stopping and continuing a libvirtd this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    d.wait_until("the hung host's calls counted as errors", 30, || {
        metric(
            &d,
            "memscale_libvirt_errors_total{call=\"stats\",host=\"lfa\"}",
        ) >= 1.0
    });
    d.wait_until("overruns counted", 30, || {
        metric(&d, "memscale_loop_overruns_total{host=\"lfa\"}") >= 1.0
    });
    // the other host is served meanwhile: a demand is met
    gb.demand(350, 40);
    d.wait_until("the healthy host's guest grown", 90, || {
        gb.current_mib() > 600
    });
    let st = d.get("/v1/status").unwrap();
    let lfa = st["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "lfa")
        .unwrap()
        .clone();
    assert_eq!(lfa["connected"], false, "{lfa}");
    assert!(
        lfa["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no answer")
            || lfa["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("has not returned"),
        "{lfa}"
    );
    unsafe { libc::kill(pid, libc::SIGCONT) };
    d.wait_until("the host recovers", 60, || {
        d.get("/v1/status").is_some_and(|s| {
            s["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().all(|h| h["connected"] == true))
        })
    });
    assert!(gb.oom().is_none());

    // libvirtd killed (SIGKILL) right after memscale resized a guest, and started again: the
    // daemon notices, reconnects with back-off, does not repeat the resize, and resumes.
    ga.demand(450, 80);
    d.wait_until("a grow of fa applied", 90, || {
        d.audit()
            .iter()
            .any(|r| r["guest"] == "fa" && r["kind"] == "grow" && r["result"] == "applied")
    });
    let tb = testbed().join("host.sh");
    let run = |cmd: &str| {
        let out = std::process::Command::new(&tb)
            .args([cmd, "lfa"])
            .output()
            .expect("host.sh");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let errors_before = metric(
        &d,
        "memscale_libvirt_errors_total{call=\"stats\",host=\"lfa\"}",
    );
    run("kill-libvirtd");
    d.wait_until("the dead libvirtd noticed", 20, || {
        d.get("/v1/status").is_some_and(|s| {
            s["hosts"].as_array().is_some_and(|h| {
                h.iter()
                    .any(|h| h["name"] == "lfa" && h["connected"] == false)
            })
        })
    });
    let b_tick = |d: &Daemon| {
        d.get("/v1/status")
            .and_then(|s| {
                s["hosts"].as_array().and_then(|h| {
                    h.iter()
                        .find(|h| h["name"] == "lfb")
                        .and_then(|h| h["last_tick"].as_f64())
                })
            })
            .unwrap_or(0.0)
    };
    let t0 = b_tick(&d);
    let ga_t0 = ga.stat().t;
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert!(
        b_tick(&d) > t0 + 2.0,
        "host B kept being served while A's libvirtd was down"
    );
    // (virsh needs the libvirtd: the guest's own console says it runs on)
    d.wait_until("fa's console to go on without its libvirtd", 30, || {
        ga.stat().t > ga_t0
    });
    run("start-libvirtd");
    assert!(
        ga.is_running(),
        "the restarted libvirtd sees the guest running"
    );
    d.wait_until("reconnected to the restarted libvirtd", 60, || {
        d.get("/v1/status").is_some_and(|s| {
            s["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().all(|h| h["connected"] == true))
        })
    });
    assert!(
        metric(
            &d,
            "memscale_libvirt_errors_total{call=\"stats\",host=\"lfa\"}"
        ) > errors_before
    );
    d.wait_until("fa's demand met after the restart", 120, || {
        assert!(ga.oom().is_none(), "fa OOM: {:?}", ga.oom());
        ga.stat().demand_mib >= 450
    });
    // No resize was issued twice: every applied grow of fa starts where the previous ended.
    let grows: Vec<(u64, u64)> = d
        .audit()
        .iter()
        .filter(|r| r["guest"] == "fa" && r["kind"] != "hold" && r["result"] == "applied")
        .map(|r| (bytes(&r["before"]), bytes(&r["after"])))
        .collect();
    for w in grows.windows(2) {
        assert_ne!(w[0], w[1], "the same resize twice: {grows:?}");
    }
    let log = d.log_text();
    let reconnects = log.matches("connected").count();
    assert!(reconnects >= 2, "reconnection logged:\n{}", tail(&log, 40));
    // Events were registered again on the new connection: an operator's edit of the
    // persistent definition (the floor) is seen at once, not at the next resize.
    d.wait_until(
        "events registered at start on both hosts and again after the reconnect",
        10,
        || {
            d.log_text()
                .matches("registered for libvirt events")
                .count()
                >= 3
        },
    );
    let xml = virsh(&a.uri, &["dumpxml", "--inactive", "fa"]).replace(
        "<currentMemory unit='KiB'>524288</currentMemory>",
        "<currentMemory unit='KiB'>458752</currentMemory>",
    );
    assert!(xml.contains("458752"), "persistent floor found: {xml}");
    let f = d.dir.path().join("fa-edited.xml");
    std::fs::write(&f, xml).expect("write xml");
    virsh(&a.uri, &["define", &f.to_string_lossy()]);
    d.wait_until(
        "the edited floor seen through the defined event",
        15,
        || {
            d.guest("fa")
                .is_some_and(|v| mib(&v["envelope"]["floor"]) == 448)
        },
    );
    assert!(
        metric(
            &d,
            "memscale_libvirt_events_total{event=\"defined\",host=\"lfa\"}"
        ) >= 1.0
    );

    // A guest paused, then destroyed, in the middle of growing: its state is shown, then it
    // and its metric series go away; no storm of errors.
    let gp = b.guest(
        "fp",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    gp.wait_boot();
    gp.demand(400, 80);
    d.wait_until("a grow of fp applied", 90, || {
        d.audit()
            .iter()
            .any(|r| r["guest"] == "fp" && r["kind"] == "grow" && r["result"] == "applied")
    });
    let errs = |d: &Daemon| metric(d, "memscale_libvirt_errors_total{");
    let errs0 = errs(&d);
    virsh(&b.uri, &["suspend", "fp"]);
    d.wait_until("fp shown not running", 20, || {
        d.get("/v1/guests/fp")
            .is_some_and(|g| g["state"] == "not-running" || g["state"] == "not_running")
    });
    let (_, m) = d.request("GET", "/metrics", None, None).expect("metrics");
    assert!(
        m.contains("memscale_guest_state{guest=\"fp\",host=\"lfb\",state=\"not_running\"} 1"),
        "{}",
        m.lines()
            .filter(|l| l.contains("\"fp\"") && l.contains("state"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    virsh(&b.uri, &["resume", "fp"]);
    d.wait_until("fp back to normal", 30, || {
        d.get("/v1/guests/fp")
            .is_some_and(|g| g["state"] == "ok" || g["state"] == "resizing")
    });
    virsh(&b.uri, &["destroy", "fp"]);
    virsh(&b.uri, &["undefine", "fp"]);
    d.wait_until("fp gone from the API", 20, || {
        d.get("/v1/guests/fp").is_none()
    });
    d.wait_until("fp's metric series gone", 20, || {
        let (_, m) = d.request("GET", "/metrics", None, None).expect("metrics");
        !m.contains("guest=\"fp\"")
    });
    assert!(
        errs(&d) - errs0 < 5.0,
        "no error storm: {} errors",
        errs(&d) - errs0
    );
    assert!(gb.oom().is_none() && ga.oom().is_none());
}

/// Started with two hosts, one of whose libvirtd is not running: the daemon is ready
/// (`/v1/status` and systemd's READY=1) as soon as the host that answers has had its first
/// tick, serves that host, and names the other unreachable (status, metric, log); when the
/// libvirtd comes up the host joins and its guest is managed. Before, READY waited for every
/// host: under systemd a kill at TimeoutStartSec and a restart loop (issue 16, item 3).
#[test]
fn an_unreachable_host_at_start_does_not_hold_back_readiness_and_joins_later() {
    let a = Host::up("luna", 161);
    let b = Host::up("lunb", 162);
    let ga = a.guest(
        "una",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    ga.wait_boot();
    let host_sh = |cmd: &str| {
        let out = std::process::Command::new(testbed().join("host.sh"))
            .args([cmd, "lunb"])
            .output()
            .expect("host.sh");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    host_sh("kill-libvirtd");
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("notify.sock");
    let rx = std::os::unix::net::UnixDatagram::bind(&sock).expect("bind notify socket");
    rx.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .expect("timeout");
    let d = Daemon::start_env(
        &[&a, &b],
        &[],
        "interval = \"1s\"\nstats_period = 1\n",
        &[],
        &[("NOTIFY_SOCKET", sock.to_str().expect("utf-8 path"))],
    );
    // A bound that fails only if readiness never comes: within seconds, it does.
    d.wait_until("ready with one host down", 60, || {
        d.get("/v1/status").is_some_and(|s| s["ready"] == true)
    });
    let mut notes = String::new();
    let mut buf = [0u8; 4096];
    let t0 = std::time::Instant::now();
    while !notes.contains("READY=1") && t0.elapsed() < std::time::Duration::from_secs(30) {
        if let Ok(n) = rx.recv(&mut buf) {
            notes.push_str(&String::from_utf8_lossy(&buf[..n]));
            notes.push('\n');
        }
    }
    assert!(notes.contains("READY=1"), "no READY=1 to systemd: {notes}");
    let down = d.host_status("lunb");
    assert_eq!(down["connected"], false, "{down}");
    assert!(
        down["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{down}"
    );
    assert_eq!(d.host_status("luna")["connected"], true);
    assert_eq!(metric(&d, "memscale_host_connected{host=\"lunb\"}"), 0.0);
    assert_eq!(metric(&d, "memscale_host_connected{host=\"luna\"}"), 1.0);
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("ready, serving the hosts that answered") && l.contains("lunb")),
        "no warning naming the unreachable host:\n{}",
        tail(&log, 30)
    );
    // The host that answers is served meanwhile: a demand is met.
    ga.demand(350, 40);
    d.wait_until("the reachable host's guest grown", 120, || {
        ga.current_mib() > 600
    });
    // The libvirtd comes up, with a guest: the host joins and its guest is managed.
    host_sh("start-libvirtd");
    let gb = b.guest(
        "unb",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    gb.wait_boot();
    d.wait_until("the second host joins with its guest", 90, || {
        let h = d.host_status("lunb");
        h["connected"] == true && h["guests"].as_u64() == Some(1)
    });
    assert_eq!(metric(&d, "memscale_host_connected{host=\"lunb\"}"), 1.0);
    gb.demand(350, 40);
    d.wait_until("the joined host's guest grown", 120, || {
        gb.current_mib() > 600
    });
    assert!(d.audit().iter().any(|r| r["host"] == "lunb"
        && r["guest"] == "unb"
        && r["kind"] == "grow"
        && r["result"] == "applied"));
    assert!(ga.oom().is_none() && gb.oom().is_none());
}
