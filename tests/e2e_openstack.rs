//! End-to-end against a real OpenStack: Keystone, Placement and nova-api from Debian 12's
//! packages (`tests/testbed/openstack.sh`), real guests carrying Nova's domain metadata, and
//! the real daemon. The live-scaling guide's Compute API extension: tokens issued by Keystone
//! for admin, for the server's project and for another project, a wrong token, and each of the
//! guide's named errors.

mod common;

use common::*;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::process::Command;

/// The test bed's OpenStack, up (brought up or found running), and its settings.
fn openstack() -> HashMap<String, String> {
    install();
    let run = |script: &str, arg: &str| {
        let out = Command::new(testbed().join(script))
            .arg(arg)
            .output()
            .expect("TEST BED UNAVAILABLE: cannot run the test bed's scripts");
        assert!(
            out.status.success(),
            "TEST BED FAILED: {script} {arg}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run("install.sh", "--openstack");
    run("openstack.sh", "up");
    run("openstack.sh", "env")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(std::time::Duration::from_secs(60)))
        .build()
        .into()
}

/// A project-scoped token from Keystone for `user` in `project`.
fn token(os: &HashMap<String, String>, user: &str, project: &str) -> String {
    let body = json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"id": "default"}, "password": os["MEMSCALE_OS_PASSWORD"]}}},
        "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
    let r = agent()
        .post(format!("{}/auth/tokens", os["MEMSCALE_OS_KEYSTONE"]))
        .send_json(&body)
        .expect("keystone answers");
    assert_eq!(r.status().as_u16(), 201, "token for {user} in {project}");
    r.headers()["X-Subject-Token"]
        .to_str()
        .expect("token")
        .to_string()
}

