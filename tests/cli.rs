//! The binary's command line: exit codes and messages of `check`, usage errors, version.

use std::process::Command;

fn memscale(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(args)
        .output()
        .expect("run memscale");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn shipped_policies_pass_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let (code, out, err) = memscale(&["check", dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok:"), "{out}");
}

#[test]
fn broken_policy_fails_with_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[policy]]\nname = \"x\"\n[policy.memory]\nheadroom = \"256\"\nshrinkat = \"150%\"\n",
    )
    .unwrap();
    let (code, _, err) = memscale(&["check", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let shown = p.display().to_string();
    assert!(
        err.contains(&format!("{shown}:4:12: error: headroom: missing unit")),
        "{err}"
    );
    assert!(
        err.contains(&format!("{shown}:5:1: error: unknown key \"shrinkat\"")),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2_and_version_works() {
    let (code, _, err) = memscale(&["run", "--no-such-flag"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, _) = memscale(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("memscale "), "{out}");
    let (code, out, _) = memscale(&["run", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--connect"));
}

#[test]
fn bad_config_at_start_exits_1_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("memscale.toml");
    std::fs::write(&c, "interval = \"fast\"\n").unwrap();
    let (code, _, err) = memscale(&[
        "run",
        "--config",
        c.to_str().unwrap(),
        "--connect",
        "test:///default",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("memscale.toml:1:12"), "{err}");
}

#[test]
fn explain_names_the_winner_and_the_losers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let (code, out, err) = memscale(&["check", dir, "--explain", "pg-1", "--tag", "db"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("pg-1: policy \"conservative\" (priority 30"),
        "{out}"
    );
    assert!(out.contains("also matches \"default\""), "{out}");
    let (_, out, _) = memscale(&["check", dir, "--explain", "web-1"]);
    assert!(out.starts_with("web-1: policy \"default\""), "{out}");
}

#[test]
fn json_logs_are_json() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args([
            "--log-format",
            "json",
            "run",
            "--connect",
            "test:///default",
            "--policies",
            "/nonexistent",
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for l in BufReader::new(err).lines().take(3) {
        lines.push(l.unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{l}");
    }
}

/// `memscale run` until it exits, or killed after `secs` (a daemon that did start).
fn run_briefly(args: &[&str], secs: u64) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run memscale");
    let t0 = std::time::Instant::now();
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st.code();
        }
        if t0.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (code, err)
}

/// A state file from a newer memscale (an operator downgraded): the start is refused with
/// the file and both versions named, before libvirt is reached or the API listens, and the
/// file is left exactly as it was. `check` says so too.
#[test]
fn a_state_file_from_a_newer_memscale_refuses_start_and_is_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let body = "{\"version\": 2, \"saved_at\": 1.0, \"pins\": [\"db\"], \"manual\": {}, \"guests\": {}, \"later\": true}";
    std::fs::write(&state, body).unwrap();
    let mtime = std::fs::metadata(&state).unwrap().modified().unwrap();
    let sd = dir.path().to_str().unwrap();
    // Nothing listens on port 1: the state is checked before any connection is tried.
    let (code, err) = run_briefly(
        &[
            "run",
            "--connect",
            "qemu+tcp://127.0.0.1:1/system",
            "--state-dir",
            sd,
            "--policies",
            "/nonexistent",
            "--listen",
            "127.0.0.1:0",
        ],
        30,
    );
    assert_eq!(code, Some(1), "{err}");
    let shown = state.display().to_string();
    assert!(
        err.contains(&format!(
            "{shown}: state version 2 is newer than this memscale reads (1)"
        )) && err.contains("nothing was started"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&state).unwrap(), body);
    assert_eq!(
        std::fs::metadata(&state).unwrap().modified().unwrap(),
        mtime
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state.json"], "nothing set aside, nothing written");

    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let (code, _, err) = memscale(&["check", "--state-dir", sd, policies]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("{shown}:1:1: error: state version 2 is newer")),
        "{err}"
    );
    // A broken current file is only a warning: `run` sets it aside and reads the previous.
    std::fs::write(&state, "{\"version\": 1, \"pins\": [").unwrap();
    std::fs::write(
        dir.path().join("state.json.1"),
        "{\"version\": 1, \"saved_at\": 1.0, \"pins\": [], \"manual\": {}, \"guests\": {}}",
    )
    .unwrap();
    let (code, out, err) = memscale(&["check", "--state-dir", sd, policies]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok:"), "{out}");
    assert!(
        err.contains(&format!(
            "{shown}:1:24: warning: truncated: EOF while parsing a list;"
        )) && err.contains("sets it aside and restores state.json.1"),
        "{err}"
    );
    assert!(state.exists(), "check moves nothing");
}

/// A token file its group may write is refused before anything starts, even before libvirt
/// is reached (the URI here answers nothing): exit 1, the file and its mode named.
#[test]
fn a_group_writable_token_file_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("api-token");
    std::fs::write(&tok, "t0ken\n").unwrap();
    std::fs::set_permissions(&tok, std::fs::Permissions::from_mode(0o660)).unwrap();
    let c = dir.path().join("memscale.toml");
    std::fs::write(&c, format!("api_token_file = \"{}\"\n", tok.display())).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args([
            "run",
            "--config",
            c.to_str().unwrap(),
            "--connect",
            "qemu+tcp://127.0.0.1:1/system",
            "--policies",
            "/nonexistent",
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("memscale ran with a group-writable token file");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{}: the API token file has mode 0660",
            tok.display()
        )),
        "{err}"
    );
    assert!(!dir.path().join("state").exists(), "nothing started: {err}");
}

/// `memscale migrations approve` against a daemon's API (in this process, no libvirt) that
/// runs dry: the refusal is shown, the exit is non-zero, the proposal is left as it was.
#[test]
fn approving_on_a_dry_run_daemon_shows_the_refusal() {
    use memscale::units::Bytes;
    use std::sync::Arc;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let config = memscale::config::Config {
        dry_run: true,
        ..Default::default()
    };
    let set = memscale::policy::PolicySet::new(vec![], vec![], 1);
    let mut s = memscale::daemon::Shared::new(config, set, &[]).unwrap();
    s.api_token = Some("t0ken".into());
    s.proposals.lock().unwrap().push(memscale::view::Proposal {
        id: 7,
        from: "a".into(),
        guest: "g".into(),
        to: "b".into(),
        size: Bytes::from_mib(512),
        deficit: Bytes::from_mib(64),
        proposed_at: 1.0,
        last_seen: 1.0,
        state: "proposed".into(),
        error: None,
    });
    let s = Arc::new(s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let server = rt.spawn(memscale::api::serve(s.clone(), addr, rx));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the API never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "t0ken\n").unwrap();
    let (code, out, err) = memscale(&[
        "migrations",
        "--api",
        &addr.to_string(),
        "--token-file",
        tok.to_str().unwrap(),
        "approve",
        "7",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("memscale answered 409: memscale runs in dry-run mode: nothing is moved"),
        "{err}"
    );
    assert_eq!(s.proposal_list()[0].state, "proposed");
    let _ = stop.send(true);
    let _ = rt.block_on(server);
}

/// `check --json`: the outcome on stdout as JSON (diagnostics with their places, the
/// policies, the --explain answer), nothing on stderr, the same exit codes.
#[test]
fn check_json_reports_what_check_prints() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/policies");
    let (code, out, err) = memscale(&["check", "--json", dir, "--explain", "pg-1", "--tag", "db"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.is_empty(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["errors"], 0);
    let names: Vec<&str> = v["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"default"), "{names:?}");
    let (_, text, _) = memscale(&["check", dir, "--explain", "pg-1", "--tag", "db"]);
    let winner = v["explain"]["policy"]["name"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("pg-1: policy {winner:?}")),
        "{text} vs {v}"
    );

    let bad = tempfile::tempdir().unwrap();
    let p = bad.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[policy]]\nname = \"x\"\n[policy.memory]\nheadroom = \"256\"\n",
    )
    .unwrap();
    let (code, out, err) = memscale(&["check", "--json", p.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"], 1);
    let d = &v["diagnostics"][0];
    assert_eq!(d["path"], p.display().to_string());
    assert_eq!((d["line"].as_u64(), d["col"].as_u64()), (Some(4), Some(12)));
    assert_eq!(d["severity"], "error");
    assert!(v["policies"].as_array().unwrap().is_empty(), "{v}");
}

/// The package's commented default config is valid as shipped.
#[test]
fn the_packaged_default_config_passes_check() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let state = tempfile::tempdir().unwrap();
    let (code, out, err) = memscale(&[
        "check",
        "--config",
        &format!("{repo}/packaging/memscale.toml"),
        "--state-dir",
        state.path().to_str().unwrap(),
        &format!("{repo}/policies/default.toml"),
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    serde_json::from_str(out.split_once("\r\n\r\n")?.1).ok()
}

/// Without a policy directory every guest gets the shipped default policy (built in), not a
/// second set of knobs: its peak window among them.
#[test]
fn without_a_policy_directory_guests_get_the_shipped_default() {
    let state = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_memscale"))
        .args(["run", "--connect", "test:///default", "--policies"])
        .arg(state.path().join("no-such-dir"))
        .arg("--state-dir")
        .arg(state.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run memscale");
    let t0 = std::time::Instant::now();
    let guest = loop {
        if let Some(v) = get_json(port, "/v1/guests/test").filter(|v| v.get("policy").is_some()) {
            break v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no guest \"test\" served"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = get_json(port, "/v1/status");
    let _ = child.kill();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    let _ = child.wait();
    assert_eq!(guest["policy"], "default", "{guest}\n{status:?}\n{err}");
    let status = status.unwrap_or_default();
    assert_eq!(
        status["policies"]["policies"],
        serde_json::json!(["default"]),
        "{status}"
    );
    assert!(
        err.contains("no policy directory: every guest gets the shipped default policy"),
        "{err}"
    );
}
