//! A scripted in-process host for fast tests of the daemon's host loop: no root, no QEMU,
//! time from an injected [`Clock`]. It answers the [`Hypervisor`] calls as libvirt 9 and
//! QEMU 7.2 were seen to on the test bed (KiB units, `balloon.current` =
//! balloon + plugged virtio-mem + DIMMs, `last-update` once per stats period, the balloon
//! target bounded by `<memory>` minus the virtio-mem sizes, DIMM removal that the guest may
//! refuse), and has knobs a test turns to make the hard cases happen: demand, frozen stats,
//! slow onlining, resizes that never land, refused unplugs, failing calls, a host that goes
//! down, live migration between hosts of one [`Fabric`].
//!
//! It adds to the end-to-end suite against real libvirt + QEMU guests and never replaces it:
//! a behaviour seen only here is no evidence the real thing behaves so. Simplified on
//! purpose: the balloon lands at once (a real one takes seconds), RSS is made up from use,
//! and error messages only resemble libvirt's (their kind, `HvError`'s variant, is right).
//!
//! Guests are named by the test (`name`); the daemon sees their uuids. A virtio-mem guest has
//! one device per NUMA node (`virtiomem0`, `virtiomem1`, …), each `vmem_size / numa_nodes`,
//! as the test bed's `guest.sh` defines them. The balloon and DIMM plugs land at once;
//! virtio-mem moves at the guest's online rate.

mod guest;
mod spec;
#[cfg(test)]
mod tests;

pub use guest::{Counters, KERNEL_RESERVE};
pub use spec::GuestSpec;

use crate::clock::Clock;
use crate::hypervisor::{GuestStats, HvError, HvEvent, Hypervisor, NodeMemory, RunState};
use crate::units::{Bytes, Rate};
use guest::{DimmDev, Vm};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// One live migration a host ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub name: String,
    pub uuid: String,
    pub dest_uri: String,
    pub data_uri: Option<String>,
    /// Asked over libvirt's TLS transport.
    pub tls: bool,
}

/// The hosts that can reach each other for live migration, by URI.
#[derive(Default)]
pub struct Fabric {
    hosts: Mutex<BTreeMap<String, Weak<ScenarioHost>>>,
}

impl Fabric {
    pub fn new() -> Arc<Fabric> {
        Arc::new(Fabric::default())
    }

    /// A new host on this fabric, reachable at `uri`.
    pub fn host(
        self: &Arc<Self>,
        uri: &str,
        clock: Arc<dyn Clock>,
        memory: Bytes,
    ) -> Arc<ScenarioHost> {
        let mut h = ScenarioHost::new(uri, clock, memory);
        h.fabric = Some(self.clone());
        let h = Arc::new(h);
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(uri.to_string(), Arc::downgrade(&h));
        h
    }

    pub fn get(&self, uri: &str) -> Option<Arc<ScenarioHost>> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(uri).and_then(Weak::upgrade)
    }
}

struct Inner {
    /// In the order defined, as libvirt lists running domains by id.
    guests: Vec<Vm>,
    events: Vec<HvEvent>,
    migrations: Vec<Migration>,
    /// Came back up: the next call "reconnects" and registers for events again.
    reconnect: bool,
}

impl Inner {
    fn find(&mut self, uuid: &str) -> Result<&mut Vm, HvError> {
        self.guests
            .iter_mut()
            .find(|g| g.uuid == uuid)
            .ok_or_else(|| HvError::NoGuest(uuid.to_string()))
    }
    fn lifecycle(&mut self, uuid: &str, event: &'static str) {
        self.events.push(HvEvent::Lifecycle {
            uuid: uuid.to_string(),
            event,
        });
    }
}

/// A host of scripted guests (see the module documentation).
pub struct ScenarioHost {
    uri: String,
    clock: Arc<dyn Clock>,
    memory: Bytes,
    /// Memory of the machine held by something other than its guests (node statistics).
    other_use: AtomicU64,
    fabric: Option<Arc<Fabric>>,
    down: AtomicBool,
    inner: Mutex<Inner>,
}

