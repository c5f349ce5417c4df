//! An in-process host of many guests, for the scale benchmark only (thousands of guests do
//! not fit in this machine as real QEMU processes). It answers the daemon's [`Hypervisor`]
//! calls from records captured from a real guest under a real libvirtd (`capture/`), with
//! each guest's numbers moved by a random walk of demand, and parses them through the same
//! [`GuestStats::from_fields`] the libvirt backend uses; domain XML is the captured live
//! definition with the guest's own name, uuid and sizes. Resizes change the guest's size at
//! once, so the daemon's convergence checks pass. The model's own CPU time is counted
//! separately, so a benchmark can subtract it from the process's.

pub mod scenario;

use crate::hypervisor::{GuestStats, HvError, Hypervisor};
use crate::units::Bytes;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// `virsh domstats --state --balloon` of a real test-bed guest.
pub const CAPTURED_STATS: &str = include_str!("model/capture-stats.txt");
/// `virsh dumpxml` (live) of the same guest.
pub const CAPTURED_XML: &str = include_str!("model/capture-domain.xml");

/// The fields of one captured record, in libvirt's order, values as libvirt reported them.
pub fn captured_fields(text: &str) -> Vec<(Vec<u8>, u64)> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter_map(|(k, v)| {
            v.trim()
                .parse::<u64>()
                .ok()
                .map(|v| (k.as_bytes().to_vec(), v))
        })
        .collect()
}

struct ModelGuest {
    name: String,
    uuid: String,
    /// Balloon size and plugged virtio-mem, KiB.
    balloon_kib: u64,
    vmem_kib: u64,
    /// What the guest uses beyond its kernel, KiB.
    demand_kib: u64,
    rng: u64,
    faults: u64,
}

pub struct ModelHost {
    uri: String,
    guests: Mutex<Vec<ModelGuest>>,
    index: std::collections::HashMap<String, usize>,
    fields: Vec<(Vec<u8>, u64)>,
    xml: String,
    /// Thread CPU nanoseconds spent inside the model's calls.
    cpu_ns: AtomicU64,
    stats_calls: AtomicU64,
    resizes: AtomicU64,
    /// Every stats call blocks this long first (a hung host).
    hang: Option<Duration>,
    memory: Bytes,
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// As the captured guest: the kernel keeps 42 MiB of its RAM out of MemTotal, and an idle
/// guest uses 28 MiB of the rest.
const RESERVED_KIB: u64 = 42 * 1024;
const BASE_USED_KIB: u64 = 28 * 1024;
const FLOOR_KIB: u64 = 512 * 1024;
const VMEM_MAX_KIB: u64 = 1024 * 1024;

impl ModelHost {
    /// A host of `n` guests named `{prefix}{i}`, each booted like the captured guest (512 MiB
    /// of boot RAM, 1 GiB of virtio-mem).
    pub fn new(uri: &str, prefix: &str, n: usize, seed: u64) -> ModelHost {
        let guests = (0..n)
            .map(|i| {
                let mut rng = seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                xorshift(&mut rng);
                ModelGuest {
                    name: format!("{prefix}{i}"),
                    uuid: format!("00000000-0000-4000-8000-{:012x}", seed << 24 | i as u64),
                    balloon_kib: FLOOR_KIB,
                    vmem_kib: 0,
                    demand_kib: 64 * 1024 + xorshift(&mut rng) % (256 * 1024),
                    rng,
                    faults: 0,
                }
            })
            .collect::<Vec<ModelGuest>>();
        ModelHost {
            uri: uri.to_string(),
            index: guests
                .iter()
                .enumerate()
                .map(|(i, g)| (g.uuid.clone(), i))
                .collect(),
            guests: Mutex::new(guests),
            fields: captured_fields(CAPTURED_STATS),
            xml: CAPTURED_XML.to_string(),
            cpu_ns: AtomicU64::new(0),
            stats_calls: AtomicU64::new(0),
            resizes: AtomicU64::new(0),
            hang: None,
            memory: Bytes::from_mib(1 << 20),
        }
    }

