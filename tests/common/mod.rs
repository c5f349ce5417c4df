//! The end-to-end harness: private libvirt hosts and real QEMU guests from `tests/testbed`,
//! and the real `memscale` binary run against them. Nothing here is mocked.
//!
//! These tests need root, QEMU and libvirt (installed by `tests/testbed/install.sh`, which
//! `scripts/test.sh` runs first). Where the test bed cannot start they fail loudly: they never
//! skip in silence.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn testbed() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed")
}

fn sh(script: &str, args: &[&str]) -> String {
    let out = Command::new(testbed().join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("TEST BED UNAVAILABLE: cannot run {script}: {e}"));
    if !out.status.success() {
        panic!(
            "TEST BED FAILED: {script} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Make sure packages, kernel and initramfs are there (fast when they are).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        sh("install.sh", &[]);
    });
}

/// A private libvirt host; torn down on drop.
pub struct Host {
    pub name: String,
    pub uri: String,
    pub tcp: String,
}

impl Host {
    /// `virsh domstate` of a guest on this host ("running", "shut off", or empty when the
    /// host has no such guest).
    pub fn domstate(&self, guest: &str) -> String {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "domstate", guest])
            .output()
            .expect("virsh domstate");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
    pub fn up(name: &str, index: u32) -> Host {
        install();
        // a leftover from an interrupted run would hold the name
        let _ = Command::new(testbed().join("host.sh"))
            .args(["down", name])
            .output();
        let out = sh("host.sh", &["up", name, &index.to_string()]);
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_else(|| panic!("host.sh printed no {k}: {out}"))
                .to_string()
        };
        Host {
            name: name.to_string(),
            uri: get("unix="),
            tcp: get("tcp="),
        }
    }

    /// `--connect` argument naming this host.
    pub fn connect_arg(&self) -> String {
        format!("{}={}", self.name, self.uri)
    }

    pub fn guest(&self, name: &str, opts: &[&str]) -> Guest {
        let mut args = vec!["define", &self.name, name];
        args.extend_from_slice(opts);
        args.push("--start");
        sh("guest.sh", &args);
        Guest {
            host: self.name.clone(),
            uri: self.uri.clone(),
            name: name.to_string(),
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = Command::new(testbed().join("host.sh"))
            .args(["down", &self.name])
            .output();
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MStat {
    pub t: u64,
    pub demand_mib: u64,
    pub target_mib: u64,
    pub memtotal_kib: u64,
    pub memavail_kib: u64,
    pub oom_kill: u64,
}

pub struct Guest {
    pub host: String,
    pub uri: String,
    pub name: String,
}

impl Guest {
    pub fn wait_boot(&self) {
        sh("guest.sh", &["wait-boot", &self.host, &self.name, "90"]);
    }
    pub fn demand(&self, mib: u64, rate: u64) {
        sh(
            "guest.sh",
            &[
                "demand",
                &self.host,
                &self.name,
                &mib.to_string(),
                &rate.to_string(),
            ],
        );
    }
    /// Make the guest claim all its free memory as used, forever (`liar` in guest-init).
    pub fn liar(&self) -> String {
        sh("guest.sh", &["liar", &self.host, &self.name])
    }
    pub fn rmmod_balloon(&self) -> String {
        sh("guest.sh", &["rmmod-balloon", &self.host, &self.name])
    }
    pub fn stat(&self) -> MStat {
        let line = sh("guest.sh", &["stat", &self.host, &self.name]);
        let mut m = MStat::default();
        for kv in line.split_whitespace() {
            if let Some((k, v)) = kv.split_once('=') {
                let v: u64 = v.parse().unwrap_or(0);
                match k {
                    "t" => m.t = v,
                    "demand_mib" => m.demand_mib = v,
                    "target_mib" => m.target_mib = v,
                    "memtotal_kib" => m.memtotal_kib = v,
                    "memavail_kib" => m.memavail_kib = v,
                    "oom_kill" => m.oom_kill = v,
                    _ => {}
                }
            }
        }
        m
    }
    /// A control-port command of `guest.sh` (`online-kernel`, `slab N`, `cpus`): its reply.
    pub fn control(&self, cmd: &str, args: &[&str]) -> String {
        let mut a = vec![cmd, &self.host, &self.name];
        a.extend_from_slice(args);
        sh("guest.sh", &a)
    }
    /// Everything the guest printed on its console.
    pub fn console(&self) -> String {
        let path = sh("guest.sh", &["console", &self.host, &self.name]);
        std::fs::read(path.trim())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// The live definition.
    pub fn xml(&self) -> String {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "dumpxml", &self.name])
            .output()
            .expect("virsh dumpxml");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// The CPUs online inside the guest, counted from its answer to `cpus` (e.g. "0-2").
    pub fn cpus_online(&self) -> u32 {
        let reply = self.control("cpus", &[]);
        let list = reply.trim().strip_prefix("ok cpus ").unwrap_or("");
        list.split(',')
            .filter(|r| !r.is_empty())
            .map(|r| match r.split_once('-') {
                Some((a, b)) => {
                    b.trim().parse::<u32>().unwrap_or(0) + 1 - a.trim().parse::<u32>().unwrap_or(0)
                }
                None => 1,
            })
            .sum()
    }
    /// The console line showing an OOM kill or a panic, if any, followed by the console's
    /// last lines (what the kernel said before it: a failing test shows why).
    pub fn oom(&self) -> Option<String> {
        let out = Command::new(testbed().join("guest.sh"))
            .args(["oom", &self.host, &self.name])
            .output()
            .expect("guest.sh oom");
        out.status.success().then(|| {
            let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let console = self.console();
            // (Not the demand generator's once-a-second MSTAT lines.)
            let lines: Vec<&str> = console
                .lines()
                .filter(|l| !l.starts_with("MSTAT"))
                .collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            format!("{line}\n--- the console's last lines ---\n{tail}")
        })
    }
    /// The hypervisor's view: `balloon.current` in MiB.
    pub fn current_mib(&self) -> u64 {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "domstats", "--balloon", &self.name])
            .output()
            .expect("virsh domstats");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("balloon.current="))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|k| k / 1024)
            .unwrap_or(0)
    }
    /// Sum of the virtio-mem devices' requested sizes in the live definition, MiB.
    pub fn vmem_requested_mib(&self) -> u64 {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "dumpxml", &self.name])
            .output()
            .expect("virsh dumpxml");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("<requested unit='KiB'>"))
            .filter_map(|l| l.strip_suffix("</requested>"))
            .filter_map(|v| v.parse::<u64>().ok())
            .sum::<u64>()
            / 1024
    }
    pub fn is_running(&self) -> bool {
        let out = Command::new("virsh")
            .args(["-q", "-c", &self.uri, "domstate", &self.name])
            .output()
            .expect("virsh");
        String::from_utf8_lossy(&out.stdout).trim() == "running"
    }
}