/// Uuids unique across every host of the process, so guests can migrate between them.
static NEXT_UUID: AtomicU64 = AtomicU64::new(1);

fn refused(uuid: &str, message: impl Into<String>) -> HvError {
    HvError::Guest {
        guest: uuid.to_string(),
        message: message.into(),
    }
}

impl ScenarioHost {
    /// A host of `memory` RAM on its own (not on a [`Fabric`]: it cannot migrate).
    pub fn new(uri: &str, clock: Arc<dyn Clock>, memory: Bytes) -> ScenarioHost {
        ScenarioHost {
            uri: uri.to_string(),
            clock,
            memory,
            other_use: AtomicU64::new(0),
            fabric: None,
            down: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                guests: Vec::new(),
                events: Vec::new(),
                migrations: Vec::new(),
                reconnect: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Define and start a guest; returns its uuid. Panics on a definition libvirt would
    /// refuse, or a name already used on this host.
    #[track_caller]
    pub fn add_guest(&self, spec: GuestSpec) -> String {
        if let Some(why) = spec.invalid() {
            panic!("guest {}: {why}", spec.name);
        }
        let n = NEXT_UUID.fetch_add(1, Ordering::Relaxed);
        let uuid = format!("5ce9a410-0000-4000-8000-{n:012x}");
        let mut inner = self.lock();
        assert!(
            !inner.guests.iter().any(|g| g.spec.name == spec.name),
            "guest {} is already on {}",
            spec.name,
            self.uri
        );
        inner
            .guests
            .push(Vm::boot(spec, uuid.clone(), self.clock.now()));
        inner.lifecycle(&uuid, "defined");
        inner.lifecycle(&uuid, "started");
        uuid
    }

    /// Run `f` on the guest named `name`; panics when this host has no such guest.
    #[track_caller]
    fn knob<T>(&self, name: &str, f: impl FnOnce(&mut Vm, f64, &mut Vec<HvEvent>) -> T) -> T {
        let now = self.clock.now();
        let mut inner = self.lock();
        let Inner { guests, events, .. } = &mut *inner;
        match guests.iter_mut().find(|g| g.spec.name == name) {
            Some(g) => f(g, now, events),
            None => panic!("no guest {name} on {}", self.uri),
        }
    }

    #[track_caller]
    pub fn uuid(&self, name: &str) -> String {
        self.knob(name, |g, _, _| g.uuid.clone())
    }
    pub fn has_guest(&self, name: &str) -> bool {
        self.lock().guests.iter().any(|g| g.spec.name == name)
    }
    /// `balloon.current` now.
    #[track_caller]
    pub fn current(&self, name: &str) -> Bytes {
        self.knob(name, |g, now, _| g.current(now))
    }
    #[track_caller]
    pub fn counters(&self, name: &str) -> Counters {
        self.knob(name, |g, _, _| g.counters.clone())
    }
    #[track_caller]
    pub fn resizes(&self, name: &str) -> u64 {
        self.counters(name).resizes
    }
    pub fn migrations(&self) -> Vec<Migration> {
        self.lock().migrations.clone()
    }

    /// Memory of the machine that something other than its guests holds (another process, a
    /// leak): the node statistics count it as used. The guests hold what they are allocated.
    pub fn set_other_use(&self, used: Bytes) {
        self.other_use.store(used.0, Ordering::Relaxed);
    }

    #[track_caller]
    pub fn set_demand(&self, name: &str, demand: Bytes) {
        self.knob(name, |g, _, _| g.spec.demand = demand)
    }
    /// The guest stops reporting (`last-update` stays), as when its balloon driver is
    /// unloaded or it hangs; the numbers it last gave stay too.
    #[track_caller]
    pub fn freeze_stats(&self, name: &str, frozen: bool) {
        self.knob(name, |g, now, _| {
            g.hold(now);
            g.frozen = frozen;
        })
    }
    /// How fast virtio-mem's plugged size follows a new request, over clock time; zero (the
    /// default) lands it at once.
    #[track_caller]
    pub fn set_online_rate(&self, name: &str, rate: Rate) {
        self.knob(name, |g, now, _| {
            g.rebase(now);
            g.online_rate = rate;
        })
    }
    /// Resizes are accepted but nothing moves: the balloon keeps its size, virtio-mem its
    /// plugged size, a detached DIMM stays, and an attached one is plugged but never onlined.
    #[track_caller]
    pub fn never_converge(&self, name: &str, on: bool) {
        self.knob(name, |g, now, _| {
            g.rebase(now);
            g.never_converge = on;
        })
    }
    /// A DIMM detach is accepted but the guest keeps the DIMM, and a removal-failed event
    /// follows (libvirt's DEVICE_REMOVAL_FAILED).
    #[track_caller]
    pub fn refuse_unplug(&self, name: &str, on: bool) {
        self.knob(name, |g, _, _| g.refuse_unplug = on)
    }
    /// Every resize call fails with a guest error.
    #[track_caller]
    pub fn fail_resizes(&self, name: &str, on: bool) {
        self.knob(name, |g, _, _| g.fail_resizes = on)
    }
    /// Pause (or resume) the guest: it stops reporting and nothing lands meanwhile.
    #[track_caller]
    pub fn pause(&self, name: &str, paused: bool) {
        self.knob(name, |g, now, events| {
            g.hold(now);
            g.rebase(now);
            g.state = if paused {
                RunState::Paused
            } else {
                RunState::Running
            };
            let event = if paused { "suspended" } else { "resumed" };
            events.push(HvEvent::Lifecycle {
                uuid: g.uuid.clone(),
                event,
            });
        })
    }
    /// Power the guest off (it stays defined): its live changes are lost.
    #[track_caller]
    pub fn destroy(&self, name: &str) {
        self.knob(name, |g, now, events| {
            g.state = RunState::Shutoff;
            g.restart(now);
            events.push(HvEvent::Lifecycle {
                uuid: g.uuid.clone(),
                event: "stopped",
            });
        })
    }
    /// Start a guest that was powered off, from its persistent definition.
    #[track_caller]
    pub fn start(&self, name: &str) {
        self.knob(name, |g, now, events| {
            g.state = RunState::Running;
            g.restart(now);
            events.push(HvEvent::Lifecycle {
                uuid: g.uuid.clone(),
                event: "started",
            });
        })
    }
    /// Undefine the guest: it is gone from this host.
    #[track_caller]
    pub fn remove(&self, name: &str) {
        let uuid = self.uuid(name);
        let mut inner = self.lock();
        inner.guests.retain(|g| g.uuid != uuid);
        inner.lifecycle(&uuid, "stopped");
        inner.lifecycle(&uuid, "undefined");
    }

    /// libvirtd goes away (every call fails with a connection error and a close event is
    /// queued) or comes back (the next call reconnects and registers for events).
    pub fn set_down(&self, down: bool) {
        let was = self.down.swap(down, Ordering::SeqCst);
        let mut inner = self.lock();
        if down && !was {
            inner.events.push(HvEvent::Closed { reason: "eof" });
        } else if !down && was {
            inner.reconnect = true;
        }
    }
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// The host lock, once the connection is known to be up.
    fn conn(&self) -> Result<MutexGuard<'_, Inner>, HvError> {
        if self.is_down() {
            return Err(HvError::Connect {
                uri: self.uri.clone(),
                message: "Failed to connect socket: Connection refused".into(),
            });
        }
        let mut inner = self.lock();
        if inner.reconnect {
            inner.reconnect = false;
            inner.events.push(HvEvent::Registered);
        }
        Ok(inner)
    }

    /// One resize call on a guest: counted, refused when the guest is off or told to fail.
    fn resize(
        &self,
        uuid: &str,
        f: impl FnOnce(&mut Vm, f64, &mut Vec<HvEvent>) -> Result<(), HvError>,
    ) -> Result<(), HvError> {
        let now = self.clock.now();
        let mut inner = self.conn()?;
        let Inner { guests, events, .. } = &mut *inner;
        let g = guests
            .iter_mut()
            .find(|g| g.uuid == uuid)
            .ok_or_else(|| HvError::NoGuest(uuid.to_string()))?;
        g.counters.resizes += 1;
        if g.state == RunState::Shutoff {
            return Err(refused(
                uuid,
                "Requested operation is not valid: domain is not running",
            ));
        }
        if g.fail_resizes {
            return Err(refused(uuid, "internal error: injected failure"));
        }
        f(g, now, events)
    }

    /// Take a guest migrating in; on refusal, hand it back.
    fn receive(&self, mut vm: Vm, then: f64) -> Result<(), (Box<Vm>, HvError)> {
        let mut inner = match self.conn() {
            Ok(i) => i,
            Err(e) => return Err((Box::new(vm), e)),
        };
        if inner.guests.iter().any(|g| g.uuid == vm.uuid) {
            let e = refused(&vm.uuid, "the destination already has this domain");
            return Err((Box::new(vm), e));
        }
        vm.move_clock(then, self.clock.now());
        let uuid = vm.uuid.clone();
        inner.guests.push(vm);
        inner.lifecycle(&uuid, "defined");
        inner.lifecycle(&uuid, "started");
        Ok(())
    }
}

impl Hypervisor for ScenarioHost {
    fn take_events(&self) -> Vec<HvEvent> {
        std::mem::take(&mut self.lock().events)
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    fn stats(&self) -> Result<Vec<GuestStats>, HvError> {
        let now = self.clock.now();
        let mut inner = self.conn()?;
        Ok(inner.guests.iter_mut().map(|g| g.stats(now)).collect())
    }

    fn domain_xml(&self, uuid: &str, inactive: bool) -> Result<String, HvError> {
        let now = self.clock.now();
        Ok(self.conn()?.find(uuid)?.xml(now, inactive))
    }

    fn set_balloon(&self, uuid: &str, target: Bytes) -> Result<(), HvError> {
        self.resize(uuid, |g, _, _| {
            if target > g.balloon_limit() {
                return Err(refused(
                    uuid,
                    "invalid argument: cannot set memory higher than max memory",
                ));
            }
            g.counters.balloon_target = Some(target);
            if !g.never_converge {
                g.inflated = g.balloon_limit().saturating_sub(target);
            }
            Ok(())
        })
    }

    fn set_virtio_mem(&self, uuid: &str, alias: &str, requested: Bytes) -> Result<(), HvError> {
        self.resize(uuid, |g, now, _| {
            let Some(i) = g.vmem.iter().position(|d| d.alias == alias) else {
                return Err(refused(uuid, format!("no virtio-mem device with alias {alias}")));
            };
            let d = &g.vmem[i];
            if !requested.0.is_multiple_of(d.block.0) || requested > d.size {
                return Err(refused(
                    uuid,
                    "requested size must be an integer multiple of block size and not above the size",
                ));
            }
            g.rebase(now);
            g.vmem[i].requested = requested;
            g.counters.vmem_requested.insert(alias.to_string(), requested);
            Ok(())
        })
    }

    fn attach_memory(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        self.resize(uuid, |g, _, _| {
            g.counters.attaches += 1;
            let (alias, node, size) = guest::parse_dimm(xml).map_err(|m| refused(uuid, m))?;
            let s = &g.spec;
            let nodes = s.numa_nodes.max(1);
            let why = if s.dimm_slots == 0 {
                Some(
                    "cannot use/hotplug a memory device when domain 'maxMemory' is not defined"
                        .to_string(),
                )
            } else if !s.acpi {
                Some("acpi: memory hotplug is not enabled".into())
            } else if g.dimms.len() + g.vmem.len() >= s.dimm_slots as usize {
                Some("no free memory device slot available".into())
            } else if s.boot + s.vmem_size + g.dimm_total() + size > s.max_memory {
                Some("Attaching memory device would exceed domain's maxMemory config size".into())
            } else if node.is_none_or(|n| n >= nodes) {
                Some(format!("target NUMA node must be given and below {nodes}"))
            } else if size.0 == 0 || g.dimms.iter().any(|d| d.alias == alias) {
                Some(format!("bad size or duplicate alias {alias}"))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(refused(uuid, why));
            }
            g.dimms.push(DimmDev {
                alias,
                node: node.unwrap_or(0),
                size,
                online: !g.never_converge,
            });
            Ok(())
        })
    }

    fn detach_alias(&self, uuid: &str, alias: &str) -> Result<(), HvError> {
        self.resize(uuid, |g, _, events| {
            g.counters.detaches += 1;
            *g.counters
                .detaches_by_alias
                .entry(alias.to_string())
                .or_default() += 1;
            let Some(i) = g.dimms.iter().position(|d| d.alias == alias) else {
                return Err(refused(
                    uuid,
                    format!("operation failed: no device found with alias {alias}"),
                ));
            };
            if g.refuse_unplug {
                events.push(HvEvent::RemovalFailed {
                    uuid: uuid.to_string(),
                    alias: alias.to_string(),
                });
            } else if !g.never_converge {
                g.dimms.remove(i);
            }
            Ok(())
        })
    }

    fn set_stats_period(&self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        let now = self.clock.now();
        let mut inner = self.conn()?;
        let g = inner.find(uuid)?;
        if g.state == RunState::Shutoff {
            return Err(refused(
                uuid,
                "Requested operation is not valid: domain is not running",
            ));
        }
        g.hold(now);
        g.stats_period = seconds;
        Ok(())
    }

    fn host_memory(&self) -> Result<Bytes, HvError> {
        self.conn().map(|_| self.memory)
    }

    /// The machine's memory less what its running guests are allocated and the other use
    /// set by [`ScenarioHost::set_other_use`]; no buffers or page cache.
    fn node_memory(&self) -> Result<NodeMemory, HvError> {
        let now = self.clock.now();
        let inner = self.conn()?;
        let guests: Bytes = inner
            .guests
            .iter()
            .filter(|g| g.state != RunState::Shutoff)
            .map(|g| g.current(now))
            .fold(Bytes(0), Bytes::saturating_add);
        let other = Bytes(self.other_use.load(Ordering::Relaxed));
        Ok(NodeMemory {
            total: self.memory,
            free: self.memory.saturating_sub(guests).saturating_sub(other),
            buffers: Bytes(0),
            cached: Bytes(0),
        })
    }

    fn migrate(
        &self,
        uuid: &str,
        dest_uri: &str,
        data_uri: Option<&str>,
        tls: bool,
    ) -> Result<(), HvError> {
        {
            let mut inner = self.conn()?;
            if inner.find(uuid)?.state == RunState::Shutoff {
                return Err(refused(
                    uuid,
                    "Requested operation is not valid: domain is not running",
                ));
            }
        }
        if dest_uri == self.uri {
            return Err(refused(
                uuid,
                "attempt to migrate a domain to the same host",
            ));
        }
        let dest = self
            .fabric
            .as_ref()
            .and_then(|f| f.get(dest_uri))
            .ok_or_else(|| {
                refused(
                    uuid,
                    format!("unable to connect to server at '{dest_uri}': no such host"),
                )
            })?;
        if dest.is_down() {
            return Err(refused(
                uuid,
                format!("unable to connect to server at '{dest_uri}': Connection refused"),
            ));
        }
        let then = self.clock.now();
        let vm = {
            let mut inner = self.conn()?;
            let i = inner
                .guests
                .iter()
                .position(|g| g.uuid == uuid)
                .ok_or_else(|| HvError::NoGuest(uuid.to_string()))?;
            inner.guests.remove(i)
        };
        let record = Migration {
            name: vm.spec.name.clone(),
            uuid: uuid.to_string(),
            dest_uri: dest_uri.to_string(),
            data_uri: data_uri.map(str::to_string),
            tls,
        };
        // Never both hosts' locks at once: two migrations crossing would deadlock.
        let result = dest.receive(vm, then);
        let mut inner = self.lock();
        match result {
            Ok(()) => {
                inner.lifecycle(uuid, "stopped");
                inner.lifecycle(uuid, "undefined");
                inner.migrations.push(record);
                Ok(())
            }
            Err((vm, e)) => {
                inner.guests.push(*vm);
                Err(refused(
                    uuid,
                    format!("migration to {dest_uri} failed: {e}"),
                ))
            }
        }
    }
}
