//! One modelled guest: its devices, how far its in-flight resizes have landed at a given
//! time, the statistics it reports and the domain XML libvirt would give for it.

use super::GuestSpec;
use crate::hypervisor::{GuestStats, RunState};
use crate::units::{Bytes, Rate};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// As the captured test-bed guest: the kernel keeps this much of its RAM out of MemTotal.
pub const KERNEL_RESERVE: Bytes = Bytes::from_mib(42);
/// Host-side memory of the guest's process beyond the pages the guest uses (QEMU itself,
/// page tables, the kernel's own pages).
const RSS_OVERHEAD: Bytes = Bytes::from_mib(20);

/// What a test can assert on: the calls the daemon made on one guest. Calls are counted
/// whether the host accepted them or not; sizes are the last ones accepted. They move with
/// the guest when it migrates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Balloon, virtio-mem, DIMM attach and DIMM detach calls.
    pub resizes: u64,
    /// The last balloon target accepted.
    pub balloon_target: Option<Bytes>,
    /// The last requested size accepted, per virtio-mem alias.
    pub vmem_requested: BTreeMap<String, Bytes>,
    pub attaches: u64,
    pub detaches: u64,
    pub detaches_by_alias: BTreeMap<String, u64>,
}

pub(super) struct VmemDev {
    pub alias: String,
    pub node: u32,
    pub size: Bytes,
    pub block: Bytes,
    pub requested: Bytes,
    /// Plugged size at `since` (clock seconds); it moves toward `requested` from there.
    from: Bytes,
    since: f64,
}

pub(super) struct DimmDev {
    pub alias: String,
    pub node: u32,
    pub size: Bytes,
    /// The guest brought the DIMM's memory online: it counts in MemTotal.
    pub online: bool,
}

/// One report of the guest's balloon driver.
#[derive(Debug, Clone, Copy)]
pub(super) struct Report {
    last_update: u64,
    total: Bytes,
    usable: Bytes,
    caches: Bytes,
    faults: u64,
}

pub(super) struct Vm {
    pub spec: GuestSpec,
    pub uuid: String,
    pub state: RunState,
    /// Balloon pages inflated. QEMU fixes this count when a target is set (the RAM plugged
    /// then minus the target), so a DIMM plugged or unplugged later moves the total with it.
    pub inflated: Bytes,
    pub vmem: Vec<VmemDev>,
    pub dimms: Vec<DimmDev>,
    pub stats_period: u32,
    /// How fast the guest onlines or offlines virtio-mem blocks; zero = at once.
    pub online_rate: Rate,
    pub frozen: bool,
    pub never_converge: bool,
    pub refuse_unplug: bool,
    pub fail_resizes: bool,
    /// The last report the guest made, kept as it was while the guest does not report.
    held: Option<Report>,
    pub counters: Counters,
}

impl Vm {
    /// The guest as it starts from its persistent definition.
    pub fn boot(spec: GuestSpec, uuid: String, now: f64) -> Vm {
        let mut vm = Vm {
            uuid,
            state: RunState::Running,
            inflated: Bytes(0),
            vmem: Vec::new(),
            dimms: Vec::new(),
            stats_period: spec.stats_period,
            online_rate: Rate::default(),
            frozen: false,
            never_converge: false,
            refuse_unplug: false,
            fail_resizes: false,
            held: None,
            counters: Counters::default(),
            spec,
        };
        vm.restart(now);
        vm
    }

    /// Back to the persistent definition: no DIMMs, nothing plugged, the balloon at
    /// `<currentMemory>`.
    pub fn restart(&mut self, now: f64) {
        let s = &self.spec;
        let nodes = s.numa_nodes.max(1);
        let per_node = Bytes(s.vmem_size.0 / nodes as u64);
        self.inflated = s.boot.saturating_sub(s.current_memory());
        self.dimms.clear();
        self.vmem = if s.vmem_size.0 == 0 {
            Vec::new()
        } else {
            (0..nodes)
                .map(|i| VmemDev {
                    alias: format!("virtiomem{i}"),
                    node: i,
                    size: per_node,
                    block: s.vmem_block,
                    requested: Bytes(0),
                    from: Bytes(0),
                    since: now,
                })
                .collect()
        };
        self.stats_period = s.stats_period;
        self.held = None;
    }

    /// Whether nothing lands: the guest is told to ignore resizes, or is not running.
    fn stalled(&self) -> bool {
        self.never_converge || self.state != RunState::Running
    }

