//! The API in process: requests as bytes through the real HTTP server (`serve_stream`) on an
//! in-memory connection, against a daemon's shared state with one published host and no
//! hypervisor. No root, no libvirt; `tests/e2e_api.rs` shows the same API on real guests.

use super::serve_stream;
use crate::config::Config;
use crate::control::Health;
use crate::daemon::Shared;
use crate::policy::PolicySet;
use crate::units::Bytes;
use crate::view::{GuestView, HostView, Proposal};
use serde_json::Value;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "t0ken";

/// A daemon's shared state with guests `g1` (ok, no envelope) and `g2` (ok, balloon between
/// 512 MiB and 2 GiB) published on host `h`, the API token set, `edit` applied to the config.
fn daemon(edit: impl FnOnce(&mut Config)) -> Arc<Shared> {
    let mut config = Config::default();
    edit(&mut config);
    let mut s = Shared::new(config, PolicySet::new(vec![], vec![], 1), &[]).expect("shared");
    s.api_token = Some(TOKEN.into());
    let spec = crate::domain::DomainSpec {
        name: "g2".into(),
        memory: Bytes::from_mib(2048),
        current_memory: Bytes::from_mib(512),
        balloon_device: true,
        ..Default::default()
    };
    let env = crate::envelope::Envelope::from_spec(&spec, &crate::envelope::FlavorCatalog::new())
        .expect("envelope");
    let guest = |name: &str, envelope| GuestView {
        name: name.into(),
        uuid: format!("uuid-{name}"),
        host: "h".into(),
        state: Health::Ok,
        current: Bytes::from_mib(512),
        envelope,
        ..GuestView::blank()
    };
    s.hosts.write().expect("hosts").insert(
        "h".into(),
        HostView {
            name: "h".into(),
            connected: true,
            guests: vec![guest("g1", None), guest("g2", Some(env))],
            ..Default::default()
        },
    );
    Arc::new(s)
}

/// One request on its own connection; the answer's status and JSON body.
async fn call(s: &Arc<Shared>, method: &str, path: &str, token: Option<&str>) -> (u16, Value) {
    call_body(s, method, path, "", token).await
}

async fn call_body(
    s: &Arc<Shared>,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let (mut client, server) = tokio::io::duplex(1 << 16);
    let task = tokio::spawn(serve_stream(s.clone(), server));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.write_all(req.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    client.read_to_end(&mut out).await.expect("answer");
    task.abort();
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    (code, serde_json::from_str(body).expect("JSON"))
}

fn proposal(id: u64) -> Proposal {
    Proposal {
        id,
        from: "h".into(),
        guest: "g1".into(),
        to: "other".into(),
        size: Bytes::from_mib(512),
        deficit: Bytes::from_mib(128),
        proposed_at: 1.0,
        last_seen: 1.0,
        state: "proposed".into(),
        error: None,
    }
}

#[tokio::test]
async fn approving_under_dry_run_is_refused_and_the_proposal_left_as_it_was() {
    let s = daemon(|c| c.dry_run = true);
    s.proposals
        .lock()
        .expect("proposals")
        .extend([proposal(1), proposal(2)]);
    let (code, v) = call(&s, "POST", "/v1/proposals/1/approve", Some(TOKEN)).await;
    assert_eq!(code, 409, "{v}");
    let msg = v["error"].as_str().expect("an error message");
    assert!(
        msg.contains("dry-run mode") && msg.contains("nothing is moved"),
        "{msg}"
    );
    let (code, v) = call(&s, "GET", "/v1/proposals", None).await;
    assert_eq!(code, 200);
    assert_eq!(v[0]["state"], "proposed", "{v}");
    // Still refused without the token first, and a rejection moves nothing: allowed.
    assert_eq!(
        call(&s, "POST", "/v1/proposals/1/approve", None).await.0,
        401
    );
    let (code, v) = call(&s, "POST", "/v1/proposals/2/reject", Some(TOKEN)).await;
    assert_eq!((code, &v["state"]), (200, &Value::from("rejected")), "{v}");
    // Not in dry run, the same approval is taken.
    let s = daemon(|_| {});
    s.proposals.lock().expect("proposals").push(proposal(1));
    let (code, v) = call(&s, "POST", "/v1/proposals/1/approve", Some(TOKEN)).await;
    assert_eq!((code, &v["state"]), (200, &Value::from("approved")), "{v}");
}

/// Where a save writes the new generation before it renames it into place.
const TMP: &str = "state.json.tmp";

/// Make the state directory unwritable for saves, even by root: a non-empty directory stands
/// where the new generation is written (creating a file there fails whatever the permissions).
fn block(dir: &std::path::Path) {
    let tmp = dir.join(TMP);
    std::fs::create_dir(&tmp).expect("a directory in the new file's place");
    std::fs::write(tmp.join("keep"), "x").expect("not empty");
}

fn blocked_state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("dir");
    block(dir.path());
    dir
}

