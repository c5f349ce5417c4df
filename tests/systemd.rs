//! The service unit as systemd's own tools see it, and the notify protocol as the daemon
//! speaks it (READY after the first tick, STATUS, WATCHDOG, STOPPING) to a real socket.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// The unit with ExecStart pointing at the binary just built (verify checks it exists).
fn unit_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/memscale.service"
    ))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("memscale.service");
    std::fs::write(
        &p,
        text.replace("/usr/bin/memscale", env!("CARGO_BIN_EXE_memscale")),
    )
    .unwrap();
    (dir, p)
}

#[test]
fn unit_verifies_and_is_sandboxed() {
    let (_d, p) = unit_copy();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&p)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let msgs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !msgs.contains("memscale.service:"),
        "systemd-analyze verify: {msgs}"
    );
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&p)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for memscale.service:")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    assert!(score <= 3.0, "exposure {score} above 3.0:\n{text}");
    eprintln!("systemd-analyze security: exposure {score}");
}

#[test]
fn speaks_sd_notify() {
    let h = Host::up("lsd", 29);
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let d = Daemon::start_env(
        &[&h],
        &[],
        "interval = \"1s\"\n",
        &[],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            ("WATCHDOG_USEC", "1500000"),
        ],
    );
    let mut got = String::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < Duration::from_secs(40)
        && !(got.contains("READY=1") && got.contains("WATCHDOG=1"))
    {
        if let Ok(n) = rx.recv(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
            got.push('\n');
        }
    }
    assert!(got.contains("READY=1"), "{got}");
    assert!(got.contains("STATUS=0 guests on 1/1 hosts"), "{got}");
    assert!(got.contains("WATCHDOG=1"), "{got}");
    d.signal(libc::SIGTERM);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) && !got.contains("STOPPING=1") {
        if let Ok(n) = rx.recv(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(got.contains("STOPPING=1"), "{got}");
}