    pub fn vmem_current(&self, d: &VmemDev, now: f64) -> Bytes {
        if self.stalled() {
            return d.from;
        }
        let dist = Bytes(d.requested.0.abs_diff(d.from.0));
        let moved = if self.online_rate.per_sec().0 == 0 {
            dist
        } else {
            // The guest onlines whole blocks.
            self.online_rate
                .over(now - d.since)
                .min(dist)
                .align_down(d.block)
        };
        if d.requested >= d.from {
            d.from + moved
        } else {
            d.from.saturating_sub(moved)
        }
    }

    /// Fix what has landed so far as the new starting point; called before anything that
    /// changes how fast the devices move (a new request, the rate, a stall, another clock).
    pub fn rebase(&mut self, now: f64) {
        let landed: Vec<Bytes> = self
            .vmem
            .iter()
            .map(|d| self.vmem_current(d, now))
            .collect();
        for (d, c) in self.vmem.iter_mut().zip(landed) {
            d.from = c;
            d.since = now;
        }
    }

    /// After a migration: what landed stays, and time goes on by the destination's clock.
    pub fn move_clock(&mut self, then: f64, now: f64) {
        self.rebase(then);
        for d in &mut self.vmem {
            d.since = now;
        }
    }

    pub fn dimm_total(&self) -> Bytes {
        self.dimms.iter().map(|d| d.size).sum()
    }

    /// The most the balloon target may be: `<memory>` minus the virtio-mem sizes.
    pub fn balloon_limit(&self) -> Bytes {
        self.spec.boot + self.dimm_total()
    }

    /// `balloon.current`: the balloon's share (DIMMs in it) plus plugged virtio-mem.
    pub fn current(&self, now: f64) -> Bytes {
        let vmem: Bytes = self.vmem.iter().map(|d| self.vmem_current(d, now)).sum();
        self.balloon_limit().saturating_sub(self.inflated) + vmem
    }

    /// Live `<memory>`: boot RAM plus every memory device's full size.
    fn memory(&self) -> Bytes {
        self.spec.boot + self.spec.vmem_size + self.dimm_total()
    }

    fn used(&self, now: f64) -> (Bytes, Bytes) {
        let offline: Bytes = self
            .dimms
            .iter()
            .filter(|d| !d.online)
            .map(|d| d.size)
            .sum();
        let total = self
            .current(now)
            .saturating_sub(KERNEL_RESERVE)
            .saturating_sub(offline);
        (total, self.spec.demand.min(total))
    }

    fn reporting(&self) -> bool {
        self.state == RunState::Running && !self.frozen && self.stats_period > 0
    }

    /// Take a report now if the guest is reporting: before it stops (a freeze, a pause),
    /// so the numbers it leaves behind are the last it gave.
    pub fn hold(&mut self, now: f64) {
        if self.reporting() {
            let (total, used) = self.used(now);
            let usable = total.saturating_sub(used);
            let p = self.stats_period as f64;
            self.held = Some(Report {
                last_update: ((now / p).floor() * p).max(0.0) as u64,
                total,
                usable,
                caches: Bytes(usable.0 / 4),
                faults: used.0 / 4096,
            });
        }
    }

