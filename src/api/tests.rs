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
