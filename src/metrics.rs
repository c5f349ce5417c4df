//! Prometheus metrics: read from the daemon's state, never used to decide. Base units,
//! `memscale_` prefix, guest names as the only high-cardinality label.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub guest_bytes: GaugeVec,
    pub guest_stats_age: GaugeVec,
    pub guest_state: IntGaugeVec,
    pub resizes: IntCounterVec,
    pub holds: IntCounterVec,
    pub bytes_moved: IntCounterVec,
    pub loop_seconds: HistogramVec,
    pub overruns: IntCounterVec,
    pub libvirt_errors: IntCounterVec,
    pub host_bytes: GaugeVec,
    pub reloads: IntCounterVec,
    pub policy_generation: IntGauge,
    pub hostile: IntCounterVec,
    pub build: IntGaugeVec,
    pub api_requests: IntCounterVec,
    pub migrations: IntCounterVec,
    pub host_acting: IntGaugeVec,
    pub state_errors: IntCounter,
    pub up: IntCounter,
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
            guest_bytes: reg(&r, GaugeVec::new(Opts::new("memscale_guest_memory_bytes", "Guest memory by kind: current, target, floor, ceiling, used, available, caches, free."), &["host", "guest", "kind"]).expect("metric")),
            guest_stats_age: reg(&r, GaugeVec::new(Opts::new("memscale_guest_stats_age_seconds", "Seconds since the guest last reported its memory statistics."), &["host", "guest"]).expect("metric")),
            guest_state: reg(&r, IntGaugeVec::new(Opts::new("memscale_guest_state", "1 for the guest's current state (ok, starting, no_driver, stale, held, pinned, resizing, not_running, no_envelope)."), &["host", "guest", "state"]).expect("metric")),
            resizes: reg(&r, IntCounterVec::new(Opts::new("memscale_resizes_total", "Resizes by direction, method and result."), &["direction", "method", "result"]).expect("metric")),
            holds: reg(&r, IntCounterVec::new(Opts::new("memscale_holds_total", "Decisions to hold a guest, by reason (counted when the reason changes)."), &["reason"]).expect("metric")),
            bytes_moved: reg(&r, IntCounterVec::new(Opts::new("memscale_moved_bytes_total", "Memory given to (grow) or taken from (shrink) guests."), &["direction"]).expect("metric")),
            loop_seconds: reg(&r, HistogramVec::new(HistogramOpts::new("memscale_loop_duration_seconds", "Time one host's tick took.").buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]), &["host"]).expect("metric")),
            overruns: reg(&r, IntCounterVec::new(Opts::new("memscale_loop_overruns_total", "Ticks that took longer than the interval."), &["host"]).expect("metric")),
            libvirt_errors: reg(&r, IntCounterVec::new(Opts::new("memscale_libvirt_errors_total", "Failed libvirt calls by host and call."), &["host", "call"]).expect("metric")),
            host_bytes: reg(&r, GaugeVec::new(Opts::new("memscale_host_memory_bytes", "Host memory by kind: capacity, reserve, committed, free, deficit (what the guests need beyond capacity minus reserve)."), &["host", "kind"]).expect("metric")),
            reloads: reg(&r, IntCounterVec::new(Opts::new("memscale_policy_reloads_total", "Policy reloads by result (ok, error)."), &["result"]).expect("metric")),
            policy_generation: reg(&r, IntGauge::new("memscale_policy_generation", "Generation of the policy set in force.").expect("metric")),
            hostile: reg(&r, IntCounterVec::new(Opts::new("memscale_guest_bad_stats_total", "Guest reports rejected or bounded as impossible."), &["host", "guest"]).expect("metric")),
            build: reg(&r, IntGaugeVec::new(Opts::new("memscale_build_info", "Always 1; the version as a label."), &["version"]).expect("metric")),
            api_requests: reg(&r, IntCounterVec::new(Opts::new("memscale_api_requests_total", "API requests by route and status code."), &["route", "code"]).expect("metric")),
            migrations: reg(&r, IntCounterVec::new(Opts::new("memscale_migrations_total", "Live migrations off a host short of memory, by source, destination and result (proposed, applied, failed)."), &["from", "to", "result"]).expect("metric")),
            state_errors: reg(&r, IntCounter::new("memscale_state_save_errors_total", "Failed writes of the state file (pins and planner memory across restarts).").expect("metric")),
            host_acting: reg(&r, IntGaugeVec::new(Opts::new("memscale_host_acting", "1 when this daemon acts for the host; 0 when it only watches it (manage = false, or another daemon holds it through etcd)."), &["host"]).expect("metric")),
            up: reg(&r, IntCounter::new("memscale_ticks_total", "Host ticks run since start.").expect("metric")),
            registry: r,
        };
        m.build
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m
    }

    /// Forget every series of a guest that is gone.
    pub fn forget_guest(&self, host: &str, guest: &str) {
        for kind in [
            "current",
            "target",
            "floor",
            "ceiling",
            "used",
            "available",
            "caches",
            "free",
        ] {
            let _ = self.guest_bytes.remove_label_values(&[host, guest, kind]);
        }
        let _ = self.guest_stats_age.remove_label_values(&[host, guest]);
        for st in STATES {
            let _ = self.guest_state.remove_label_values(&[host, guest, st]);
        }
        let _ = self.hostile.remove_label_values(&[host, guest]);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let enc = TextEncoder::new();
        if let Err(e) = enc.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "cannot render metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

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
        m.guest_bytes
            .with_label_values(&["h", "g", "current"])
            .set(1.0);
        m.guest_state.with_label_values(&["h", "g", "ok"]).set(1);
        let text = m.render();
        assert!(
            text.contains("memscale_guest_memory_bytes{guest=\"g\",host=\"h\",kind=\"current\"} 1")
        );
        assert!(text.contains("memscale_build_info{version="));
        m.forget_guest("h", "g");
        assert!(!m.render().contains("guest=\"g\""));
    }
}