    /// One bulk stats record, as libvirt gives it (KiB), parsed as the libvirt backend does.
    pub fn stats(&mut self, now: f64) -> GuestStats {
        let code = match self.state {
            RunState::Running => 1,
            RunState::Paused => 3,
            RunState::Shutoff => 5,
            RunState::Crashed => 6,
            RunState::Other => 0,
        };
        let mut f: Vec<(&'static [u8], u64)> = vec![(b"state.state", code), (b"state.reason", 1)];
        if self.state == RunState::Shutoff {
            f.push((b"balloon.current", self.spec.current_memory().kib()));
            f.push((
                b"balloon.maximum",
                (self.spec.boot + self.spec.vmem_size).kib(),
            ));
        } else {
            let current = self.current(now);
            f.push((b"balloon.current", current.kib()));
            f.push((b"balloon.maximum", self.memory().kib()));
            self.hold(now);
            if let Some(r) = self.held {
                let unused = r.usable.saturating_sub(r.caches);
                f.extend([
                    (&b"balloon.swap_in"[..], 0),
                    (b"balloon.swap_out", 0),
                    (b"balloon.major_fault", 0),
                    (b"balloon.minor_fault", r.faults),
                    (b"balloon.unused", unused.kib()),
                    (b"balloon.available", r.total.kib()),
                    (b"balloon.usable", r.usable.kib()),
                    (b"balloon.last-update", r.last_update),
                    (b"balloon.disk_caches", r.caches.kib()),
                ]);
            }
            let rss = (KERNEL_RESERVE + self.used(now).1 + RSS_OVERHEAD).min(current);
            f.push((b"balloon.rss", rss.kib()));
        }
        GuestStats::from_fields(self.spec.name.clone(), self.uuid.clone(), f)
    }

    /// The domain XML, written the way the test bed's `guest.sh` writes it; live XML adds
    /// what the running guest has (aliases, plugged sizes, hot-plugged DIMMs).
    pub fn xml(&self, now: f64, inactive: bool) -> String {
        let s = &self.spec;
        let live = !inactive && self.state != RunState::Shutoff;
        let nodes = s.numa_nodes.max(1);
        let mut x = String::new();
        let _ = write!(
            x,
            "<domain type='qemu'>\n  <name>{}</name>\n  <uuid>{}</uuid>\n",
            s.name, self.uuid
        );
        if s.dimm_slots > 0 {
            let _ = writeln!(
                x,
                "  <maxMemory slots='{}' unit='KiB'>{}</maxMemory>",
                s.dimm_slots,
                s.max_memory.kib()
            );
        }
        let (memory, current) = match live {
            true => (self.memory(), self.current(now)),
            false => (s.boot + s.vmem_size, s.current_memory()),
        };
        let _ = write!(
            x,
            "  <memory unit='KiB'>{}</memory>\n  <currentMemory unit='KiB'>{}</currentMemory>\n  <vcpu placement='static'>{nodes}</vcpu>\n",
            memory.kib(),
            current.kib()
        );
        if s.acpi {
            x.push_str("  <features><acpi/></features>\n");
        }
        let _ = write!(
            x,
            "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model><topology sockets='{nodes}' dies='1' cores='1' threads='1'/><numa>"
        );
        let boot_kib = s.boot.kib();
        for i in 0..nodes {
            // libvirt wants the cells to add up to the boot RAM: the last takes the rest.
            let mut kib = boot_kib / nodes as u64;
            if i == nodes - 1 {
                kib += boot_kib % nodes as u64;
            }
            let _ = write!(x, "<cell id='{i}' cpus='{i}' memory='{kib}' unit='KiB'/>");
        }
        x.push_str("</numa></cpu>\n  <devices>\n    <memballoon model='virtio'>");
        let period = if live {
            self.stats_period
        } else {
            s.stats_period
        };
        if period > 0 {
            let _ = write!(x, "<stats period='{period}'/>");
        }
        if live {
            x.push_str("<alias name='balloon0'/>");
        }
        x.push_str("</memballoon>\n");
        for d in &self.vmem {
            let _ = write!(
                x,
                "    <memory model='virtio-mem'><target><size unit='KiB'>{}</size><node>{}</node><block unit='KiB'>{}</block>",
                d.size.kib(),
                d.node,
                d.block.kib()
            );
            if live {
                let _ = writeln!(
                    x,
                    "<requested unit='KiB'>{}</requested><current unit='KiB'>{}</current></target><alias name='{}'/></memory>",
                    d.requested.kib(),
                    self.vmem_current(d, now).kib(),
                    d.alias
                );
            } else {
                x.push_str("<requested unit='KiB'>0</requested></target></memory>\n");
            }
        }
        if live {
            for d in &self.dimms {
                let _ = writeln!(
                    x,
                    "    <memory model='dimm'><target><size unit='KiB'>{}</size><node>{}</node></target><alias name='{}'/></memory>",
                    d.size.kib(),
                    d.node,
                    d.alias
                );
            }
        }
        x.push_str("  </devices>\n</domain>\n");
        x
    }
}

/// The alias, node and size of the `<memory model='dimm'>` element the daemon attaches.
pub(super) fn parse_dimm(xml: &str) -> Result<(String, Option<u32>, Bytes), String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("device xml: {e}"))?;
    let root = doc.root_element();
    if !root.has_tag_name("memory") || root.attribute("model") != Some("dimm") {
        return Err("only <memory model='dimm'> devices can be attached here".into());
    }
    fn find<'a, 'i>(n: roxmltree::Node<'a, 'i>, tag: &str) -> Option<roxmltree::Node<'a, 'i>> {
        n.children().find(|c| c.has_tag_name(tag))
    }
    let alias = find(root, "alias")
        .and_then(|a| a.attribute("name"))
        .ok_or("the DIMM has no alias")?
        .to_string();
    let target = find(root, "target").ok_or("the DIMM has no <target>")?;
    let size = find(target, "size").ok_or("the DIMM has no <size>")?;
    let size = crate::domain::scaled(size.text().unwrap_or(""), size.attribute("unit"), "size")
        .map_err(|e| e.to_string())?;
    let node = match find(target, "node").and_then(|n| n.text()) {
        Some(t) => Some(t.trim().parse().map_err(|_| format!("bad <node> {t:?}"))?),
        None => None,
    };
    Ok((alias, node, size))
}
