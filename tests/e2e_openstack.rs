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

/// A call to an OpenStack service as admin: status and JSON body. A 503 is tried again for
/// a while: just after the services start, their token middleware may not reach Keystone yet
/// ("The Keystone service is temporarily unavailable").
fn os_call(
    token: &str,
    microversion: &str,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    for _ in 0..30 {
        let r = os_call_once(token, microversion, method, url, body.clone());
        if r.0 != 503 {
            return r;
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    os_call_once(token, microversion, method, url, body)
}

fn os_call_once(
    token: &str,
    microversion: &str,
    method: &str,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let a = agent();
    let r = match (method, body) {
        ("POST", Some(b)) => a
            .post(url)
            .header("X-Auth-Token", token)
            .header("OpenStack-API-Version", microversion)
            .send_json(&b),
        ("PUT", Some(b)) => a
            .put(url)
            .header("X-Auth-Token", token)
            .header("OpenStack-API-Version", microversion)
            .send_json(&b),
        ("DELETE", _) => a
            .delete(url)
            .header("X-Auth-Token", token)
            .header("OpenStack-API-Version", microversion)
            .call(),
        _ => a
            .get(url)
            .header("X-Auth-Token", token)
            .header("OpenStack-API-Version", microversion)
            .call(),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let code = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A TCP forwarder to nova-api that can be taken down: memscale reaches nova-api through it,
/// and "nova-api cannot be reached" is this port refusing, while the real nova-api stays up
/// for everything else.
struct Forward {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Forward {
    fn to(target: &str) -> Forward {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (d, target) = (down.clone(), target.to_string());
        std::thread::spawn(move || {
            let mut listener = Some(listener);
            loop {
                if d.load(Ordering::SeqCst) {
                    // Closed: connections are refused until it is opened again.
                    listener = None;
                } else if listener.is_none() {
                    listener = std::net::TcpListener::bind(("127.0.0.1", port)).ok();
                    if let Some(l) = &listener {
                        l.set_nonblocking(true).expect("nonblocking");
                    }
                }
                match listener.as_ref().map(|l| l.accept()) {
                    Some(Ok((inbound, _))) => {
                        inbound.set_nonblocking(false).expect("blocking");
                        let Ok(outbound) = std::net::TcpStream::connect(&target) else {
                            continue;
                        };
                        let pipe = |mut a: std::net::TcpStream, mut b: std::net::TcpStream| {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut a, &mut b);
                                let _ = b.shutdown(std::net::Shutdown::Both);
                            });
                        };
                        pipe(
                            inbound.try_clone().expect("clone"),
                            outbound.try_clone().expect("clone"),
                        );
                        pipe(outbound, inbound);
                    }
                    _ => std::thread::sleep(std::time::Duration::from_millis(20)),
                }
            }
        });
        Forward { port, down }
    }
    fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Issue 19, live flavor envelopes and Placement kept true, against the real nova-api and
/// Placement: a flavor's `hw:mem_max_mb` raised in nova-api reaches a running guest naming
/// that flavor (by id) without a restart, and the guest is grown past the old ceiling; what it
/// holds beyond its flavor's RAM shows on its host's resource provider, goes back after a
/// shrink, and is gone after a clean stop; nova-api unreachable: the domain metadata, said in
/// status; a stale allocation is overwritten at the next start.
#[test]
fn live_flavor_envelopes_and_placement_kept_true() {
    let t0 = std::time::Instant::now();
    let step = |what: &str| eprintln!("[{:6.1} s] {what}", t0.elapsed().as_secs_f64());
    let os = openstack();
    step("openstack up");
    let demo = os["MEMSCALE_OS_DEMO_PROJECT"].clone();
    let admin = token(&os, "admin", "admin");
    let nova = os["MEMSCALE_OS_NOVA"].clone();
    let placement = os["MEMSCALE_OS_PLACEMENT"].clone();
    let nv = |m: &str, p: &str, b: Option<Value>| {
        os_call(&admin, "compute 2.61", m, &format!("{nova}{p}"), b)
    };
    let pl = |m: &str, p: &str, b: Option<Value>| {
        os_call(&admin, "placement 1.28", m, &format!("{placement}{p}"), b)
    };

    // The flavor, made afresh in nova-api: 512 MiB, hot-add up to 768.
    let fid = "memscale-e2e-live";
    let (c, v) = nv("DELETE", &format!("/flavors/{fid}"), None);
    assert!(c == 202 || c == 404, "delete the old flavor: {c} {v}");
    let (c, v) = nv(
        "POST",
        "/flavors",
        Some(json!({"flavor": {"name": "m1.live", "id": fid, "ram": 512, "vcpus": 1, "disk": 1}})),
    );
    assert_eq!(c, 200, "create the flavor: {v}");
    // Microversion 2.61: Zed checks extra specs it knows only from 2.86, and knows no
    // hw:mem_max_mb.
    let set_max = |mb: &str| {
        let (c, v) = nv(
            "POST",
            &format!("/flavors/{fid}/os-extra_specs"),
            Some(json!({"extra_specs": {"hw:mem_max_mb": mb}})),
        );
        assert_eq!(c, 200, "set hw:mem_max_mb: {v}");
    };
    set_max("768");
    step("flavor made");

    // The host's compute node provider, as nova-compute would register it (none runs here).
    let h = Host::up("oslv", 63);
    step("host up");
    let (c, v) = pl("GET", "/resource_providers?name=oslv", None);
    assert_eq!(c, 200, "{v}");
    let rp = match v["resource_providers"][0]["uuid"].as_str() {
        Some(u) => u.to_string(),
        None => {
            let (c, v) = pl("POST", "/resource_providers", Some(json!({"name": "oslv"})));
            assert_eq!(c, 200, "create the provider: {v}");
            v["uuid"].as_str().expect("uuid").to_string()
        }
    };
    let (_, v) = pl("GET", &format!("/resource_providers/{rp}"), None);
    let (c, v) = pl(
        "PUT",
        &format!("/resource_providers/{rp}/inventories"),
        Some(json!({
            "resource_provider_generation": v["generation"],
            "inventories": {"MEMORY_MB": {"total": 16384}},
        })),
    );
    assert_eq!(c, 200, "the provider's inventory: {v}");
    let used = || {
        let (c, v) = pl("GET", &format!("/resource_providers/{rp}/usages"), None);
        assert_eq!(c, 200, "{v}");
        v["usages"]["MEMORY_MB"].as_u64().unwrap_or(0)
    };

    // The guest: Nova's metadata copy says 512 up to 768; its devices reach 1024.
    let g = h.guest(
        "oslive1",
        &[
            "--mem",
            "512",
            "--vmem",
            "512",
            "--stats-period",
            "1",
            "--nova",
            "m1.live:512:768",
            "--nova-flavor-id",
            fid,
            "--nova-project-id",
            &demo,
        ],
    );
    g.wait_boot();
    step("guest booted");
    let fwd = Forward::to(
        nova.trim_start_matches("http://")
            .split('/')
            .next()
            .expect("host:port"),
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("nova-password");
    std::fs::write(&pw, format!("{}\n", os["MEMSCALE_OS_PASSWORD"])).unwrap();
    let cfg = format!(
        "interval = \"1s\"\n[nova]\nauth_url = \"{}\"\nusername = \"memscale\"\npassword_file = \"{}\"\nproject_name = \"service\"\ncompute_url = \"http://127.0.0.1:{}/v2.1\"\nflavor_ttl_seconds = 2\n[nova.placement]\nproject_id = \"{demo}\"\nuser_id = \"memscale\"\ninterval_seconds = 1\n",
        os["MEMSCALE_OS_KEYSTONE"],
        pw.display(),
        fwd.port,
    );
    let mut d = Daemon::start(&[&h], &[], &cfg, &[]);
    step("daemon started");
    let ceiling = |d: &Daemon| {
        d.guest("oslive1")
            .map(|v| mib(&v["envelope"]["ceiling"]))
            .unwrap_or(0)
    };
    let source = |d: &Daemon| {
        d.guest("oslive1")
            .map(|v| {
                v["envelope_source"]["source"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default()
    };
    d.wait_until("oslive1's envelope from nova-api", 120, || {
        source(&d) == "nova-api" && ceiling(&d) == 768
    });
    step("oslive1s envelope from nova-api");
    let uuid = d.guest("oslive1").unwrap()["uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let adjust = |d: &Daemon, mb: u64| {
        compute(
            d,
            "POST",
            &format!("/compute/v2.1/os-xloud-adjust/{uuid}"),
            Some(&admin),
            Some(json!({"xloud_adjust": {"current_memory_mb": mb}})),
        )
    };
    let (c, v) = adjust(&d, 1024);
    assert_eq!(
        (c, name_of(&v).as_str()),
        (400, "beyond_flavor_maximum"),
        "768 is the ceiling before the flavor changes: {v}"
    );

    // The operator raises the flavor's maximum: the running guest gets it, no restart.
    set_max("1024");
    d.wait_until(
        "oslive1's ceiling raised to 1024 MiB by nova-api",
        60,
        || ceiling(&d) == 1024,
    );
    step("oslive1s ceiling raised to 1024 MiB by nova-api");
    let (c, v) = adjust(&d, 1024);
    assert_eq!(c, 202, "past the old ceiling: {v}");
    d.wait_until(
        "oslive1 grown to 1024 MiB (libvirt's balloon.current)",
        90,
        || g.current_mib() == 1024,
    );
    step("oslive1 grown to 1024 MiB (libvirts balloon.current)");
    assert_eq!(g.vmem_requested_mib(), 512, "through its virtio-mem device");

    // Placement: 512 MiB beyond the flavor, held by memscale's consumer on the provider.
    d.wait_until("512 MiB more used on oslv's provider", 60, || used() == 512);
    step("512 MiB more used on oslvs provider");
    let st = d.host_status("oslv");
    let consumer = st["placement"]["consumer"]
        .as_str()
        .expect("the consumer in status")
        .to_string();
    assert_eq!(st["placement"]["provider_uuid"], rp.as_str(), "{st}");
    let (_, v) = pl("GET", &format!("/allocations/{consumer}"), None);
    assert_eq!(
        v["allocations"][&rp]["resources"]["MEMORY_MB"], 512,
        "memscale's own consumer holds it: {v}"
    );
    let (c, v) = adjust(&d, 512);
    assert_eq!(c, 202, "{v}");
    d.wait_until("the provider's use back after the shrink", 90, || {
        used() == 0
    });
    step("the providers use back after the shrink");
    let (c, v) = adjust(&d, 1024);
    assert_eq!(c, 202, "{v}");
    d.wait_until("512 MiB used again", 90, || used() == 512);
    step("512 MiB used again");
    assert!(
        d.metric("memscale_placement_writes_total{host=\"oslv\",outcome=\"ok\"}")
            .is_some_and(|n| n >= 2.0),
        "the writes are counted"
    );
    assert_eq!(
        d.metric("memscale_placement_held_mib{host=\"oslv\"}"),
        Some(512.0)
    );
    assert!(
        d.metric("memscale_flavor_lookups_total{outcome=\"ok\"}")
            .is_some_and(|n| n >= 2.0),
        "the flavor reads are counted"
    );

    // Killed and started again while the guest is past its metadata's 768 MiB: it waits for
    // nova-api's first answer rather than being cut to the boot-time copy meanwhile.
    let killed = now();
    d.kill_and_restart();
    d.wait_until(
        "oslive1's envelope from nova-api after the restart",
        60,
        || source(&d) == "nova-api" && ceiling(&d) == 1024,
    );
    step("restarted: the live flavor again");
    let cut: Vec<Value> = d
        .audit()
        .into_iter()
        .filter(|r| {
            r["guest"] == "oslive1"
                && r["time"].as_f64().unwrap_or(0.0) >= killed
                && r["kind"] != "hold"
                && bytes(&r["after"]) < 1024 << 20
        })
        .collect();
    assert!(cut.is_empty(), "cut after the restart: {cut:?}");
    assert_eq!(g.current_mib(), 1024, "still 1024 MiB");

    // A malformed spec: named (flavor and key), and the metadata is used until it is fixed.
    set_max("lots");
    d.wait_until("a malformed hw:mem_max_mb named", 60, || {
        d.guest("oslive1").is_some_and(|v| {
            v["envelope_source"]["error_name"] == "bad_flavor_spec"
                && v["envelope_source"]["source"] == "domain-metadata"
        })
    });
    step("a malformed spec named");
    let v = d.guest("oslive1").unwrap();
    let why = v["envelope_source"]["error"].as_str().unwrap_or("");
    assert!(
        why.contains("m1.live") && why.contains("hw:mem_max_mb") && why.contains("lots"),
        "{v}"
    );
    assert_eq!(
        mib(&v["envelope"]["ceiling"]),
        768,
        "the metadata's ceiling: {v}"
    );
    set_max("1024");
    d.wait_until("back on nova-api once the spec is fixed", 60, || {
        source(&d) == "nova-api" && ceiling(&d) == 1024
    });
    step("back on nova-api");

    // nova-api unreachable: the domain metadata, with the named error, in both statuses.
    fwd.set_down(true);
    d.wait_until("oslive1's envelope from its domain metadata", 60, || {
        source(&d) == "domain-metadata" && ceiling(&d) == 768
    });
    step("oslive1s envelope from its domain metadata");
    let v = d.guest("oslive1").unwrap();
    assert_eq!(
        v["envelope_source"]["error_name"], "nova_unreachable",
        "{v}"
    );
    assert!(v["envelope_source"]["since"].as_f64().is_some(), "{v}");
    let (c, v) = compute(
        &d,
        "GET",
        &format!("/compute/v2.1/servers/{uuid}/xloud-status"),
        Some(&admin),
        None,
    );
    assert_eq!(c, 200, "{v}");
    assert_eq!(
        v["xloud_status"]["envelope_source"], "domain-metadata",
        "{v}"
    );
    assert_eq!(v["xloud_status"]["max_memory_mb"], 768, "{v}");
    assert!(
        d.log_text().contains("nova_unreachable"),
        "the fallback is logged by name"
    );
    assert!(
        d.metric("memscale_flavor_lookups_total{outcome=\"nova_unreachable\"}")
            .is_some_and(|n| n >= 1.0)
    );

    // A clean stop (SIGTERM) takes memscale's allocation away.
    d.signal(libc::SIGTERM);
    let _ = d.child.wait();
    step("memscale stopped");
    assert_eq!(used(), 0, "nothing held after memscale stopped");
    let (_, v) = pl("GET", &format!("/allocations/{consumer}"), None);
    assert_eq!(v["allocations"], json!({}), "{v}");

    // A stale allocation, as a killed daemon leaves one: the next start overwrites it.
    let (c, v) = pl(
        "PUT",
        &format!("/allocations/{consumer}"),
        Some(json!({
            "allocations": {&rp: {"resources": {"MEMORY_MB": 3000}}},
            "consumer_generation": null, "project_id": demo, "user_id": "memscale",
        })),
    );
    assert_eq!(c, 204, "the stale allocation: {v}");
    assert_eq!(used(), 3000);
    fwd.set_down(false);
    d.restart();
    step("memscale started again");
    d.wait_until("the stale allocation reconciled", 90, || {
        let st = d.host_status("oslv");
        let held = st["placement"]["held_mib"].as_u64();
        held.is_some() && held == Some(used()) && used() != 3000
    });
    step("the stale allocation reconciled");
    d.signal(libc::SIGTERM);
    let _ = d.child.wait();
    assert_eq!(used(), 0);
    let _ = nv("DELETE", &format!("/flavors/{fid}"), None);
    step("done");
}
