//! Prometheus metrics: read from the daemon's state, never used to decide. Base units,
//! `memscale_` prefix, guest names as the only high-cardinality label.
//!
//! The per-guest families (most of the series: 19 a guest) are not kept in the registry:
//! they are written straight from the host views the loops publish each tick. Keeping them
//! as labelled gauges cost a hash lookup per series per tick, and the registry's gather
//! clones and sorts every label pair on each scrape (21 ms for 1,000 guests, see
//! docs/benchmarks.md); a guest that goes away takes its series with it.

use crate::view::{GuestView, HostView};
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeMap;
use std::fmt::Write;

pub struct Metrics {
    pub registry: Registry,
    pub resizes: IntCounterVec,
    pub holds: IntCounterVec,
    pub bytes_moved: IntCounterVec,
    pub loop_seconds: HistogramVec,
    pub overruns: IntCounterVec,
    pub libvirt_errors: IntCounterVec,
    pub events: IntCounterVec,
    pub host_bytes: GaugeVec,
    pub reloads: IntCounterVec,
    pub policy_generation: IntGauge,
    pub build: IntGaugeVec,
    pub api_requests: IntCounterVec,
    pub migrations: IntCounterVec,
    pub host_acting: IntGaugeVec,
    pub host_grow_only: IntGaugeVec,
    pub host_connected: IntGaugeVec,
    pub host_over_capacity: GaugeVec,
    pub state_errors: IntCounter,
    pub state_restored_from: IntGaugeVec,
    pub state_unreadable: IntGauge,
    pub up: IntCounter,
    pub flavor_lookups: IntCounterVec,
    pub placement_writes: IntCounterVec,
    pub placement_held: IntGaugeVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Names are fixed at compile time and unique, so registration cannot fail at run time.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            resizes: reg(&r, IntCounterVec::new(Opts::new("memscale_resizes_total", "Resizes by direction, method and result."), &["direction", "method", "result"]).expect("metric")),
            holds: reg(&r, IntCounterVec::new(Opts::new("memscale_holds_total", "Decisions to hold a guest, by reason (counted when the reason changes)."), &["reason"]).expect("metric")),
            bytes_moved: reg(&r, IntCounterVec::new(Opts::new("memscale_moved_bytes_total", "Memory given to (grow) or taken from (shrink) guests."), &["direction"]).expect("metric")),
            loop_seconds: reg(&r, HistogramVec::new(HistogramOpts::new("memscale_loop_duration_seconds", "Time one host's tick took.").buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]), &["host"]).expect("metric")),
            overruns: reg(&r, IntCounterVec::new(Opts::new("memscale_loop_overruns_total", "Ticks that took longer than the interval."), &["host"]).expect("metric")),
            libvirt_errors: reg(&r, IntCounterVec::new(Opts::new("memscale_libvirt_errors_total", "Failed libvirt calls by host and call."), &["host", "call"]).expect("metric")),
            events: reg(&r, IntCounterVec::new(Opts::new("memscale_libvirt_events_total", "Events libvirt sent, by host and kind: lifecycle events (defined, started, stopped, ...), removal_failed, closed (libvirtd closed the connection), registered (handlers registered on a new connection)."), &["host", "event"]).expect("metric")),
            host_bytes: reg(&r, GaugeVec::new(Opts::new("memscale_host_memory_bytes", "Host memory by kind: capacity, reserve, committed, free, deficit (what the guests need beyond capacity minus reserve)."), &["host", "kind"]).expect("metric")),
            reloads: reg(&r, IntCounterVec::new(Opts::new("memscale_policy_reloads_total", "Policy reloads by result (ok, error)."), &["result"]).expect("metric")),
            policy_generation: reg(&r, IntGauge::new("memscale_policy_generation", "Generation of the policy set in force.").expect("metric")),
            build: reg(&r, IntGaugeVec::new(Opts::new("memscale_build_info", "Always 1; the version as a label."), &["version"]).expect("metric")),
            api_requests: reg(&r, IntCounterVec::new(Opts::new("memscale_api_requests_total", "API requests by route and status code."), &["route", "code"]).expect("metric")),
            migrations: reg(&r, IntCounterVec::new(Opts::new("memscale_migrations_total", "Live migrations off a host short of memory, by source, destination and result (proposed, applied, failed)."), &["from", "to", "result"]).expect("metric")),
            state_errors: reg(&r, IntCounter::new("memscale_state_save_errors_total", "Failed writes of the state file (pins and planner memory across restarts).").expect("metric")),
            host_over_capacity: reg(&r, GaugeVec::new(Opts::new("memscale_host_over_capacity_bytes", "What the host's guests, held at their use, hold beyond its capacity minus reserve (0: they fit). Above 0 no guest is cut below its use; a move is looked for."), &["host"]).expect("metric")),
            host_connected: reg(&r, IntGaugeVec::new(Opts::new("memscale_host_connected", "1 while the host's libvirt answers; 0 while it cannot be reached (retried with back-off)."), &["host"]).expect("metric")),
            state_restored_from: reg(&r, IntGaugeVec::new(Opts::new("memscale_state_restored_from", "1 for the state file generation restored at start (current: state.json; previous: state.json.1, the current file being unreadable or missing; none: neither read), 0 for the others."), &["generation"]).expect("metric")),
            state_unreadable: reg(&r, IntGauge::new("memscale_state_unreadable_files", "State files found unreadable at start and set aside as .bad (0, 1 or 2).").expect("metric")),
            host_acting: reg(&r, IntGaugeVec::new(Opts::new("memscale_host_acting", "1 when this daemon acts for the host; 0 when it only watches it (manage = false, or another daemon holds it through etcd)."), &["host"]).expect("metric")),
            host_grow_only: reg(&r, IntGaugeVec::new(Opts::new("memscale_host_grow_only", "1 while this daemon lost its etcd lease on a host it held last: the host's guests are grown into free memory only, nothing shrinks or moves until the lease is back."), &["host"]).expect("metric")),
            up: reg(&r, IntCounter::new("memscale_ticks_total", "Host ticks run since start.").expect("metric")),
            flavor_lookups: reg(&r, IntCounterVec::new(Opts::new("memscale_flavor_lookups_total", "Flavor reads from nova-api for live envelopes, by outcome (ok, nova_unreachable, flavor_gone, bad_flavor_spec, bad_flavor_answer)."), &["outcome"]).expect("metric")),
            placement_writes: reg(&r, IntCounterVec::new(Opts::new("memscale_placement_writes_total", "Writes of memscale's MEMORY_MB allocation in Placement, by host and outcome (ok, deleted, generation_conflict, over_capacity, no_provider, refused, unreachable)."), &["host", "outcome"]).expect("metric")),
            placement_held: reg(&r, IntGaugeVec::new(Opts::new("memscale_placement_held_mib", "MiB memscale holds in Placement on the host's resource provider: what its Nova guests were given beyond their flavors' RAM, as last written."), &["host"]).expect("metric")),
            registry: r,
        };
        m.build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// The exposition: the registry's families, then the guests' from `hosts`.
    pub fn render(&self, hosts: &BTreeMap<String, HostView>) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot render metrics");
        }
        let mut out = String::from_utf8(buf).unwrap_or_default();
        render_guests(hosts, &mut out);
        out
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn label(out: &mut String, v: &str) {
    if !v.contains(['\\', '"', '\n']) {
        out.push_str(v);
        return;
    }
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// `name{guest="…",host="…"` (labels in the order the registry writes them), left open.
fn sample(out: &mut String, name: &str, g: &GuestView) {
    out.push_str(name);
    out.push_str("{guest=\"");
    label(out, &g.name);
    out.push_str("\",host=\"");
    label(out, &g.host);
    out.push('"');
}

/// The per-guest families, from the views the host loops published.
pub fn render_guests(hosts: &BTreeMap<String, HostView>, out: &mut String) {
    let guests = || hosts.values().flat_map(|h| h.guests.iter());
    if guests().next().is_none() {
        return;
    }
    let n = "memscale_guest_memory_bytes";
    family(out, n, "gauge", GUEST_BYTES_HELP);
    for g in guests() {
        let env = g.envelope.as_ref();
        let kinds = [
            ("available", g.available),
            ("caches", g.caches),
            ("ceiling", env.map(|e| e.ceiling)),
            ("current", Some(g.current)),
            ("floor", env.map(|e| e.floor)),
            ("free", g.free),
            ("target", Some(g.target)),
            ("used", g.used),
        ];
        for (k, v) in kinds {
            if let Some(v) = v {
                sample(out, n, g);
                let _ = writeln!(out, ",kind=\"{k}\"}} {}", v.0);
            }
        }
    }
    let n = "memscale_guest_stats_age_seconds";
    family(out, n, "gauge", GUEST_AGE_HELP);
    for g in guests() {
        if let Some(a) = g.stats_age_seconds {
            sample(out, n, g);
            let _ = writeln!(out, "}} {a}");
        }
    }
    let n = "memscale_guest_state";
    family(out, n, "gauge", GUEST_STATE_HELP);
    for g in guests() {
        let now = g.state.label();
        for st in STATES {
            sample(out, n, g);
            let _ = writeln!(out, ",state=\"{st}\"}} {}", u8::from(st == now));
        }
    }
    let n = "memscale_guest_size_disputed";
    family(out, n, "gauge", GUEST_DISPUTE_HELP);
    for g in guests() {
        for d in DISPUTES {
            sample(out, n, g);
            let on = g.size_dispute.is_some_and(|x| x.label() == d);
            let _ = writeln!(out, ",dispute=\"{d}\"}} {}", u8::from(on));
        }
    }
    let n = "memscale_guest_bad_stats_total";
    family(out, n, "counter", GUEST_BAD_HELP);
    for g in guests() {
        sample(out, n, g);
        let _ = writeln!(out, "}} {}", g.bad_stats);
    }
}

const DISPUTES: [&str; 3] = ["above_maximum", "below_asked", "holds_more"];
const GUEST_DISPUTE_HELP: &str = "1 when the guest's claimed size (its balloon driver's word) is not believed, by why: \
     above its maximum, below what memscale asked it to keep, or below what its process holds on the host.";

const GUEST_BYTES_HELP: &str =
    "Guest memory by kind: current, target, floor, ceiling, used, available, caches, free.";
const GUEST_AGE_HELP: &str = "Seconds since the guest last reported its memory statistics.";
const GUEST_STATE_HELP: &str = "1 for the guest's current state (ok, starting, no_driver, stale, held, pinned, resizing, not_running, no_envelope).";
const GUEST_BAD_HELP: &str = "Guest reports rejected or bounded as impossible.";

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub const STATES: [&str; 9] = [
    "ok",
    "starting",
    "no_driver",
    "stale",
    "held",
    "pinned",
    "resizing",
    "not_running",
    "no_envelope",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_registers_and_renders() {
        let m = Metrics::new();
        let mut hosts = BTreeMap::new();
        let text = m.render(&hosts);
        assert!(text.contains("memscale_build_info{version="));
        assert!(
            !text.contains("memscale_guest_state"),
            "no guest, no family"
        );
        let g = GuestView {
            name: "we\"ird\\name".into(),
            uuid: "u".into(),
            host: "h".into(),
            state: crate::control::Health::Stale,
            current: crate::units::Bytes(1 << 30),
            target: crate::units::Bytes(1 << 29),
            envelope: None,
            envelope_error: None,
            can_grow: false,
            notes: vec![],
            policy: "p".into(),
            total: None,
            available: Some(crate::units::Bytes(7)),
            free: None,
            caches: None,
            used: None,
            stats_age_seconds: Some(2.5),
            rss: None,
            pinned: false,
            last_decision: None,
            why: None,
            bad_stats: 3,
            rss_capped: false,
            claimed_size: None,
            size_dispute: None,
            flavor: None,
            flavor_memory: None,
            envelope_source: None,
            project: None,
            project_id: None,
            tags: vec![],
            vcpus: None,
        };
        hosts.insert(
            "h".to_string(),
            HostView {
                name: "h".into(),
                guests: vec![g],
                ..HostView::default()
            },
        );
        let text = m.render(&hosts);
        let lb = "guest=\"we\\\"ird\\\\name\",host=\"h\"";
        for want in [
            format!("memscale_guest_memory_bytes{{{lb},kind=\"current\"}} 1073741824"),
            format!("memscale_guest_memory_bytes{{{lb},kind=\"target\"}} 536870912"),
            format!("memscale_guest_memory_bytes{{{lb},kind=\"available\"}} 7"),
            format!("memscale_guest_stats_age_seconds{{{lb}}} 2.5"),
            format!("memscale_guest_state{{{lb},state=\"stale\"}} 1"),
            format!("memscale_guest_state{{{lb},state=\"ok\"}} 0"),
            format!("memscale_guest_bad_stats_total{{{lb}}} 3"),
            "# TYPE memscale_guest_bad_stats_total counter".to_string(),
        ] {
            assert!(text.contains(&want), "{want} in\n{text}");
        }
        // No envelope: no floor or ceiling series; unknown kinds are left out.
        assert!(!text.contains("kind=\"floor\""));
        assert!(!text.contains("kind=\"free\""));
        assert_eq!(text.matches("memscale_guest_state{").count(), STATES.len());
    }
}
