//! The HTTP API and `/metrics`, on loopback by default. Read-only routes here; each answer is
//! JSON, each error a JSON object with an `error` message. Who may change things: `auth`;
//! the changes: `change`.

pub mod auth;
mod change;
mod xloud;

use crate::daemon::Shared;
use crate::view::GuestView;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes as HBytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

pub type Resp = Response<Full<HBytes>>;

fn json_resp(code: StatusCode, v: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(HBytes::from(v.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(code: StatusCode, msg: &str) -> Resp {
    json_resp(code, &json!({ "error": msg }))
}

fn all_guests(s: &Shared) -> Vec<GuestView> {
    crate::view::all_guests(&s.hosts.read().unwrap_or_else(|p| p.into_inner()))
}

fn find_guest(s: &Shared, name: &str) -> Option<GuestView> {
    all_guests(s)
        .into_iter()
        .find(|g| g.name == name || g.uuid == name)
}

pub fn status(s: &Shared) -> serde_json::Value {
    // A selector that matches no guest memscale knows of is most likely a typo. (Computed
    // before taking the hosts lock below: the lock is not re-entrant.)
    let set = s.policy_set();
    let guests = all_guests(s);
    let unmatched: Vec<&str> = set
        .policies
        .iter()
        .filter(|p| !guests.iter().any(|g| p.selector.matches(&g.labels())))
        .map(|p| p.name.as_str())
        .collect();
    let placement = s
        .placement
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let hosts = s.hosts.read().unwrap_or_else(|p| p.into_inner());
    let hv: Vec<serde_json::Value> = hosts
        .values()
        .map(|h| {
            json!({
                "placement": placement.get(&h.name),
                "name": h.name, "uri": h.uri, "connected": h.connected, "last_error": h.last_error,
                "capacity": h.capacity, "reserve": h.reserve, "committed": h.committed,
                "deficit": h.deficit, "over_capacity": h.over_capacity,
                "node_available": h.node_available, "acting": h.acting, "standby": h.standby, "grow_only": h.grow_only,
                "guests": h.guests.len(), "last_tick": h.last_tick,
            })
        })
        .collect();
    let pol = s
        .policy_status
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.now() - s.started,
        "ready": *s.ready.borrow(),
        "coordination": s.coord.as_ref().map(|c| json!({
            "node": c.name(), "etcd": c.config().etcd, "prefix": c.config().prefix, "session": c.live(),
        })),
        "dry_run": s.dry_run,
        "hosts": hv,
        "policies": pol,
        "unmatched_policies": unmatched,
    })
}

async fn handle(s: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    let headers = req.headers().clone();
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // Read (and bound) any body, so an oversized one is refused before anything else.
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {MAX_BODY} bytes"),
            );
        }
    };
    let (route, resp) = match (method, parts.as_slice()) {
        (Method::GET, ["metrics"]) => {
            let mut r = Response::new(Full::new(HBytes::from(
                s.metrics
                    .render(&s.hosts.read().unwrap_or_else(|p| p.into_inner())),
            )));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            ("metrics", r)
        }
        (Method::GET, ["v1", "status"]) => ("status", json_resp(StatusCode::OK, &status(&s))),
        (Method::GET, ["v1", "guests"]) => {
            ("guests", json_resp(StatusCode::OK, &json!(all_guests(&s))))
        }
        (Method::GET, ["v1", "guests", name]) => (
            "guest",
            match find_guest(&s, name) {
                Some(g) => {
                    let decisions = s.audit.recent(Some(&g.name), 50);
                    let mut v = json!(g);
                    v["decisions"] = json!(decisions);
                    json_resp(StatusCode::OK, &v)
                }
                None => error(StatusCode::NOT_FOUND, &format!("no guest named {name:?}")),
            },
        ),
        (Method::POST, ["v1", "guests", name, action @ ("adjust" | "pin" | "unpin")]) => (
            "mutate",
            change::mutate(&s, &headers, name, action, &body).await,
        ),
        (Method::POST, ["compute", "v2.1", "os-xloud-adjust", server]) => (
            "xloud_adjust",
            xloud::adjust(&s, &headers, server, &body).await,
        ),
        (Method::GET, ["compute", "v2.1", "servers", server, "xloud-status"]) => {
            ("xloud_status", xloud::status(&s, &headers, server).await)
        }
        (Method::GET, ["v1", "decisions"]) => (
            "decisions",
            json_resp(StatusCode::OK, &json!(s.audit.recent(None, 500))),
        ),
        (Method::GET, ["v1", "migrations"]) => (
            "migrations",
            json_resp(
                StatusCode::OK,
                &json!(
                    s.audit
                        .recent(None, 10_000)
                        .into_iter()
                        .filter(|r| matches!(
                            r.reason,
                            crate::planner::Reason::Event(
                                crate::planner::EventReason::Migrate { .. }
                            )
                        ))
                        .collect::<Vec<_>>()
                ),
            ),
        ),
        (Method::GET, ["v1", "proposals"]) => (
            "proposals",
            json_resp(StatusCode::OK, &json!(s.proposal_list())),
        ),
        (Method::POST, ["v1", "proposals", id, action @ ("approve" | "reject")]) => (
            "mutate",
            change::decide(&s, &headers, id, *action == "approve"),
        ),
        (_, ["metrics"])
        | (_, ["v1", "proposals"])
        | (_, ["v1", "proposals", _, "approve" | "reject"])
        | (_, ["v1", "migrations"])
        | (_, ["v1", "status"])
        | (_, ["v1", "guests"])
        | (_, ["v1", "guests", _])
        | (_, ["v1", "guests", _, "adjust" | "pin" | "unpin"])
        | (_, ["v1", "decisions"])
        | (_, ["compute", "v2.1", "os-xloud-adjust", _])
        | (_, ["compute", "v2.1", "servers", _, "xloud-status"]) => (
            "other",
            error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        ),
        _ => (
            "other",
            error(StatusCode::NOT_FOUND, &format!("no route {path:?}")),
        ),
    };
    s.metrics
        .api_requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp
}

/// Serve until shutdown.
/// Serve one connection (HTTP/1.1, keep-alive) until it closes, its headers are late, or it
/// has lived `CONNECTION_LIFETIME`. Public so the fuzzer can feed it raw bytes.
pub async fn serve_stream<S>(s: Arc<Shared>, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let s = s.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(s, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}

pub const MAX_CONNECTIONS: usize = 256;
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

pub async fn serve(
    s: Arc<Shared>,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "api listening");
    // A flood of connections (or of idle ones) cannot take the daemon's memory or threads:
    // past MAX_CONNECTIONS new ones are closed at once, and none lives longer than
    // CONNECTION_LIFETIME (headers must come within 10 s).
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged = 0.0;
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (stream, _) = match acc {
                    Ok(x) => x,
                    Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    s.metrics.api_requests.with_label_values(&["refused", "503"]).inc();
                    let now = s.now();
                    if now - refused_logged > 60.0 {
                        refused_logged = now;
                        tracing::warn!(limit = MAX_CONNECTIONS, "api: too many connections; closing new ones");
                    }
                    drop(stream);
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    serve_stream(s, stream).await;
                });
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() { return Ok(()); }
            }
        }
    }
}

#[cfg(test)]
mod tests;
