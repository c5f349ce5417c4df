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

#[test]
fn a_hung_host_stalls_only_itself() {
    let a = Host::up("lfa", 31);
    let b = Host::up("lfb", 32);
    let gb = b.guest(
        "fb",
        &["--mem", "512", "--vmem", "1024", "--stats-period", "1"],
    );
    gb.wait_boot();
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
}
