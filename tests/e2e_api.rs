//! End-to-end: the HTTP API on a real guest. Reads, authentication, bad input refused with no
//! effect, a manual adjust honoured within the envelope and refused beyond it, pin and unpin.

mod common;

use common::*;

const FAST: &str = "[[policy]]\nname = \"fast\"\n[policy.memory]\nheadroom = \"192MiB\"\nshrink_cooldown = \"8s\"\nwindow = \"12s\"\nshrink_interval = \"2s\"\nshrink_rate = \"256MiB/s\"\n";

#[test]
fn api_reads_refusals_adjust_and_pins() {
    let h = Host::up("lapi", 28);
    // two NUMA nodes: virtio-mem moves in 2 x 2 MiB steps
    let g = h.guest(
        "api1",
        &[
            "--mem",
            "512",
            "--vmem",
            "1024",
            "--numa",
            "2",
            "--vcpus",
            "2",
            "--stats-period",
            "1",
        ],
    );
    g.wait_boot();
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "s3cret-token\n").unwrap();
    let cfg = format!(
        "interval = \"1s\"\napi_token_file = \"{}\"\n",
        tok.display()
    );
    let d = Daemon::start(&[&h], &[("fast.toml", FAST)], &cfg, &[]);
    d.wait_until("api1 ready", 60, || {
        d.guest("api1").is_some_and(|v| v["state"] == "ok")
    });
    let st = d.get("/v1/status").expect("status");
    assert_eq!(st["hosts"][0]["name"], "lapi");
    assert!(
        d.get("/v1/guests")
            .is_some_and(|v| v.as_array().is_some_and(|a| a.len() == 1))
    );
    let v = d.guest("api1").unwrap();
    assert_eq!(v["envelope"]["numa_nodes"], 2);
    assert!(d.get("/v1/decisions").is_some_and(|v| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|r| r["guest"] == "api1"))
    }));
    assert_eq!(d.request("GET", "/v1/nothing", None, None).unwrap().0, 404);
    assert!(v["decisions"].is_array());
    let before = g.current_mib();

    let post = |path: &str, body: Option<&str>, token: Option<&str>| {
        d.request("POST", path, body, token).expect("answer")
    };
    let ok = Some("s3cret-token");
    let (c, b) = post(
        "/v1/guests/api1/adjust",
        Some("{\"memory_mib\": 1024}"),
        None,
    );
    assert_eq!(c, 401, "{b}");
    let (c, _) = post(
        "/v1/guests/api1/adjust",
        Some("{\"memory_mib\": 1024}"),
        Some("guess"),
    );
    assert_eq!(c, 401);
    let (c, b) = post("/v1/guests/api1/adjust", Some("{\"memory_mib\": "), ok);
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("error"));
    let (c, _) = post("/v1/guests/api1/adjust", Some("{\"memory\": 1024}"), ok);
    assert_eq!(c, 400, "unknown field refused");
    let big = format!(
        "{{\"memory_mib\": 1024, \"pad\": \"{}\"}}",
        "x".repeat(70 * 1024)
    );
    let (c, _) = post("/v1/guests/api1/adjust", Some(&big), ok);
    assert_eq!(c, 413);
    let (c, _) = post(
        "/v1/guests/nobody/adjust",
        Some("{\"memory_mib\": 1024}"),
        ok,
    );
    assert_eq!(c, 404);
    let (c, b) = post("/v1/guests/api1/adjust", Some("{\"memory_mib\": 4096}"), ok);
    assert_eq!(c, 422);
    assert!(b.contains("beyond the guest's ceiling of 1536 MiB"), "{b}");
    let (c, b) = post("/v1/guests/api1/adjust", Some("{\"memory_mib\": 100}"), ok);
    assert_eq!(c, 422);
    assert!(b.contains("below the guest's floor of 512 MiB"), "{b}");
    let (c, b) = post("/v1/guests/api1/adjust", Some("{\"memory_mib\": 1026}"), ok);
    assert_eq!(c, 422);
    assert!(
        b.contains("nearest valid sizes are 1024 MiB and 1028 MiB"),
        "{b}"
    );
    let (c, _) = d
        .request("DELETE", "/v1/guests/api1/adjust", None, ok)
        .unwrap();
    assert_eq!(c, 405);
    // none of that moved anything
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(g.current_mib(), before);
    assert_eq!(g.vmem_requested_mib(), 0);

    // a valid adjust is honoured and held (the guest is pinned)
    let (c, b) = post("/v1/guests/api1/adjust", Some("{\"memory_mib\": 1024}"), ok);
    assert_eq!(c, 202, "{b}");
    d.wait_until("adjusted to 1024 MiB", 60, || g.current_mib() == 1024);
    assert_eq!(g.vmem_requested_mib(), 512, "256 MiB per node");
    std::thread::sleep(std::time::Duration::from_secs(20));
    assert_eq!(g.current_mib(), 1024, "an idle pinned guest is not shrunk");
    let v = d.guest("api1").unwrap();
    assert_eq!(v["pinned"], true);
    assert_eq!(v["state"], "pinned");
    assert!(d.audit().iter().any(|r| r["guest"] == "api1"
        && r["reason"]["reason"] == "manual"
        && r["result"] == "applied"));
    // unpin: autoscaling takes over again and reclaims the idle memory
    let (c, _) = post("/v1/guests/api1/unpin", None, ok);
    assert_eq!(c, 200);
    d.wait_until("shrunk after unpin", 90, || g.current_mib() < 1024);
    let (c, _) = post("/v1/guests/api1/pin", None, ok);
    assert_eq!(c, 200);
    d.wait_until("pinned again", 10, || {
        d.guest("api1").is_some_and(|v| v["pinned"] == true)
    });
    // the CLI talks to the same API
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_memscale"))
            .args(args)
            .output()
            .expect("memscale")
    };
    let api = format!("127.0.0.1:{}", d.port);
    d.wait_until("the shrink in flight to land", 60, || {
        d.guest("api1").is_some_and(|v| v["state"] == "pinned")
    });
    let out = cli(&["status", "--api", &api]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api1") && l.contains("pinned")),
        "{table}"
    );
    let out = cli(&[
        "adjust",
        "api1",
        "--memory",
        "5GiB",
        "--api",
        &api,
        "--token-file",
        tok.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("beyond the guest's ceiling"));
    let out = cli(&[
        "unpin",
        "api1",
        "--api",
        &api,
        "--token-file",
        tok.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_until("unpinned through the CLI", 10, || {
        d.guest("api1").is_some_and(|v| v["pinned"] == false)
    });
    let m = d.request("GET", "/metrics", None, None).unwrap().1;
    assert!(
        m.contains("memscale_api_requests_total{code=\"401\",route=\"mutate\"} 2"),
        "{m}"
    );
    assert!(assert_resizes_inside_envelope(&d.audit()) >= 1);
    // Prometheus' own linter on the live exposition
    let mut lint = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by tests/testbed/install.sh");
    {
        use std::io::Write;
        lint.stdin.take().unwrap().write_all(m.as_bytes()).unwrap();
    }
    let out = lint.wait_with_output().unwrap();
    let problems = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && problems.trim().is_empty(),
        "promtool check metrics: {problems}"
    );
}
