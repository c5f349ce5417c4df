//! The Debian package, installed as an operator installs it, under a real systemd: a Debian 12
//! root file system (debootstrap, cached by `tests/testbed/rootfs.sh`) booted with
//! `systemd-nspawn -b`, the README's install commands run in it verbatim, the service pointed
//! at a test-bed libvirtd over TCP (the container shares the machine's network), then, in one
//! boot: READY and STATUS, a guest grown under demand, a refused and an accepted reload, the
//! watchdog restarting a stopped daemon, the sandbox refusing a write, log rotation, an upgrade
//! keeping state and pins, remove keeping the config and purge removing it; and lintian.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `scripts/deb.sh` on the binary this test was built with; the package's path.
fn build_deb(version: Option<&str>, out: &Path) -> PathBuf {
    let mut c = Command::new(format!("{REPO}/scripts/deb.sh"));
    c.args([
        "--fast",
        "--binary",
        env!("CARGO_BIN_EXE_memscale"),
        "--out",
    ])
    .arg(out);
    if let Some(v) = version {
        c.args(["--version", v]);
    }
    let o = c.output().expect("scripts/deb.sh");
    assert!(o.status.success(), "scripts/deb.sh: {}", text(&o));
    let p = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    assert!(p.exists(), "no package at {}", p.display());
    p
}

/// The `sh` blocks of the README's "Installing as a service" section, in order.
fn readme_install_blocks() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(format!("{REPO}/README.md")).unwrap();
    let section = readme
        .split("\n## Installing as a service\n")
        .nth(1)
        .expect("README has an \"Installing as a service\" section");
    let section = section.split("\n## ").next().unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<Vec<String>> = None;
    for l in section.lines() {
        match (&mut cur, l.trim_end()) {
            (None, "```sh") => cur = Some(Vec::new()),
            (Some(_), "```") => blocks.push(cur.take().unwrap()),
            (Some(b), l) if !l.trim().is_empty() => b.push(l.to_string()),
            _ => {}
        }
    }
    blocks
}

/// A booted container: the nspawn process and the container's systemd (PID 1 inside).
struct Container {
    nspawn: Child,
    leader: u32,
    root: PathBuf,
    log: PathBuf,
}

