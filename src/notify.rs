//! systemd integration: READY once every host has had its first tick (answered or found
//! unreachable: an unreachable host joins later and never holds READY back), STATUS lines, and the
//! watchdog petted only while every host loop keeps ticking (so a hung loop gets restarted).
//! Without `NOTIFY_SOCKET` (not under systemd) every call is a no-op.

use crate::daemon::Shared;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn status_line(s: &Shared) -> String {
    let hosts = s.hosts.read().unwrap_or_else(|p| p.into_inner());
    let guests: usize = hosts.values().map(|h| h.guests.len()).sum();
    let up = hosts.values().filter(|h| h.connected).count();
    format!(
        "{guests} guests on {up}/{} hosts; policy generation {}",
        hosts.len(),
        s.policy_set().generation
    )
}

pub async fn run(s: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut ready = s.ready.subscribe();
    // READY once every host has had its first tick, answered or not (`daemon::run`).
    loop {
        if *ready.borrow() {
            break;
        }
        tokio::select! {
            r = ready.changed() => if r.is_err() { return },
            _ = stop.changed() => if *stop.borrow() { return },
        }
    }
    let line = status_line(&s);
    send(&[NotifyState::Ready, NotifyState::Status(&line)]);
    let wd = sd_notify::watchdog_enabled();
    let every = wd
        .map(|d| d / 3)
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_millis(200));
    // A host loop that has not come round for this long is hung.
    let stuck_after = (s.config.interval.as_secs_f64() * 3.0).max(10.0);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => if *stop.borrow() {
                send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
                return;
            },
        }
        let now = s.now();
        let stale: Vec<String> = s
            .heartbeat
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, t)| now - **t > stuck_after)
            .map(|(h, _)| h.clone())
            .collect();
        let line = status_line(&s);
        if stale.is_empty() {
            if wd.is_some() {
                send(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
            } else {
                send(&[NotifyState::Status(&line)]);
            }
        } else {
            tracing::error!(hosts = ?stale, "host loop stuck: not petting the watchdog");
            send(&[NotifyState::Status(&format!(
                "host loop stuck: {}",
                stale.join(", ")
            ))]);
        }
    }
}