/// A request to the daemon's compute API with `X-Auth-Token`: status and JSON body.
fn compute(
    d: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{}{path}", d.port);
    let a = agent();
    let r = match (method, body) {
        ("POST", Some(b)) => {
            let mut q = a.post(&url);
            if let Some(t) = token {
                q = q.header("X-Auth-Token", t);
            }
            q.send_json(&b)
        }
        _ => {
            let mut q = a.get(&url);
            if let Some(t) = token {
                q = q.header("X-Auth-Token", t);
            }
            q.call()
        }
    };
    let mut r = r.expect("memscale answers");
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// The named error of a refusal (`{"<fault>": {"name": ...}}`).
fn name_of(v: &Value) -> String {
    v.as_object()
        .and_then(|o| o.values().next())
        .and_then(|f| f["name"].as_str())
        .unwrap_or("")
        .to_string()
}

#[test]
fn guide_api_with_keystone_tokens_and_named_errors() {
    let os = openstack();
    let demo = os["MEMSCALE_OS_DEMO_PROJECT"].clone();
    assert!(!demo.is_empty(), "the demo project's id: {os:?}");
    let h = Host::up("ostk", 62);
    // Live-scalable: 512 MiB flavor up to 1024, 2 vCPUs up to 4 over two NUMA nodes.
    let g1 = h.guest(
        "os1",
        &[
            "--mem",
            "512",
            "--vmem",
            "512",
            "--numa",
            "2",
            "--vcpus",
            "2",
            "--max-vcpus",
            "4",
            "--acpi",
            "--stats-period",
            "1",
            "--nova",
            "m1.scal:512:1024",
            "--nova-spec",
            "hw:cpu_max_sockets=4",
            "--nova-project",
            "demo",
            "--nova-project-id",
            &demo,
        ],
    );
    // No hot-add specs on its flavor, and CPU-pinned.
    let g2 = h.guest(
        "os2",
        &[
            "--mem",
            "256",
            "--vmem",
            "0",
            "--stats-period",
            "1",
            "--nova",
            "m1.plain:256",
            "--nova-spec",
            "hw:cpu_policy=dedicated",
            "--nova-project-id",
            &demo,
        ],
    );
    // Live-scalable, but its balloon driver is not loaded.
    let g3 = h.guest(
        "os3",
        &[
            "--mem",
            "256",
            "--vmem",
            "256",
            "--stats-period",
            "1",
            "--no-balloon-driver",
            "--nova",
            "m1.scal:256:512",
            "--nova-project-id",
            &demo,
        ],
    );
    g1.wait_boot();
    g2.wait_boot();
    g3.wait_boot();
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("nova-password");
    std::fs::write(&pw, format!("{}\n", os["MEMSCALE_OS_PASSWORD"])).unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, "own-token\n").unwrap();
    let cfg = format!(
        "interval = \"1s\"\napi_token_file = \"{}\"\n[nova]\nauth_url = \"{}\"\nusername = \"memscale\"\npassword_file = \"{}\"\nproject_name = \"service\"\n",
        tok.display(),
        os["MEMSCALE_OS_KEYSTONE"],
        pw.display()
    );
    let d = Daemon::start(&[&h], &[], &cfg, &[]);
    d.wait_until("os1 ready, os3 seen without a driver", 180, || {
        d.guest("os1").is_some_and(|v| v["state"] == "ok")
            && d.guest("os3").is_some_and(|v| v["state"] == "no-driver")
            && d.guest("os2").is_some_and(|v| v["vcpus"].is_object())
    });
    let uuid = |g: &Guest| {
        d.guest(&g.name).unwrap()["uuid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (u1, u2, u3) = (uuid(&g1), uuid(&g2), uuid(&g3));
    let admin = token(&os, "admin", "admin");
    let member = token(&os, "demo", "demo");
    let other = token(&os, "other", "other");
    let adjust = |u: &str, t: Option<&str>, b: Value| {
        compute(
            &d,
            "POST",
            &format!("/compute/v2.1/os-xloud-adjust/{u}"),
            t,
            Some(b),
        )
    };
    let mem = |mb: u64| json!({"xloud_adjust": {"current_memory_mb": mb}});

    // Status: the server's envelope as the guide shows it.
    let (c, v) = compute(
        &d,
        "GET",
        &format!("/compute/v2.1/servers/{u1}/xloud-status"),
        Some(&member),
        None,
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(v["xloud_status"]["max_memory_mb"], 1024, "{v}");
    assert_eq!(v["xloud_status"]["max_vcpus"], 4, "{v}");
    assert_eq!(v["xloud_status"]["project_id"], demo.as_str());

    // Who may: no token, a wrong one, another project's; admin and the owner.
    let (c, v) = adjust(&u1, None, mem(768));
    assert_eq!((c, name_of(&v).as_str()), (401, "no_token"), "{v}");
    let (c, v) = adjust(&u1, Some("not-a-keystone-token"), mem(768));
    assert_eq!((c, name_of(&v).as_str()), (401, "bad_token"), "{v}");
    let (c, v) = adjust(&u1, Some("own-token"), mem(768));
    assert_eq!(c, 401, "memscale's own token is not a Keystone token: {v}");
    let (c, v) = adjust(&u1, Some(&other), mem(768));
    assert_eq!((c, name_of(&v).as_str()), (403, "not_your_server"), "{v}");
    let (c, v) = compute(
        &d,
        "GET",
        &format!("/compute/v2.1/servers/{u1}/xloud-status"),
        Some(&other),
        None,
    );
    assert_eq!(c, 403, "another project cannot even look: {v}");
    let (c, v) = adjust(&u1, Some(&admin), mem(768));
    assert_eq!(c, 202, "admin: {v}");
    d.wait_until("os1 at 768 MiB (admin's size)", 60, || {
        d.guest("os1").is_some_and(|v| mib(&v["target"]) == 768)
    });
    let (c, v) = adjust(&u1, Some(&member), mem(640));
    assert_eq!(c, 202, "the owning project: {v}");
    d.wait_until("os1 at 640 MiB (its owner's size)", 60, || {
        d.guest("os1").is_some_and(|v| mib(&v["target"]) == 640)
    });
    // /v1 still takes memscale's own bearer token (and not a Keystone one).
    let (c, b) = d
        .request("POST", "/v1/guests/os1/pin", None, Some(&admin))
        .expect("answer");
    assert_eq!(c, 401, "{b}");
    let (c, b) = d
        .request("POST", "/v1/guests/os1/pin", None, Some("own-token"))
        .expect("answer");
    assert_eq!(c, 200, "{b}");

    // The guide's named errors.
    let named = |u: &str, body: Value| {
        let (c, v) = adjust(u, Some(&admin), body);
        (c, name_of(&v))
    };
    assert_eq!(named(&u1, mem(2048)), (400, "beyond_flavor_maximum".into()));
    assert_eq!(
        named(&u1, json!({"xloud_adjust": {"current_vcpus": 8}})),
        (400, "beyond_flavor_maximum".into())
    );
    assert_eq!(
        named(&u1, json!({"xloud_adjust": {"current_vcpus": 3}})),
        (400, "vcpus_not_numa_even".into())
    );
    assert_eq!(named(&u1, mem(256)), (400, "below_flavor_base".into()));
    assert_eq!(named(&u2, mem(512)), (409, "no_hot_add_specs".into()));
    assert_eq!(
        named(&u2, json!({"xloud_adjust": {"current_vcpus": 2}})),
        (409, "cpu_pinned".into())
    );
    assert_eq!(named(&u3, mem(384)), (409, "no_balloon_driver".into()));
    assert_eq!(
        named("00000000-0000-0000-0000-000000000000", mem(512)),
        (404, "server_not_found".into())
    );
    assert_eq!(
        named(&u1, json!({"xloud_adjust": {}})),
        (400, "bad_request".into())
    );
    // The refusals changed nothing: os1 keeps its owner's size.
    let v = d.guest("os1").expect("os1");
    assert_eq!(mib(&v["target"]), 640, "{v}");
    assert!(
        !d.log_text().contains("memory_mib=2048") && !d.log_text().contains("vcpus=8"),
        "a refused size was queued"
    );
}