    /// Every stats call blocks for `d` first, as a hung libvirtd would.
    pub fn hung(mut self, d: Duration) -> ModelHost {
        self.hang = Some(d);
        self
    }

    /// CPU time the model itself has spent answering calls.
    pub fn cpu(&self) -> Duration {
        Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed))
    }

    pub fn stats_calls(&self) -> u64 {
        self.stats_calls.load(Ordering::Relaxed)
    }

    /// Balloon and virtio-mem resizes asked of the model.
    pub fn resizes(&self) -> u64 {
        self.resizes.load(Ordering::Relaxed)
    }

    fn timed<T>(&self, f: impl FnOnce() -> T) -> T {
        let t0 = thread_cpu_ns();
        let r = f();
        self.cpu_ns
            .fetch_add(thread_cpu_ns().saturating_sub(t0), Ordering::Relaxed);
        r
    }

    fn with_guest<T>(
        &self,
        uuid: &str,
        f: impl FnOnce(&mut ModelGuest) -> Result<T, HvError>,
    ) -> Result<T, HvError> {
        self.timed(|| {
            let mut gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            match self.index.get(uuid).and_then(|&i| gs.get_mut(i)) {
                Some(g) => f(g),
                None => Err(HvError::NoGuest(uuid.to_string())),
            }
        })
    }
}

