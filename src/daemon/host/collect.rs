//! Stage 1, collect: one bulk stats call and the events libvirt queued since the last tick
//! come in; each guest's controller takes its record (`Guest::observe`), and a definition
//! that changed (or was never read) is read again. Nothing here resizes a guest.

use super::{Host, Shared};
use crate::control::{Guest, INACTIVE_MAX_AGE};
use crate::domain::DomainSpec;
use crate::hypervisor::{HvEvent, RunState};
use crate::planner::{EventReason, Kind, Reason};
use std::time::Duration;

/// Read the host. Returns the UUIDs of the guests it reported, in its order, or None when
/// the host did not answer (its guests are held; a lost connection backs off).
pub(super) async fn collect(
    host: &mut Host,
    shared: &Shared,
    deadline: Duration,
) -> Option<Vec<String>> {
    let stats = host.call("stats", deadline, |h| h.stats()).await;
    // After the stats call: a reconnect it made has registered its handlers already.
    take_events(host, shared);
    let stats = match stats {
        Ok(s) => s,
        Err(e) => {
            host.count_error(shared, "stats");
            if host.connected || host.last_error.as_deref() != Some(&e.to_string()) {
                tracing::error!(host = %host.label, error = %e, "cannot read stats; holding this host's guests");
            }
            host.connected = false;
            host.last_error = Some(e.to_string());
            if e.is_connection() {
                host.backoff = (host.backoff * 2).clamp(1, 30);
                host.skip = host.backoff;
            }
            return None;
        }
    };
    if !host.connected {
        tracing::info!(host = %host.label, guests = stats.len(), "connected");
        // A reconnect may follow a libvirtd restart: re-read every definition.
        for g in host.guests.values_mut() {
            g.forget_definitions();
        }
    }
    host.connected = true;
    host.last_error = None;
    host.backoff = 0;
    // The machine's own memory, for sharing's one exception: a guest may be cut below its
    // use only when the machine itself is out of memory, never on configuration alone.
    let node = host
        .call("node_memory", deadline, |h| h.node_memory())
        .await;
    match node {
        Ok(m) => {
            host.node = Some(m);
            host.node_warned = false;
        }
        Err(e) => {
            host.count_error(shared, "node_memory");
            if !host.node_warned {
                host.node_warned = true;
                tracing::warn!(host = %host.label, error = %e, "cannot read the host's memory statistics; sharing never cuts a guest below its use");
            }
            host.node = None;
        }
    }
    if host.capacity.is_none() {
        host.capacity = match host.cfg.capacity {
            Some(c) => Some(c),
            None => host
                .call("node_info", deadline, |h| h.host_memory())
                .await
                .ok(),
        };
    }
    let now = shared.now();
    let mut seen = Vec::with_capacity(stats.len());
    for s in stats {
        seen.push(s.uuid.clone());
        let uuid = s.uuid.clone();
        let g = host.guests.entry(uuid.clone()).or_insert_with(|| {
            let mut g = Guest::new(&s.name, &uuid, now);
            let saved = shared
                .restored
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&uuid);
            match saved {
                Some(st) => {
                    let kept = g.restore(&st, s.current);
                    tracing::info!(host = %host.label, guest = %s.name, samples = kept, "guest known from saved state: planner memory restored");
                }
                None => tracing::info!(host = %host.label, guest = %s.name, "new guest"),
            }
            g
        });
        let disputed = g.size_dispute;
        g.observe(s, now);
        if g.size_dispute != disputed
            && let Some(d) = g.size_dispute
        {
            let r = g.size_reading();
            let reason = Reason::Event(EventReason::SizeDisputed {
                dispute: d.label().to_string(),
                claimed: r.claimed.unwrap_or_default(),
                believed: r.believed,
            });
            let label = host.label.clone();
            super::hotplug::record(
                &label,
                shared,
                g,
                Kind::Hold,
                reason,
                "size-check",
                "reported".into(),
                now,
                None,
            );
        }
        // Its flavor changed in nova-api (or nova-api stopped or started answering): the
        // definition is read again, and the envelope made from what the cache says now.
        if let Some(o) = &g.flavor_origin
            && shared.flavors.generation(&o.flavor, now) != o.generation
        {
            g.reread_definition();
        }
        let running = g
            .stats
            .as_ref()
            .is_some_and(|s| s.state == RunState::Running);
        if g.needs_xml && running {
            refresh_definition(host, shared, &uuid, deadline).await;
        }
    }
    Some(seen)
}

