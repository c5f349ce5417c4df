//! The tasks that keep memscale's view of OpenStack and OpenStack's view of memscale true, off
//! the control loop (issue 19): live flavors read from nova-api into the flavor cache the host
//! loops read, and what the guests hold beyond their flavors written to Placement.

use super::Shared;
use crate::liveflavor;
use crate::nova::Nova;
use crate::placement::{
    PlacementConfig, PlacementError, beyond_flavors_mib, consumer_uuid, provider_uuid,
    should_write, write,
};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Fetch the flavors the guests name as they come due, off the control loop, until `stop`.
pub async fn flavors(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(nova) = shared.nova.clone() else {
        return;
    };
    if !shared.flavors.enabled() {
        return;
    }
    loop {
        let due = shared.flavors.due(shared.now());
        for key in due {
            let n = nova.clone();
            let k = key.clone();
            let result = match tokio::task::spawn_blocking(move || liveflavor::fetch(&n, &k)).await
            {
                Ok(r) => r,
                Err(e) => Err(liveflavor::FlavorError::Unreachable(format!(
                    "the fetch failed: {e}"
                ))),
            };
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.name(),
            };
            shared
                .metrics
                .flavor_lookups
                .with_label_values(&[outcome])
                .inc();
            match shared.flavors.store(&key, result, shared.now()) {
                liveflavor::Transition::Live => {
                    tracing::info!(flavor = %key, "envelopes of this flavor's guests come from nova-api")
                }
                liveflavor::Transition::Changed => {
                    tracing::info!(flavor = %key, "flavor changed in nova-api: its guests get new envelopes")
                }
                liveflavor::Transition::Fallback(e) => {
                    tracing::warn!(flavor = %key, error = e.name(), reason = %e, "envelopes of this flavor's guests come from the domain metadata")
                }
                liveflavor::Transition::Unchanged => {}
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// Per host, what the task last wrote.
#[derive(Default)]
struct Track {
    /// MiB held and when written (None: not written since the start).
    last: Option<(u64, f64)>,
    /// When the last attempt was made (a failure is tried again after the interval).
    tried: f64,
    provider_uuid: Option<String>,
    error_name: Option<&'static str>,
}

/// Keep each managed host's allocation true until `stop`, then delete them (a clean stop).
pub async fn placement(shared: Arc<Shared>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let Some(nova) = shared.nova.clone() else {
        return;
    };
    let Some(cfg) = shared
        .config
        .nova
        .as_ref()
        .and_then(|n| n.placement.clone())
    else {
        return;
    };
    let hosts: Vec<(String, String)> = shared
        .config
        .hosts
        .iter()
        .filter(|h| h.manage)
        .map(|h| (h.label(), h.provider_name()))
        .collect();
    let mut track: BTreeMap<String, Track> = BTreeMap::new();
    loop {
        if *shared.ready.borrow() {
            for (label, provider) in &hosts {
                let want = {
                    let views = shared.hosts.read().unwrap_or_else(|p| p.into_inner());
                    match views.get(label) {
                        Some(v) if v.connected && v.acting => beyond_flavors_mib(&v.guests),
                        _ => continue,
                    }
                };
                let now = shared.now();
                let t = track.entry(label.clone()).or_default();
                if !should_write(t.last, want, now, &cfg) || now - t.tried < cfg.interval_seconds {
                    set_status(&shared, label, provider, t, want, None);
                    continue;
                }
                t.tried = now;
                let result = sync(&nova, &cfg, provider, t.provider_uuid.clone(), want).await;
                note(&shared, label, provider, t, want, result);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    // A clean stop: nothing is held for guests memscale no longer sizes.
    for (label, provider) in &hosts {
        let t = track.entry(label.clone()).or_default();
        let result = sync(&nova, &cfg, provider, t.provider_uuid.clone(), 0).await;
        match &result {
            Ok(_) => {
                tracing::info!(host = %label, provider = %provider, "placement: memscale's allocation deleted")
            }
            Err(e) => {
                tracing::warn!(host = %label, provider = %provider, error = e.name(), reason = %e, "placement: memscale's allocation could not be deleted at stop; the next start overwrites it")
            }
        }
        note(&shared, label, provider, t, 0, result);
    }
}

/// Find the provider (once) and write; blocking calls off the runtime.
async fn sync(
    nova: &Arc<Nova>,
    cfg: &PlacementConfig,
    provider: &str,
    known: Option<String>,
    mib: u64,
) -> Result<String, PlacementError> {
    let (n, c, p) = (nova.clone(), cfg.clone(), provider.to_string());
    tokio::task::spawn_blocking(move || {
        let uuid = match known {
            Some(u) => u,
            None => provider_uuid(&n, &p)?,
        };
        write(&n, &c, &consumer_uuid(&p), &uuid, mib)?;
        Ok(uuid)
    })
    .await
    .unwrap_or_else(|e| {
        Err(PlacementError::Unreachable(format!(
            "the write failed: {e}"
        )))
    })
}

fn note(
    shared: &Shared,
    label: &str,
    provider: &str,
    t: &mut Track,
    want: u64,
    result: Result<String, PlacementError>,
) {
    let m = &shared.metrics;
    match result {
        Ok(uuid) => {
            let outcome = if want == 0 { "deleted" } else { "ok" };
            m.placement_writes
                .with_label_values(&[label, outcome])
                .inc();
            m.placement_held
                .with_label_values(&[label])
                .set(want as i64);
            if t.error_name.is_some() || t.last.is_none() {
                tracing::info!(host = %label, provider = %provider, held_mib = want, "placement: memscale's allocation written");
            }
            t.provider_uuid = Some(uuid);
            t.last = Some((want, shared.now()));
            t.error_name = None;
            set_status(shared, label, provider, t, want, None);
        }
        Err(e) => {
            m.placement_writes
                .with_label_values(&[label, e.name()])
                .inc();
            if t.error_name != Some(e.name()) {
                tracing::warn!(host = %label, provider = %provider, error = e.name(), reason = %e, wanted_mib = want, "placement: memscale's allocation not written; tried again");
            }
            if matches!(e, PlacementError::NoProvider(_)) {
                t.provider_uuid = None;
            }
            t.error_name = Some(e.name());
            set_status(shared, label, provider, t, want, Some(&e));
        }
    }
}

fn set_status(
    shared: &Shared,
    label: &str,
    provider: &str,
    t: &Track,
    want: u64,
    err: Option<&PlacementError>,
) {
    let mut all = shared.placement.lock().unwrap_or_else(|p| p.into_inner());
    let s = all.entry(label.to_string()).or_default();
    s.provider = provider.to_string();
    s.provider_uuid.clone_from(&t.provider_uuid);
    s.consumer = consumer_uuid(provider);
    s.held_mib = t.last.map(|l| l.0);
    s.wanted_mib = want;
    s.last_write = t.last.map(|l| l.1);
    if let Some(e) = err {
        s.error = Some(e.to_string());
        s.error_name = Some(e.name());
    } else if t.error_name.is_none() {
        s.error = None;
        s.error_name = None;
    }
}