impl ModelHost {
    /// A resize the model refuses when `bad` (as libvirt would), else applies at once.
    fn resize(
        &self,
        uuid: &str,
        bad: bool,
        refusal: &str,
        apply: impl FnOnce(&mut ModelGuest),
    ) -> Result<(), HvError> {
        self.with_guest(uuid, |g| {
            if bad {
                return Err(HvError::Guest {
                    guest: g.name.clone(),
                    message: refusal.into(),
                });
            }
            apply(g);
            self.resizes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }
}

/// Replace the text of the first `<tag ...>` element after `from` with `value`.
fn set_text(xml: &mut String, from: usize, tag: &str, value: &str) -> Option<usize> {
    let open = xml[from..].find(&format!("<{tag}"))? + from;
    let start = xml[open..].find('>')? + open + 1;
    let end = xml[start..].find('<')? + start;
    xml.replace_range(start..end, value);
    Some(start + value.len())
}

impl Hypervisor for ModelHost {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn stats(&self) -> Result<Vec<GuestStats>, HvError> {
        if let Some(d) = self.hang {
            std::thread::sleep(d);
        }
        self.stats_calls.fetch_add(1, Ordering::Relaxed);
        self.timed(|| {
            let now = crate::clock::epoch_now() as u64;
            let mut gs = self.guests.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::with_capacity(gs.len());
            let mut values: Vec<u64> = Vec::with_capacity(self.fields.len());
            for g in gs.iter_mut() {
                // Demand walks: mostly small steps, now and then a burst or a release.
                let r = xorshift(&mut g.rng);
                let step = match r % 100 {
                    0 => 256 * 1024,
                    1 => g.demand_kib / 2,
                    _ => (r >> 8) % (8 * 1024),
                };
                if r % 100 == 1 || (r >> 40).is_multiple_of(2) {
                    g.demand_kib = g.demand_kib.saturating_sub(step).max(16 * 1024);
                } else {
                    g.demand_kib = (g.demand_kib + step).min(1400 * 1024);
                }
                g.faults += (r >> 20) % 1000;
                let current = g.balloon_kib + g.vmem_kib;
                let total = current.saturating_sub(RESERVED_KIB);
                let used = (BASE_USED_KIB + g.demand_kib).min(total);
                let caches = (total - used) / 4;
                values.clear();
                values.extend(self.fields.iter().map(|(k, v)| match k.as_slice() {
                    b"balloon.current" => current,
                    b"balloon.maximum" => FLOOR_KIB + VMEM_MAX_KIB,
                    b"balloon.available" => total,
                    b"balloon.usable" => total - used,
                    b"balloon.unused" => total - used - caches,
                    b"balloon.disk_caches" => caches,
                    b"balloon.minor_fault" => g.faults,
                    b"balloon.last-update" => now,
                    b"balloon.rss" => (used + caches + 20 * 1024).min(current),
                    _ => *v,
                }));
                out.push(GuestStats::from_fields(
                    g.name.clone(),
                    g.uuid.clone(),
                    self.fields
                        .iter()
                        .zip(&values)
                        .map(|((k, _), v)| (k.as_slice(), *v)),
                ));
            }
            Ok(out)
        })
    }

    fn domain_xml(&self, uuid: &str, _inactive: bool) -> Result<String, HvError> {
        self.with_guest(uuid, |g| {
            let mut x = self.xml.clone();
            let fail = || HvError::Other("captured XML lacks an element".into());
            set_text(&mut x, 0, "name", &g.name).ok_or_else(fail)?;
            set_text(&mut x, 0, "uuid", &g.uuid).ok_or_else(fail)?;
            let live = (g.balloon_kib + g.vmem_kib).to_string();
            set_text(&mut x, 0, "currentMemory", &live).ok_or_else(fail)?;
            let dev = x.find("<memory model='virtio-mem'").ok_or_else(fail)?;
            let at =
                set_text(&mut x, dev, "requested", &g.vmem_kib.to_string()).ok_or_else(fail)?;
            set_text(&mut x, at, "current", &g.vmem_kib.to_string()).ok_or_else(fail)?;
            Ok(x)
        })
    }

    fn set_balloon(&self, uuid: &str, target: Bytes) -> Result<(), HvError> {
        let kib = target.kib();
        self.resize(
            uuid,
            kib > FLOOR_KIB,
            "balloon target above boot memory",
            |g| g.balloon_kib = kib,
        )
    }

    fn set_virtio_mem(&self, uuid: &str, _alias: &str, requested: Bytes) -> Result<(), HvError> {
        let kib = requested.kib();
        let bad = kib > VMEM_MAX_KIB || !kib.is_multiple_of(2048);
        self.resize(
            uuid,
            bad,
            "requested size not a multiple of the block or above the size",
            |g| g.vmem_kib = kib,
        )
    }

    fn set_stats_period(&self, _uuid: &str, _seconds: u32) -> Result<(), HvError> {
        Ok(())
    }

    fn host_memory(&self) -> Result<Bytes, HvError> {
        Ok(self.memory)
    }

    fn migrate(
        &self,
        _uuid: &str,
        dest_uri: &str,
        _data: Option<&str>,
        _tls: bool,
    ) -> Result<(), HvError> {
        Err(HvError::Other(format!(
            "the model host cannot migrate (to {dest_uri})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainSpec;

    #[test]
    fn captured_records_parse_like_a_real_guest() {
        let f = captured_fields(CAPTURED_STATS);
        assert!(f.iter().any(|(k, _)| k == b"balloon.usable"), "{f:?}");
        let h = ModelHost::new("model:///a", "g", 3, 7);
        let s = h.stats().expect("stats");
        assert_eq!(s.len(), 3);
        for g in &s {
            let usable = g.guest.usable.expect("usable");
            let total = g.guest.total.expect("total");
            assert!(usable <= total && total <= g.current.expect("current"));
            assert!(g.last_update > 0);
        }
        // Resizes land, and the live XML says so.
        let uuid = s[1].uuid.clone();
        h.set_virtio_mem(&uuid, "virtiomem0", Bytes::from_mib(256))
            .expect("plug");
        let spec = DomainSpec::parse(&h.domain_xml(&uuid, false).expect("xml")).expect("parse");
        assert_eq!(spec.name, "g1");
        assert_eq!(spec.uuid, uuid);
        assert_eq!(spec.virtio_mem[0].requested, Bytes::from_mib(256));
        let after = h.stats().expect("stats");
        assert_eq!(after[1].current, Some(Bytes::from_mib(512 + 256)));
        assert!(
            h.set_virtio_mem(&uuid, "virtiomem0", Bytes::from_mib(3))
                .is_err()
        );
        assert!(h.set_balloon(&uuid, Bytes::from_mib(4096)).is_err());
        assert!(matches!(
            h.domain_xml("nope", false),
            Err(HvError::NoGuest(_))
        ));
    }
}