impl Container {
    fn boot(root: &Path, binds: &[(&Path, &str)], log: &Path) -> Container {
        let mut c = Command::new("systemd-nspawn");
        c.arg("-D").arg(root).args([
            "--register=no",
            "--keep-unit",
            "-b",
            "--console=pipe",
            "-M",
            "memscale-deb",
        ]);
        for (from, to) in binds {
            c.arg(format!("--bind-ro={}:{to}", from.display()));
        }
        let logf = std::fs::File::create(log).unwrap();
        c.stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        let nspawn = c
            .spawn()
            .expect("systemd-nspawn (Debian package systemd-container)");
        let t0 = Instant::now();
        let leader = loop {
            if let Some(p) = container_init(nspawn.id()) {
                break p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "the container's systemd did not start: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let c = Container {
            nspawn,
            leader,
            root: root.to_path_buf(),
            log: log.to_path_buf(),
        };
        c.wait("the container's systemd to be running", 90, || {
            let s = c.sh("systemctl is-system-running").1;
            s.contains("running") || s.contains("degraded")
        });
        let state = c.sh("systemctl is-system-running").1;
        assert_eq!(
            state.trim(),
            "running",
            "{}",
            c.sh("systemctl --failed --no-pager").1
        );
        c
    }

    /// A shell command inside the container, as root: (success, stdout and stderr).
    fn sh(&self, cmd: &str) -> (bool, String) {
        let o = Command::new("nsenter")
            .args([
                "-t",
                &self.leader.to_string(),
                "-a",
                "--",
                "/bin/sh",
                "-c",
                cmd,
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .output()
            .expect("nsenter");
        (o.status.success(), text(&o))
    }

    /// As `sh`, failing the test when the command fails.
    fn ok(&self, cmd: &str) -> String {
        let (ok, out) = self.sh(cmd);
        assert!(
            ok,
            "in the container: {cmd}\n{out}\nthe service's journal:\n{}",
            tail(&self.sh("journalctl -u memscale --no-pager").1, 30)
        );
        out
    }

    fn show(&self, prop: &str) -> String {
        self.ok(&format!("systemctl show -P {prop} memscale.service"))
            .trim()
            .to_string()
    }

    /// A file of the container, read from the host.
    fn path(&self, p: &str) -> PathBuf {
        self.root.join(p.trim_start_matches('/'))
    }

    fn wait(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !f() {
            assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "timed out waiting for {what}; the service's journal:\n{}",
                tail(
                    &self
                        .sh("journalctl -u memscale --no-pager -o short-monotonic")
                        .1,
                    60
                )
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Killing a PID namespace's init kills everything in it.
        unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
        let _ = self.nspawn.wait();
        if std::thread::panicking() {
            eprintln!(
                "container console (tail):\n{}",
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 40)
            );
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The container's PID 1 among the nspawn process's descendants: the process whose last PID
/// namespace number is 1.
fn container_init(nspawn: u32) -> Option<u32> {
    let mut todo = vec![nspawn];
    while let Some(p) = todo.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
        if p != nspawn && nspid.is_some_and(|n| n.split_whitespace().last() == Some("1")) {
            return Some(p);
        }
        for t in std::fs::read_dir(format!("/proc/{p}/task"))
            .into_iter()
            .flatten()
        {
            let t = t.ok()?.path().join("children");
            let kids = std::fs::read_to_string(t).unwrap_or_default();
            todo.extend(
                kids.split_whitespace()
                    .filter_map(|k| k.parse::<u32>().ok()),
            );
        }
    }
    None
}

fn get(port: u16, path: &str) -> Option<Value> {
    let (code, body) = http(port, "GET", path, None, None)?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

fn metric(port: u16, line_start: &str) -> Option<f64> {
    let (_, body) = http(port, "GET", "/metrics", None, None)?;
    body.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

fn audit_lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn the_package_under_a_real_systemd() {
    install();
    let h = Host::up("ldeb", 61);
    let g = h.guest(
        "dg",
        &[
            "--mem",
            "1024",
            "--current",
            "512",
            "--vmem",
            "1024",
            "--stats-period",
            "1",
        ],
    );
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let prev_dir = work.path().join("prev");
    let cur_dir = work.path().join("cur");
    // The previous build, as a lower version of the same tree; then this build.
    let prev = build_deb(Some("0.0.9"), &prev_dir);
    let cur = build_deb(None, &cur_dir);
    assert!(
        prev.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("memscale_0.0.9_"),
        "{}",
        prev.display()
    );
    // lintian takes a while: it runs while the container boots.
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error", "--tag-display-limit", "0"])
        .arg(&cur)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("lintian (installed by tests/testbed/install.sh)");

    let cached = Command::new(format!("{REPO}/tests/testbed/rootfs.sh"))
        .output()
        .expect("tests/testbed/rootfs.sh");
    assert!(cached.status.success(), "rootfs.sh: {}", text(&cached));
    let cached = String::from_utf8_lossy(&cached.stdout).trim().to_string();
    let root = work.path().join("root");
    let o = Command::new("cp")
        .args(["-a", "--reflink=auto", &cached])
        .arg(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "copy of the rootfs: {}", text(&o));
    // The README's commands run in /src, where target/debian holds the package built.
    let c = Container::boot(
        &root,
        &[(&prev_dir, "/src/target/debian"), (&cur_dir, "/debs")],
        &work.path().join("console.log"),
    );

    // Install as the README says (the build ran above, on this machine).
    let blocks = readme_install_blocks();
    assert_eq!(blocks.len(), 2, "README install blocks: {blocks:?}");
    assert!(
        blocks[0][0].starts_with("scripts/deb.sh"),
        "the README builds with scripts/deb.sh: {blocks:?}"
    );
    for cmd in &blocks[0][1..] {
        c.ok(&format!("cd /src && {cmd}"));
    }
    assert_eq!(
        c.ok("dpkg-query -W -f '${Version}' memscale").trim(),
        "0.0.9"
    );
    // The service user can read its config: root:memscale 0750.
    assert_eq!(
        c.ok("stat -c '%U:%G %a' /etc/memscale /etc/memscale/policies")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["root:memscale", "750", "root:memscale", "750"]
    );
    for f in [
        "/usr/share/man/man8/memscale.8.gz",
        "/usr/share/man/man8/memscale-run.8.gz",
        "/usr/share/man/man5/memscale.toml.5.gz",
        "/usr/share/man/man5/memscale-policy.5.gz",
        "/usr/share/bash-completion/completions/memscale",
        "/usr/share/zsh/vendor-completions/_memscale",
        "/usr/share/fish/vendor_completions.d/memscale.fish",
        "/usr/share/memscale/alerts/memscale.rules.yml",
        "/etc/logrotate.d/memscale",
        "/etc/memscale/policies/default.toml",
    ] {
        assert!(c.path(f).exists(), "{f} not installed");
    }
    assert_eq!(c.show("ActiveState"), "inactive", "not started on install");

    // Point it at the test-bed host, over TCP, with its own API port (the network is shared).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let conf = c.path("/etc/memscale/memscale.toml");
    let shipped = std::fs::read_to_string(&conf).unwrap();
    assert!(shipped.contains("uri = \"qemu:///system\""), "{shipped}");
    let edited = shipped
        .replace("uri = \"qemu:///system\"", &format!("uri = \"{}\"", h.tcp))
        .replace(
            "#listen = \"127.0.0.1:9847\"",
            &format!("listen = \"127.0.0.1:{port}\""),
        )
        .replace(
            "reserve = \"4GiB\"",
            "reserve = \"0B\"\ncapacity = \"16GiB\"",
        );
    std::fs::write(&conf, edited).unwrap();
    g.wait_boot();

    // Start: `systemctl enable --now` returns once the daemon said READY (Type=notify).
    for cmd in &blocks[1] {
        c.ok(cmd);
    }
    assert_eq!(c.show("ActiveState"), "active");
    assert_eq!(c.show("SubState"), "running");
    let status_text = c.show("StatusText");
    assert!(!status_text.is_empty(), "no STATUS= from the daemon");
    assert!(status_text.contains("hosts"), "{status_text}");
    let status = c.sh("systemctl status --no-pager memscale").1;
    assert!(
        status.contains("Status: \"") && status.contains(" hosts"),
        "systemctl status shows the STATUS line: {status}"
    );
    assert_eq!(c.show("UnitFileState"), "enabled");
    assert_eq!(
        metric(
            port,
            &format!("memscale_host_connected{{host=\"{}\"}}", h.tcp)
        ),
        Some(1.0),
        "the sandboxed service reaches libvirt over TCP"
    );

    // A guest grown under demand, by the shipped default policy.
    let audit = c.path("/var/lib/memscale/audit.jsonl");
    g.demand(900, 60);
    c.wait("the guest grown under demand", 180, || {
        g.current_mib() >= 900 + 100
    });
    let grows = audit_lines(&audit)
        .into_iter()
        .filter(|r| r["guest"] == "dg" && r["kind"] == "grow")
        .count();
    assert!(grows > 0, "grow decisions in the audit log");
    let policy = get(port, "/v1/guests/dg").unwrap()["policy"].clone();
    assert_eq!(policy, "default", "the shipped default policy: {policy}");

    // Log rotation: the file is renamed and the daemon, sent SIGHUP, reopens the path.
    c.ok("logrotate --force /etc/logrotate.d/memscale");
    assert!(
        c.path("/var/lib/memscale/audit.jsonl.1").exists(),
        "rotated: {}",
        c.ok("ls -l /var/lib/memscale")
    );

    // A broken policy: the reload fails (memscale check runs first) and the old set acts on.
    let gen0 = metric(port, "memscale_policy_generation").unwrap();
    let broken = c.path("/etc/memscale/policies/dg.toml");
    std::fs::write(
        &broken,
        "[[policy]]\nname = \"dg-fast\"\npriority = 10\n[policy.match]\nnames = [\"dg\"]\n[policy.memory]\nheadroom = 300\n",
    )
    .unwrap();
    let (ok, out) = c.sh("systemctl reload memscale");
    assert!(!ok, "a broken policy fails the reload: {out}");
    let journal = c.sh("journalctl -u memscale --no-pager").1;
    // Refused by `memscale check` (ExecReload), which names the file and line.
    assert!(
        journal.contains("dg.toml:7:") && journal.contains("1 error(s) in 1 file(s)"),
        "the journal names the file and line: {}",
        tail(&journal, 20)
    );
    assert_eq!(c.show("ActiveState"), "active");
    let t_broken = now();
    g.demand(1300, 60);
    c.wait("growth under the old policies", 180, || {
        audit_lines(&audit).iter().any(|r| {
            r["guest"] == "dg"
                && r["kind"] == "grow"
                && r["time"].as_f64().unwrap_or(0.0) >= t_broken
        })
    });
    let after: Vec<Value> = audit_lines(&audit)
        .into_iter()
        .filter(|r| r["time"].as_f64().unwrap_or(0.0) >= t_broken && r["guest"] == "dg")
        .collect();
    assert!(
        after
            .iter()
            .all(|r| r["policy"] == "default" && r["generation"].as_f64() == Some(gen0)),
        "the old policies acted: {after:?}"
    );
    // The audit log written after the rotation went to the new file: the daemon reopened it.
    assert!(
        !audit_lines(&audit).is_empty(),
        "nothing in the reopened audit log"
    );
    // Fixed: the reload succeeds and the new policy takes the guest.
    std::fs::write(
        &broken,
        "[[policy]]\nname = \"dg-fast\"\npriority = 10\n[policy.match]\nnames = [\"dg\"]\n[policy.memory]\nheadroom = \"300MiB\"\npeak_window = \"6h\"\n",
    )
    .unwrap();
    c.ok("systemctl reload memscale");
    c.wait("the fixed policy in force", 30, || {
        get(port, "/v1/guests/dg").is_some_and(|v| v["policy"] == "dg-fast")
    });
    assert!(metric(port, "memscale_policy_generation").unwrap() > gen0);

    // The sandbox: the service's own mount namespace refuses a write outside its state
    // directory, even as root, and takes one inside it.
    let pid = c.show("MainPID");
    let (ok, out) = c.sh(&format!("nsenter -t {pid} -m -- touch /etc/memscale/probe"));
    assert!(
        !ok && out.contains("Read-only file system"),
        "a write to /etc refused: {out}"
    );
    c.ok(&format!(
        "nsenter -t {pid} -m -- setpriv --reuid=memscale --regid=memscale --clear-groups touch /var/lib/memscale/probe"
    ));

    // The watchdog: a stopped daemon is restarted, and adopts the guest's size as it is.
    let size = g.current_mib();
    let restarts: u32 = c.show("NRestarts").parse().unwrap();
    c.ok(&format!("kill -STOP {pid}"));
    c.wait("systemd's watchdog to restart the daemon", 150, || {
        c.show("NRestarts").parse::<u32>().unwrap_or(0) > restarts
            && c.show("ActiveState") == "active"
    });
    let journal = c.sh("journalctl -u memscale --no-pager").1;
    assert!(
        journal.contains("Watchdog timeout"),
        "{}",
        tail(&journal, 20)
    );
    c.wait("the restarted daemon to see the guest", 60, || {
        get(port, "/v1/guests/dg").is_some_and(|v| mib(&v["current"]) > 0)
    });
    let v = get(port, "/v1/guests/dg").unwrap();
    let seen = mib(&v["current"]);
    assert!(
        seen + 16 >= size && g.current_mib() + 16 >= size,
        "adopted at {seen} MiB, the guest at {} MiB, {size} MiB before: {v}",
        g.current_mib()
    );

    // Upgrade, previous build -> this build: restarted, state and pins kept.
    let token = std::fs::read_to_string(c.path("/etc/memscale/api-token")).unwrap();
    let (code, body) = http(port, "POST", "/v1/guests/dg/pin", None, Some(token.trim())).unwrap();
    assert_eq!(code, 200, "pin: {body}");
    let invocation = c.show("InvocationID");
    let deb = cur.file_name().unwrap().to_string_lossy().into_owned();
    c.ok(&format!("apt-get install -y /debs/{deb}"));
    assert_eq!(
        c.ok("dpkg-query -W -f '${Version}' memscale").trim(),
        env!("CARGO_PKG_VERSION")
    );
    assert_ne!(
        c.show("InvocationID"),
        invocation,
        "restarted by the upgrade"
    );
    assert_eq!(c.show("ActiveState"), "active");
    c.wait("the upgraded daemon to answer", 60, || {
        get(port, "/v1/guests/dg").is_some()
    });
    let v = get(port, "/v1/guests/dg").unwrap();
    assert_eq!(v["pinned"], true, "pin kept across the upgrade: {v}");
    assert_eq!(
        metric(port, "memscale_state_restored_from{generation=\"current\"}"),
        Some(1.0)
    );
    assert!(c.path("/etc/memscale/policies/dg.toml").exists());

    // Remove keeps /etc/memscale; purge removes it and the state.
    c.ok("apt-get remove -y memscale");
    assert_eq!(c.show("ActiveState"), "inactive");
    assert!(!c.path("/usr/bin/memscale").exists());
    assert!(
        c.path("/etc/memscale/memscale.toml").exists(),
        "remove keeps the config"
    );
    assert!(c.path("/etc/memscale/api-token").exists());
    c.ok("apt-get purge -y memscale");
    assert!(
        !c.path("/etc/memscale").exists(),
        "purge removes /etc/memscale"
    );
    assert!(
        !c.path("/var/lib/memscale").exists(),
        "purge removes the state"
    );

    let o = lintian.wait_with_output().unwrap();
    assert!(o.status.success(), "lintian found errors:\n{}", text(&o));
    eprintln!("lintian:\n{}", text(&o));
}
