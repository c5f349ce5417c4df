//! The API: raw bytes on a connection, as a client could send them, through the real HTTP
//! server and request handling of a daemon with a token and no hosts. Never a panic; the
//! daemon's state (pins, proposals) changes only for a request that carries the token.
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let config = memscale::config::Config::default();
    let set = memscale::policy::PolicySet::new(vec![], vec![], 1);
    let mut shared = memscale::daemon::Shared::new(config, set, &[]).expect("shared");
    shared.api_token = Some("fuzz-token".into());
    // The fuzz loop catches panics; these are only read through `Arc` and the runtime.
    let shared = std::panic::AssertUnwindSafe(Arc::new(shared));
    let rt = std::panic::AssertUnwindSafe(rt);
    afl::fuzz!(|data: &[u8]| {
        let s = shared.clone();
        rt.block_on(async move {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let task = tokio::spawn(memscale::api::serve_stream(s.clone(), server));
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(200),
                client.read_to_end(&mut out),
            )
            .await;
            task.abort();
            let token_sent = data.windows(10).any(|w| w == b"fuzz-token");
            if !token_sent {
                assert!(
                    s.pins.read().map(|p| p.is_empty()).unwrap_or(true),
                    "pinned without the token"
                );
            }
        });
    });
}