fn pinned(s: &Shared, guest: &str) -> bool {
    s.pins.read().expect("pins").contains(guest)
}

fn saved_pins(dir: &std::path::Path) -> Vec<String> {
    crate::state::load(dir)
        .expect("state file")
        .state
        .map(|(_, st)| st.pins)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_change_whose_save_fails_answers_500_and_is_not_kept() {
    let dir = blocked_state_dir();
    let s = daemon(|c| c.state_dir = dir.path().to_path_buf());
    let state_file = dir.path().join(crate::state::FILE).display().to_string();
    let errors = || s.metrics.state_errors.get();

    let (code, v) = call(&s, "POST", "/v1/guests/g1/pin", Some(TOKEN)).await;
    assert_eq!(code, 500, "{v}");
    let msg = v["error"].as_str().expect("an error message");
    assert!(
        msg.contains(&format!("cannot save the state file {state_file}"))
            && msg.contains("nothing changed: the pin is not kept"),
        "{msg}"
    );
    assert!(v.get("pinned").is_none(), "{v}");
    assert!(!pinned(&s, "g1"));
    assert_eq!(errors(), 1);

    let (code, v) = call_body(
        &s,
        "POST",
        "/v1/guests/g2/adjust",
        "{\"memory_mib\": 1024}",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|m| m.contains("nothing was queued and no pin is kept")),
        "{v}"
    );
    assert!(!pinned(&s, "g2"));
    assert!(s.adjusts.lock().expect("adjusts").is_empty());
    assert!(s.manual.lock().expect("manual").is_empty());

    // Once the state can be saved, the same requests are taken and saved.
    std::fs::remove_dir_all(dir.path().join(TMP)).expect("unblock");
    let (code, v) = call(&s, "POST", "/v1/guests/g1/pin", Some(TOKEN)).await;
    assert_eq!((code, &v["pinned"]), (200, &Value::from(true)), "{v}");
    let (code, v) = call_body(
        &s,
        "POST",
        "/v1/guests/g2/adjust",
        "{\"memory_mib\": 1024}",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 202, "{v}");
    assert!(pinned(&s, "g1") && pinned(&s, "g2"));
    assert_eq!(
        s.adjusts.lock().expect("adjusts").get("g2"),
        Some(&Bytes::from_mib(1024))
    );
    assert_eq!(saved_pins(dir.path()), ["g1", "g2"]);

    // An unpin that cannot be saved leaves the pin, live and saved.
    block(dir.path());
    let (code, v) = call(&s, "POST", "/v1/guests/g1/unpin", Some(TOKEN)).await;
    assert_eq!(code, 500, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|m| m.contains("nothing changed: the unpin is not kept")),
        "{v}"
    );
    assert!(pinned(&s, "g1"));
    assert_eq!(errors(), 3);
}

/// The save (which syncs the file) runs off the async runtime: while it waits, the API
/// still answers, even on a runtime of one thread. Were the save run on the runtime, the
/// status call would wait for it (the lock is let go after 10 s so the test ends either way).
#[test]
fn a_slow_save_does_not_hold_up_the_api() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().expect("dir");
    let s = daemon(|c| c.state_dir = dir.path().to_path_buf());
    let released = Arc::new(AtomicBool::new(false));
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let (s, released) = (s.clone(), released.clone());
        std::thread::spawn(move || {
            let _one = s.state_lock.lock().expect("state lock");
            locked_tx.send(()).expect("told");
            let _ = release_rx.recv_timeout(std::time::Duration::from_secs(10));
            released.store(true, Ordering::SeqCst);
        })
    };
    locked_rx.recv().expect("locked");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let pin = {
            let s = s.clone();
            tokio::spawn(async move { call(&s, "POST", "/v1/guests/g1/pin", Some(TOKEN)).await })
        };
        // Let the pin reach its save.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        let (code, _) = call(&s, "GET", "/v1/status", None).await;
        assert_eq!(code, 200);
        assert!(
            !released.load(Ordering::SeqCst),
            "the API answered only once the save could go on"
        );
        assert!(!pin.is_finished(), "the pin did not wait for its save");
        release_tx.send(()).expect("release");
        let (code, v) = pin.await.expect("pin");
        assert_eq!((code, &v["pinned"]), (200, &Value::from(true)), "{v}");
    });
    holder.join().expect("holder");
    assert_eq!(saved_pins(dir.path()), ["g1"]);
}