/// What libvirt said since the last tick: a changed definition is re-read now rather than at
/// the next resize or after `INACTIVE_MAX_AGE`; a closed connection and the handlers'
/// registration (again after a reconnect) are logged.
pub(super) fn take_events(host: &mut Host, shared: &Shared) {
    for e in host.hv.take_events() {
        shared
            .metrics
            .events
            .with_label_values(&[&host.label, e.label()])
            .inc();
        match e {
            HvEvent::Registered => {
                tracing::info!(host = %host.label, "registered for libvirt events")
            }
            HvEvent::Closed { reason } => {
                tracing::warn!(host = %host.label, reason, "libvirtd closed the connection")
            }
            HvEvent::Lifecycle { uuid, event } => {
                if let Some(g) = host.guests.get_mut(&uuid) {
                    tracing::debug!(host = %host.label, guest = %g.name, event, "lifecycle event");
                    if !matches!(event, "suspended" | "resumed") {
                        g.forget_definitions();
                    }
                }
            }
            HvEvent::RemovalFailed { uuid, alias } => {
                super::hotplug::removal_failed(host, shared, &uuid, &alias, shared.now());
            }
        }
    }
}

async fn refresh_definition(host: &mut Host, shared: &Shared, uuid: &str, deadline: Duration) {
    let u = uuid.to_string();
    let now = shared.now();
    let read_inactive = host
        .guests
        .get(uuid)
        .is_none_or(|g| now - g.inactive_read > INACTIVE_MAX_AGE);
    let xmls = host
        .call("domain_xml", deadline, move |h| {
            let live = h.domain_xml(&u, false)?;
            // A transient guest has no persistent definition: its live one stands in.
            let inactive = if read_inactive {
                h.domain_xml(&u, true).ok()
            } else {
                None
            };
            Ok((live, inactive))
        })
        .await;
    let Some(g) = host.guests.get_mut(uuid) else {
        return;
    };
    match xmls {
        Ok((live, inactive)) => match DomainSpec::parse(&live) {
            Ok(mut spec) => {
                // None: the persistent definition was not read this time; keep the last.
                let mut inactive =
                    read_inactive.then(|| inactive.and_then(|x| DomainSpec::parse(&x).ok()));
                // Live flavors: nova-api's flavor over the copy in the metadata (both
                // definitions, so the vCPU envelope reads the same specs).
                let origin = spec
                    .nova
                    .as_mut()
                    .and_then(|n| shared.flavors.apply(n, now));
                if let Some(Some(Some(n))) = inactive
                    .as_mut()
                    .map(|i| i.as_mut().map(|i| i.nova.as_mut()))
                {
                    shared.flavors.apply(n, now);
                }
                if origin.as_ref().is_some_and(|o| o.pending) {
                    // nova-api's first answer about this flavor is on its way: the guest keeps
                    // what it has (nothing, for a new guest: held) and the definition is read
                    // again next tick, rather than sized by the boot-time copy meanwhile.
                    return;
                }
                if origin.as_ref().map(|o| (o.source, o.error_name))
                    != g.flavor_origin.as_ref().map(|o| (o.source, o.error_name))
                    && let Some(o) = &origin
                {
                    tracing::info!(host = %host.label, guest = %g.name, flavor = %o.flavor, source = o.source, error = ?o.error_name, "envelope source");
                }
                g.flavor_origin = origin;
                g.take_definitions(spec, inactive, &shared.config.flavors, now);
                if let Ok(e) = &g.envelope {
                    tracing::debug!(host = %host.label, guest = %g.name, floor = %e.floor, ceiling = %e.ceiling, "envelope");
                }
            }
            Err(e) => g.definition_unreadable(e.to_string()),
        },
        Err(e) => {
            shared
                .metrics
                .libvirt_errors
                .with_label_values(&[&host.label, "domain_xml"])
                .inc();
            tracing::warn!(host = %host.label, guest = %g.name, error = %e, "cannot read definition");
        }
    }
}