/// The daemon gets SIGKILL when the thread that started it ends, so a test or bench that is
/// killed (a time-out, ^C) leaves no daemon behind to manage the next run's guests (seen: two
/// daemons resizing one host's guests, each auditing half of it).
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// The real daemon, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub audit: PathBuf,
    pub log: PathBuf,
    /// The command line, to start the same daemon again.
    pub args: Vec<std::ffi::OsString>,
}

impl Daemon {
    /// One host's part of `/v1/status` (null when absent).
    pub fn host_status(&self, host: &str) -> Value {
        self.get("/v1/status")
            .and_then(|s| {
                s["hosts"]
                    .as_array()
                    .and_then(|a| a.iter().find(|h| h["name"] == host).cloned())
            })
            .unwrap_or_default()
    }
    /// The value of the first `/metrics` line starting with `line_start`.
    pub fn metric(&self, line_start: &str) -> Option<f64> {
        let (_, text) = self.request("GET", "/metrics", None, None)?;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
    /// Start `memscale run` on these hosts, with policy files given as (name, text) and
    /// extra flags.
    pub fn start(
        hosts: &[&Host],
        policies: &[(&str, &str)],
        config: &str,
        extra: &[&str],
    ) -> Daemon {
        Daemon::start_env(hosts, policies, config, extra, &[])
    }

    /// As `start`, with extra environment variables for the daemon.
    pub fn start_env(
        hosts: &[&Host],
        policies: &[(&str, &str)],
        config: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        for (n, t) in policies {
            std::fs::write(pdir.join(n), t).expect("write policy");
        }
        let cfg = dir.path().join("memscale.toml");
        std::fs::write(&cfg, config).expect("write config");
        let port = free_port();
        let audit = dir.path().join("audit.jsonl");
        let log = dir.path().join("memscale.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memscale"));
        cmd.arg("--log-format")
            .arg("plain")
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--policies")
            .arg(&pdir);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--audit-log")
            .arg(&audit);
        for h in hosts {
            cmd.arg("--connect").arg(h.connect_arg());
        }
        if !extra.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(dir.path().join("state"));
        }
        cmd.args(extra);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let logf = std::fs::File::create(&log).expect("log");
        cmd.stdout(Stdio::null()).stderr(logf);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn memscale");
        let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
        let d = Daemon {
            child,
            port,
            dir,
            audit,
            log,
            args,
        };
        d.wait_until("the API answers", 30, || d.get("/v1/status").is_some());
        d
    }

    /// SIGKILL the daemon (no chance to save anything) and start it again with the same
    /// command line, config, state directory, audit log and port; its log is appended to.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.restart();
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the same daemon again (after `kill`).
    pub fn restart(&mut self) {
        let logf = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memscale"));
        cmd.args(&self.args).stdout(Stdio::null()).stderr(logf);
        die_with_parent(&mut cmd);
        self.child = cmd.spawn().expect("respawn memscale");
        self.wait_until("the API answers again", 30, || {
            self.get("/v1/status").is_some()
        });
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// GET a path of the API; the JSON body when the status is 200.
    pub fn get(&self, path: &str) -> Option<Value> {
        let (code, body) = self.request("GET", path, None, None)?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// A request to any local port (Prometheus, for one).
    pub fn request_port(port: u16, method: &str, path: &str) -> Option<(u16, String)> {
        http(port, method, path, None, None)
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Option<(u16, String)> {
        http(self.port, method, path, body, token)
    }

    pub fn guest(&self, name: &str) -> Option<Value> {
        self.get(&format!("/v1/guests/{name}"))
    }

    pub fn audit(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Poll `f` once a second until it holds; panic with the daemon's log after `secs`.
    pub fn wait_until(&self, what: &str, secs: u64, mut f: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!(
            "timed out after {secs}s waiting for {what}\n--- memscale log (tail) ---\n{}",
            tail(&self.log_text(), 60)
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on loopback; the status code and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Epoch seconds, as the daemon stamps its audit records.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A size from the API or audit (exact bytes) in MiB, rounded down.
pub fn mib(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0) / (1024 * 1024)
}

/// Exact bytes.
pub fn bytes(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Every recorded resize stayed inside the envelope recorded with it.
pub fn assert_resizes_inside_envelope(records: &[Value]) -> usize {
    let mut n = 0;
    for r in records.iter().filter(|r| r["kind"] != "hold") {
        n += 1;
        let (after, floor, ceiling) =
            (bytes(&r["after"]), bytes(&r["floor"]), bytes(&r["ceiling"]));
        assert!(
            floor > 0 && ceiling >= floor,
            "record without an envelope: {r}"
        );
        assert!(
            after >= floor && after <= ceiling,
            "resize outside the envelope: {r}"
        );
    }
    n
}

/// A real etcd server (Debian's `etcd-server`) on loopback, with a private data directory;
/// killed on drop.
pub struct Etcd {
    pub child: Child,
    pub url: String,
    pub dir: tempfile::TempDir,
    /// The command line, to start the same member again (`stop`, then `start_again`).
    args: Vec<String>,
}

impl Etcd {
    pub fn start() -> Etcd {
        install();
        let dir = tempfile::tempdir().expect("tempdir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let data = dir.path().join("data").to_string_lossy().into_owned();
        let args: Vec<String> = [
            "--name",
            "t",
            "--data-dir",
            &data,
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("t={peer_url}"),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let child = Etcd::spawn(&args, dir.path());
        let e = Etcd {
            child,
            url,
            dir,
            args,
        };
        e.wait_healthy();
        e
    }

    fn spawn(args: &[String], dir: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))
            .expect("log");
        Command::new("etcd")
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("TEST BED UNAVAILABLE: cannot start etcd: {e}"))
    }

    fn wait_healthy(&self) {
        let t0 = Instant::now();
        loop {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.url, "endpoint", "health"])
                .output()
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "TEST BED FAILED: etcd not healthy after 30 s:\n{}",
                std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kill the member (an outage): nothing answers on its address until `start_again`.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the member again on the same address and data (after `stop`); once healthy.
    pub fn start_again(&mut self) {
        self.child = Etcd::spawn(&self.args, self.dir.path());
        self.wait_healthy();
    }

    pub fn port(&self) -> u16 {
        self.url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// Every key under `prefix`, as (key, value) pairs.
    pub fn get_prefix(&self, prefix: &str) -> Vec<(String, String)> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url, "get", "--prefix", prefix])
            .output()
            .expect("etcdctl get");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_string(), c[1].to_string()))
            .collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
