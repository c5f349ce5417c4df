//! Stage 5, publish: what the API, `/metrics` and the state file read of this host, written
//! once a tick from the guests' controllers (read only here).

use super::{Host, Shared};
use crate::control::Guest;
use crate::daemon::{GuestView, HostView};
use crate::hypervisor::GuestStats;
use crate::units::Bytes;

/// The end of every answered tick: guests gone are forgotten, the state file's snapshots
/// taken (every few seconds), the views published.
pub(super) fn finish(host: &mut Host, shared: &Shared, seen: &[String], now: f64) {
    forget_gone(host, shared, seen);
    snapshot(host, shared, now);
    publish(host, shared, now);
}

/// Capture each guest's planner memory for the state file, every few seconds.
fn snapshot(host: &mut Host, shared: &Shared, now: f64) {
    if now - host.last_snapshot < 4.0 {
        return;
    }
    host.last_snapshot = now;
    let mut snaps = shared.snapshots.lock().unwrap_or_else(|p| p.into_inner());
    for (uuid, g) in &host.guests {
        match snaps.get_mut(uuid) {
            Some(st) => g.capture_into(st),
            None => {
                snaps.insert(uuid.clone(), g.capture());
            }
        }
    }
}

fn forget_gone(host: &mut Host, shared: &Shared, seen: &[String]) {
    if seen.len() == host.guests.len() {
        // Every guest known was seen (the map is keyed by what was seen): nothing is gone.
        return;
    }
    let seen: std::collections::HashSet<&str> = seen.iter().map(String::as_str).collect();
    let gone: Vec<String> = host
        .guests
        .keys()
        .filter(|u| !seen.contains(u.as_str()))
        .cloned()
        .collect();
    for u in gone {
        if let Some(g) = host.guests.remove(&u) {
            tracing::info!(host = %host.label, guest = %g.name, "guest gone");
            shared
                .snapshots
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&u);
        }
    }
}

/// `to` becomes a copy of `from`, in the string it holds if it holds one.
fn set_text(to: &mut Option<String>, from: Option<&String>) {
    match (to, from) {
        (Some(t), Some(f)) => t.clone_from(f),
        (to, f) => *to = f.cloned(),
    }
}

/// Publish the host's view for the API and `/metrics`. The views are written into those of
/// the tick before last (`spare_views`), so their strings and vectors are reused rather than
/// allocated afresh for every guest every tick, and built in name order rather than sorted.
pub(super) fn publish(host: &mut Host, shared: &Shared, now: f64) {
    let m = &shared.metrics;
    let policies = shared.policy_set();
    let mut spare = std::mem::take(&mut host.spare_views);
    let mut guests = Vec::with_capacity(host.guests.len());
    let mut committed = Bytes(0);
    let mut order: Vec<&mut Guest> = host.guests.values_mut().collect();
    order.sort_unstable_by(|a, b| a.name.cmp(&b.name).then_with(|| a.uuid.cmp(&b.uuid)));
    for g in order {
        let pol = g.policy(&policies);
        let env = g.limited_envelope(pol).map(|e| (*e).clone());
        let st: Option<&GuestStats> = g.stats.as_ref();
        let nova = g.spec.as_ref().and_then(|s| s.nova.as_ref());
        let reading = g.size_reading();
        let current = reading.believed;
        committed = committed
            + g.pending
                .as_ref()
                .map(|p| p.target.max(current))
                .unwrap_or(current);
        let target = g
            .pending
            .as_ref()
            .map(|p| p.target)
            .or(g.last.as_ref().map(|d| d.target))
            .unwrap_or(current);
        let total = st.and_then(|s| s.guest.total);
        let avail = st.and_then(|s| s.guest.usable);
        let used = match (total, avail) {
            (Some(t), Some(a)) => Some(t.saturating_sub(a.min(t))),
            _ => None,
        };
        let mut view = spare.pop().unwrap_or_else(GuestView::blank);
        view.name.clone_from(&g.name);
        view.uuid.clone_from(&g.uuid);
        view.host.clone_from(&host.label);
        view.state = g.health;
        view.current = current;
        view.target = target;
        view.can_grow = env.as_ref().is_some_and(|e| e.can_grow(current));
        match &env {
            Some(e) => view.notes.clone_from(&e.notes),
            None => view.notes.clear(),
        }
        view.envelope = env;
        set_text(&mut view.envelope_error, g.envelope.as_ref().err());
        view.policy.clone_from(&pol.name);
        view.total = total;
        view.available = avail;
        view.free = st.and_then(|s| s.guest.unused);
        view.caches = st.and_then(|s| s.guest.disk_caches);
        view.used = used;
        view.stats_age_seconds = g.stats_age(now);
        view.rss = st.and_then(|s| s.rss);
        view.pinned = g.pinned;
        match (&mut view.why, &g.last) {
            (Some(w), Some(d)) => {
                use std::fmt::Write;
                w.clear();
                let _ = write!(w, "{}", d.reason);
            }
            (w, d) => *w = d.as_ref().map(|d| d.reason.to_string()),
        }
        view.last_decision.clone_from(&g.last);
        view.bad_stats = g.hostile;
        view.rss_capped = g.rss_capped;
        view.claimed_size = reading.claimed;
        view.size_dispute = g.size_dispute;
        set_text(&mut view.flavor, nova.and_then(|n| n.flavor_name.as_ref()));
        view.flavor_memory = nova.and_then(|n| n.memory);
        view.envelope_source.clone_from(&g.flavor_origin);
        set_text(&mut view.project, nova.and_then(|n| n.project.as_ref()));
        set_text(
            &mut view.project_id,
            nova.and_then(|n| n.project_id.as_ref()),
        );
        match g.spec.as_ref() {
            Some(s) => view.tags.clone_from(&s.tags),
            None => view.tags.clear(),
        }
        view.vcpus = g
            .spec
            .as_ref()
            .map(|s| crate::envelope::Vcpus::from_spec(s, g.inactive.as_ref()));
        guests.push(view);
    }
    let capacity = host.capacity.unwrap_or_default();
    let hb = |k: &str, v: Bytes| {
        m.host_bytes
            .with_label_values(&[&host.label, k])
            .set(v.0 as f64)
    };
    hb("capacity", capacity);
    hb("reserve", host.cfg.reserve);
    hb("committed", committed);
    hb("deficit", host.deficit);
    m.host_over_capacity
        .with_label_values(&[&host.label])
        .set(host.over_capacity.0 as f64);
    m.host_connected
        .with_label_values(&[&host.label])
        .set(i64::from(host.connected));
    hb(
        "free",
        capacity
            .saturating_sub(host.cfg.reserve)
            .saturating_sub(committed),
    );
    let view = HostView {
        name: host.label.clone(),
        uri: host.cfg.uri.clone(),
        connected: host.connected,
        last_error: host.last_error.clone(),
        capacity,
        reserve: host.cfg.reserve,
        committed,
        deficit: host.deficit,
        over_capacity: host.over_capacity,
        node_available: host.node.map(|n| n.available()),
        acting: host.acting,
        standby: host.standby.clone(),
        grow_only: host.grow_only,
        last_tick: now,
        guests,
    };
    let previous = shared
        .hosts
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(host.label.clone(), view);
    // Dropped outside the lock; its views are the next publish's to fill.
    host.spare_views = previous.map(|v| v.guests).unwrap_or_default();
}
