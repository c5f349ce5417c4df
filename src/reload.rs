//! Live policy reload: SIGHUP and a watcher on the policy directory send the same request; the
//! new set is validated whole and swapped, or refused with the old one kept.

use crate::daemon::Shared;
use notify::{RecursiveMode, Watcher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

pub async fn watch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel::<&'static str>(16);
    let txw = tx.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && !ev.kind.is_access()
        {
            let _ = txw.try_send("file change");
        }
    });
    match &mut watcher {
        Ok(w) => {
            if let Err(e) = w.watch(&shared.config.policies, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %shared.config.policies.display(), error = %e, "cannot watch the policy directory; SIGHUP still reloads");
            }
        }
        Err(e) => tracing::warn!(error = %e, "no file watcher; SIGHUP still reloads"),
    }
    let hup = tx.clone();
    let hup_shared = shared.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut s) = signal(SignalKind::hangup()) {
            while s.recv().await.is_some() {
                // logrotate's postrotate sends SIGHUP once it has renamed the audit log.
                if let Err(e) = hup_shared.audit.reopen() {
                    tracing::warn!(path = ?hup_shared.config.audit_log, error = %e, "cannot reopen the audit log; still writing to the file open before");
                }
                let _ = hup.send("SIGHUP").await;
            }
        }
    });
    loop {
        tokio::select! {
            Some(why) = rx.recv() => {
                // Editors save in several steps: let the burst settle, then reload once.
                tokio::time::sleep(Duration::from_millis(300)).await;
                while rx.try_recv().is_ok() {}
                tracing::info!(trigger = why, "reloading policies");
                shared.reload_policies();
                if why == "SIGHUP" {
                    let refused = shared.config_changes_needing_restart();
                    for r in &refused {
                        tracing::warn!("{r}");
                    }
                    shared.policy_status.write().unwrap_or_else(|p| p.into_inner()).config_refused = refused;
                }
            }
            _ = stop.changed() => if *stop.borrow() { return },
        }
    }
}
