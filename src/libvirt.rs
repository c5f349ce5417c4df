//! The real hypervisor: libvirt through the `virt` crate, plus the raw calls it lacks
//! (bulk domain stats). One connection per host, reopened when it is lost.

use crate::domain;
use crate::hypervisor::{GuestStats, HvError, HvEvent, Hypervisor, NodeMemory, VcpuStat};
use crate::units::Bytes;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::{Arc, Mutex, Once};
use virt::connect::Connect;
use virt::error::{Error as VirtError, ErrorNumber};
use virt::sys;

static INIT: Once = Once::new();

/// Once per process, before any connection: silence libvirt's default error printer and run
/// its event loop on a thread of its own (keepalive and events need it).
pub fn init() {
    INIT.call_once(|| {
        virt::error::clear_error_callback();
        // SAFETY: registering the default event implementation has no preconditions; it must
        // happen before connections are opened, which `Once` guarantees for ours.
        let rc = unsafe { sys::virEventRegisterDefaultImpl() };
        if rc == 0 {
            let spawned = std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| {
                    loop {
                        // SAFETY: the default implementation was registered above.
                        if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                            std::thread::sleep(std::time::Duration::from_millis(100));
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the libvirt event thread");
            }
        } else {
            tracing::warn!("cannot register libvirt's event loop: keepalive is off");
        }
    });
}

/// Events queued by libvirt's callbacks (on its event thread) until the host loop takes them.
#[derive(Default)]
struct EventSink {
    queue: Mutex<std::collections::VecDeque<HvEvent>>,
}

/// At most this many events wait for a tick; past it the oldest are dropped (a tick reads
/// every guest's state anyway: events only make it sooner).
const MAX_QUEUED_EVENTS: usize = 10_000;

impl EventSink {
    fn push(&self, e: HvEvent) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED_EVENTS {
            q.pop_front();
        }
        q.push_back(e);
    }
}

/// An open connection and the event callbacks registered on it.
struct Conn {
    c: Connect,
    callbacks: Vec<c_int>,
    close_registered: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // On a dead connection these fail; libvirt frees the callbacks' data with it.
        for id in self.callbacks.drain(..) {
            // SAFETY: `id` was returned by virConnectDomainEventRegisterAny on this connection.
            unsafe { sys::virConnectDomainEventDeregisterAny(self.c.as_ptr(), id) };
        }
        if self.close_registered {
            // SAFETY: the callback was registered on this connection.
            unsafe { sys::virConnectUnregisterCloseCallback(self.c.as_ptr(), Some(on_close)) };
        }
    }
}

/// A domain's UUID string; empty when libvirt cannot say.
fn dom_uuid(dom: sys::virDomainPtr) -> String {
    let mut buf = [0 as c_char; 80];
    // SAFETY: a valid domain (from a stats record or an event); VIR_UUID_STRING_BUFLEN (37)
    // is less than the buffer.
    if !dom.is_null() && unsafe { sys::virDomainGetUUIDString(dom, buf.as_mut_ptr()) } == 0 {
        cstr(buf.as_ptr())
    } else {
        String::new()
    }
}

fn lifecycle_name(event: c_int) -> &'static str {
    match event as u32 {
        sys::VIR_DOMAIN_EVENT_DEFINED => "defined",
        sys::VIR_DOMAIN_EVENT_UNDEFINED => "undefined",
        sys::VIR_DOMAIN_EVENT_STARTED => "started",
        sys::VIR_DOMAIN_EVENT_SUSPENDED => "suspended",
        sys::VIR_DOMAIN_EVENT_RESUMED => "resumed",
        sys::VIR_DOMAIN_EVENT_STOPPED => "stopped",
        sys::VIR_DOMAIN_EVENT_SHUTDOWN => "shutdown",
        sys::VIR_DOMAIN_EVENT_PMSUSPENDED => "pmsuspended",
        sys::VIR_DOMAIN_EVENT_CRASHED => "crashed",
        _ => "other",
    }
}

// The callbacks run on libvirt's event thread. They must not unwind into C: nothing in them
// panics (poisoned locks are taken as they are).

unsafe extern "C" fn on_lifecycle(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    _detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the EventSink registered with this callback, alive until freed.
    let sink = unsafe { &*(opaque as *const EventSink) };
    sink.push(HvEvent::Lifecycle {
        uuid: dom_uuid(dom),
        event: lifecycle_name(event),
    });
    0
}

unsafe extern "C" fn on_removal_failed(
    _c: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    alias: *const c_char,
    opaque: *mut c_void,
) {
    // SAFETY: as in on_lifecycle.
    let sink = unsafe { &*(opaque as *const EventSink) };
    sink.push(HvEvent::RemovalFailed {
        uuid: dom_uuid(dom),
        alias: cstr(alias),
    });
}

unsafe extern "C" fn on_close(_c: sys::virConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: as in on_lifecycle.
    let sink = unsafe { &*(opaque as *const EventSink) };
    let reason = match reason as u32 {
        sys::VIR_CONNECT_CLOSE_REASON_ERROR => "error",
        sys::VIR_CONNECT_CLOSE_REASON_EOF => "end of file",
        sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE => "keepalive timeout",
        sys::VIR_CONNECT_CLOSE_REASON_CLIENT => "closed by us",
        _ => "unknown",
    };
    sink.push(HvEvent::Closed { reason });
}

unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    // SAFETY: each registration was given its own `Arc::into_raw`, freed once here.
    drop(unsafe { Arc::from_raw(opaque as *const EventSink) });
}

type LifecycleFn =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, c_int, c_int, *mut c_void) -> c_int;
type RemovalFailedFn =
    unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *const c_char, *mut c_void);
type GenericFn = unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void);

/// Register the event callbacks on a fresh connection. A failure only costs promptness (the
/// next tick sees every guest's state anyway), so it is logged, not fatal.
fn register(c: &Connect, sink: &Arc<EventSink>, uri: &str) -> (Vec<c_int>, bool) {
    let mut ids = Vec::new();
    // SAFETY: libvirt calls each callback with the argument list of its event id, which is
    // the signature it is cast from (libvirt's own VIR_DOMAIN_EVENT_CALLBACK does this cast).
    let cbs: [(u32, GenericFn); 2] = unsafe {
        [
            (
                sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                std::mem::transmute::<LifecycleFn, GenericFn>(on_lifecycle),
            ),
            (
                sys::VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                std::mem::transmute::<RemovalFailedFn, GenericFn>(on_removal_failed),
            ),
        ]
    };
    for (id, cb) in cbs {
        let opaque = Arc::into_raw(sink.clone()) as *mut c_void;
        // SAFETY: a valid connection; `opaque` is freed by `free_sink` when libvirt drops the
        // registration (or at once below if it was refused).
        let rc = unsafe {
            sys::virConnectDomainEventRegisterAny(
                c.as_ptr(),
                std::ptr::null_mut(),
                id as c_int,
                Some(cb),
                opaque,
                Some(free_sink),
            )
        };
        if rc < 0 {
            // SAFETY: refused, so libvirt kept no reference to `opaque`.
            unsafe { free_sink(opaque) };
            tracing::warn!(uri, event = id, error = %VirtError::last_error(), "cannot register for libvirt events");
        } else {
            ids.push(rc);
        }
    }
    let opaque = Arc::into_raw(sink.clone()) as *mut c_void;
    // SAFETY: as above.
    let rc = unsafe {
        sys::virConnectRegisterCloseCallback(c.as_ptr(), Some(on_close), opaque, Some(free_sink))
    };
    if rc < 0 {
        // SAFETY: refused, so libvirt kept no reference to `opaque`.
        unsafe { free_sink(opaque) };
    }
    (ids, rc >= 0)
}

pub struct LibvirtHost {
    uri: String,
    conn: Mutex<Option<Conn>>,
    events: Arc<EventSink>,
}

impl LibvirtHost {
    pub fn new(uri: &str) -> LibvirtHost {
        init();
        LibvirtHost {
            uri: uri.to_string(),
            conn: Mutex::new(None),
            events: Arc::new(EventSink::default()),
        }
    }

    /// Run `f` on the open connection, opening it first if needed; a failure that leaves the
    /// connection dead drops it so the next call reconnects.
    fn with_conn<T>(&self, f: impl FnOnce(&Connect) -> Result<T, VirtError>) -> Result<T, HvError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let c = Connect::open(Some(&self.uri)).map_err(|e| HvError::Connect {
                uri: self.uri.clone(),
                message: e.message().to_string(),
            })?;
            // Notice a dead libvirtd within ~15 s even while idle.
            let _ = c.set_keep_alive(5, 3);
            let (callbacks, close_registered) = register(&c, &self.events, &self.uri);
            if !callbacks.is_empty() {
                self.events.push(HvEvent::Registered);
            }
            *guard = Some(Conn {
                c,
                callbacks,
                close_registered,
            });
        }
        let Some(conn) = guard.as_ref().map(|c| &c.c) else {
            return Err(HvError::Other("no connection".into()));
        };
        match f(conn) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !conn.is_alive().unwrap_or(false) {
                    // Dropping the Connect closes it.
                    guard.take();
                    return Err(HvError::Lost {
                        uri: self.uri.clone(),
                        message: e.message().to_string(),
                    });
                }
                Err(HvError::Other(e.message().to_string()))
            }
        }
    }

    fn on_guest<T>(
        &self,
        uuid: &str,
        f: impl FnOnce(&virt::domain::Domain) -> Result<T, VirtError>,
    ) -> Result<T, HvError> {
        let mut missing = false;
        let r = self.with_conn(|c| {
            let d = c.lookup_domain_by_uuid_string(uuid).inspect_err(|e| {
                missing = e.code() == virt::error::ErrorNumberEnum::Known(ErrorNumber::NoDomain);
            })?;
            f(&d)
        });
        match r {
            Err(_) if missing => Err(HvError::NoGuest(uuid.to_string())),
            Err(HvError::Other(message)) => Err(HvError::Guest {
                guest: uuid.to_string(),
                message,
            }),
            other => other,
        }
    }
}

/// Frees the stats list however the parse below ends.
struct StatsList(*mut sys::virDomainStatsRecordPtr);

impl Drop for StatsList {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer came from virConnectGetAllDomainStats and is freed once.
            unsafe { sys::virDomainStatsRecordListFree(self.0) };
        }
    }
}

impl StatsList {
    /// The `n` records libvirt returned.
    fn records(&self, n: usize) -> impl Iterator<Item = &sys::virDomainStatsRecord> {
        // SAFETY: libvirt returned `n` valid record pointers, alive as long as the list.
        (0..n).map(move |i| unsafe { &**self.0.add(i) })
    }
}

/// A record's typed parameters.
fn params(rec: &sys::virDomainStatsRecord) -> &[sys::virTypedParameter] {
    if rec.params.is_null() || rec.nparams <= 0 {
        &[]
    } else {
        // SAFETY: libvirt gives `nparams` parameters at `params`.
        unsafe { std::slice::from_raw_parts(rec.params, rec.nparams as usize) }
    }
}

/// A parameter's name (`balloon.current`, `vcpu.0.time`).
fn field(p: &sys::virTypedParameter) -> &[u8] {
    // SAFETY: `field` is a NUL-terminated array inside the parameter.
    unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_bytes()
}

fn param_u64(p: &sys::virTypedParameter) -> Option<u64> {
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        match p.type_ as u32 {
            sys::VIR_TYPED_PARAM_INT => u64::try_from(p.value.i).ok(),
            sys::VIR_TYPED_PARAM_UINT => Some(p.value.ui as u64),
            sys::VIR_TYPED_PARAM_LLONG => u64::try_from(p.value.l).ok(),
            sys::VIR_TYPED_PARAM_ULLONG => Some(p.value.ul),
            sys::VIR_TYPED_PARAM_DOUBLE => {
                let d = p.value.d;
                (d.is_finite() && d >= 0.0).then_some(d as u64)
            }
            _ => None,
        }
    }
}

fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: libvirt returns NUL-terminated strings that live as long as the record.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Build a guest's stats from the typed parameters of one bulk record.
fn parse_record(name: String, uuid: String, params: &[sys::virTypedParameter]) -> GuestStats {
    GuestStats::from_fields(
        name,
        uuid,
        params
            .iter()
            .filter_map(|p| param_u64(p).map(|v| (field(p), v))),
    )
}

impl Hypervisor for LibvirtHost {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn take_events(&self) -> Vec<HvEvent> {
        let mut q = self.events.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.drain(..).collect()
    }

    fn stats(&self) -> Result<Vec<GuestStats>, HvError> {
        self.with_conn(|c| {
            let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
            // SAFETY: a valid connection and an out-pointer; the list is freed by StatsList.
            let n = unsafe {
                sys::virConnectGetAllDomainStats(
                    c.as_ptr(),
                    sys::VIR_DOMAIN_STATS_STATE | sys::VIR_DOMAIN_STATS_BALLOON,
                    &mut recs,
                    sys::VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT,
                )
            };
            let list = StatsList(recs);
            if n < 0 {
                return Err(VirtError::last_error());
            }
            let mut out = Vec::with_capacity(n as usize);
            for rec in list.records(n as usize) {
                // SAFETY: the record's domain is valid while the list lives.
                let name = cstr(unsafe { sys::virDomainGetName(rec.dom) });
                let uuid = dom_uuid(rec.dom);
                out.push(parse_record(name, uuid, params(rec)));
            }
            Ok(out)
        })
    }

    fn domain_xml(&self, uuid: &str, inactive: bool) -> Result<String, HvError> {
        let flags = if inactive {
            sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        self.on_guest(uuid, |d| d.xml_desc(flags))
    }

    fn set_balloon(&self, uuid: &str, target: Bytes) -> Result<(), HvError> {
        self.on_guest(uuid, |d| {
            d.set_memory_flags(target.kib(), sys::VIR_DOMAIN_MEM_LIVE)
        })
    }

    fn set_virtio_mem(&self, uuid: &str, alias: &str, requested: Bytes) -> Result<(), HvError> {
        let live = self.domain_xml(uuid, false)?;
        let dev =
            domain::virtio_mem_update_xml(&live, alias, requested).map_err(|e| HvError::Guest {
                guest: uuid.to_string(),
                message: e.to_string(),
            })?;
        self.on_guest(uuid, |d| {
            d.update_device_flags(&dev, sys::VIR_DOMAIN_AFFECT_LIVE)
        })
    }

    fn attach_memory(&self, uuid: &str, xml: &str) -> Result<(), HvError> {
        self.on_guest(uuid, |d| {
            d.attach_device_flags(xml, sys::VIR_DOMAIN_AFFECT_LIVE)
        })
    }

    fn detach_alias(&self, uuid: &str, alias: &str) -> Result<(), HvError> {
        let c_alias = std::ffi::CString::new(alias).map_err(|_| HvError::Guest {
            guest: uuid.to_string(),
            message: format!("alias {alias:?} has a NUL byte"),
        })?;
        self.on_guest(uuid, |d| {
            // SAFETY: a valid domain and a NUL-terminated alias that outlives the call.
            let rc = unsafe {
                sys::virDomainDetachDeviceAlias(
                    d.as_ptr(),
                    c_alias.as_ptr(),
                    sys::VIR_DOMAIN_AFFECT_LIVE,
                )
            };
            if rc < 0 {
                Err(VirtError::last_error())
            } else {
                Ok(())
            }
        })
    }

    fn set_vcpus(&self, uuid: &str, count: u32) -> Result<(), HvError> {
        self.on_guest(uuid, |d| {
            d.set_vcpus_flags(count, sys::VIR_DOMAIN_VCPU_LIVE)
        })
    }

    fn vcpu_stats(&self, uuid: &str) -> Result<Vec<VcpuStat>, HvError> {
        self.on_guest(uuid, |d| {
            let mut recs: *mut sys::virDomainStatsRecordPtr = std::ptr::null_mut();
            // SAFETY: a NULL-terminated list of one valid domain; the result list is freed by
            // StatsList.
            let mut doms = [unsafe { d.as_ptr() }, std::ptr::null_mut()];
            let n = unsafe {
                sys::virDomainListGetStats(
                    doms.as_mut_ptr(),
                    sys::VIR_DOMAIN_STATS_VCPU,
                    &mut recs,
                    0,
                )
            };
            let list = StatsList(recs);
            if n < 0 {
                return Err(VirtError::last_error());
            }
            let mut out: Vec<VcpuStat> = Vec::new();
            for rec in list.records(n as usize) {
                for p in params(rec) {
                    let field = String::from_utf8_lossy(field(p));
                    let Some((id, what)) = field
                        .strip_prefix("vcpu.")
                        .and_then(|r| r.split_once('.'))
                        .and_then(|(n, w)| n.parse::<u32>().ok().map(|n| (n, w)))
                    else {
                        continue;
                    };
                    let Some(v) = param_u64(p) else {
                        continue;
                    };
                    let i = match out.iter().position(|s| s.id == id) {
                        Some(i) => i,
                        None => {
                            out.push(VcpuStat {
                                id,
                                ..Default::default()
                            });
                            out.len() - 1
                        }
                    };
                    match what {
                        "time" => out[i].time = v,
                        "delay" => out[i].delay = v,
                        _ => {}
                    }
                }
            }
            Ok(out)
        })
    }

    fn set_stats_period(&self, uuid: &str, seconds: u32) -> Result<(), HvError> {
        self.on_guest(uuid, |d| {
            d.set_memory_stats_period(seconds as i32, sys::VIR_DOMAIN_AFFECT_LIVE)
        })
    }

    fn host_memory(&self) -> Result<Bytes, HvError> {
        self.with_conn(|c| c.node_info().map(|n| Bytes::from_kib(n.memory)))
    }

    fn node_memory(&self) -> Result<NodeMemory, HvError> {
        self.with_conn(|c| {
            let cells = sys::VIR_NODE_MEMORY_STATS_ALL_CELLS;
            let mut n: std::os::raw::c_int = 0;
            // SAFETY: a valid connection; a null array asks only for the number of fields.
            let r = unsafe {
                sys::virNodeGetMemoryStats(c.as_ptr(), cells, std::ptr::null_mut(), &mut n, 0)
            };
            if r < 0 {
                return Err(VirtError::last_error());
            }
            let mut params = vec![
                sys::virNodeMemoryStats {
                    field: [0; 80],
                    value: 0,
                };
                n.max(0) as usize
            ];
            // SAFETY: `params` holds `n` entries for libvirt to fill.
            let r = unsafe {
                sys::virNodeGetMemoryStats(c.as_ptr(), cells, params.as_mut_ptr(), &mut n, 0)
            };
            if r < 0 {
                return Err(VirtError::last_error());
            }
            Ok(NodeMemory::from_fields(
                params.iter().take(n.max(0) as usize).map(|p| {
                    // SAFETY: `field` is a NUL-terminated array inside the entry.
                    let k = unsafe { CStr::from_ptr(p.field.as_ptr()) }.to_bytes();
                    (k, p.value)
                }),
            ))
        })
    }

    fn migrate(
        &self,
        uuid: &str,
        dest_uri: &str,
        data_uri: Option<&str>,
        tls: bool,
    ) -> Result<(), HvError> {
        let mut flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE;
        if tls {
            flags |= sys::VIR_MIGRATE_TLS;
        }
        // On a connection of its own: a live migration lasts as long as it lasts, and the
        // host's other calls (stats, resizes, the abort of this very job) must not queue
        // behind it on the shared one.
        let c = Connect::open(Some(&self.uri)).map_err(|e| HvError::Connect {
            uri: self.uri.clone(),
            message: e.message().to_string(),
        })?;
        let d = c
            .lookup_domain_by_uuid_string(uuid)
            .map_err(|e| match e.code() {
                virt::error::ErrorNumberEnum::Known(ErrorNumber::NoDomain) => {
                    HvError::NoGuest(uuid.to_string())
                }
                _ => HvError::Guest {
                    guest: uuid.to_string(),
                    message: e.message().to_string(),
                },
            })?;
        d.migrate_to_uri2(Some(dest_uri), data_uri, None, flags, None, 0)
            .map(|_| ())
            .map_err(|e| HvError::Guest {
                guest: uuid.to_string(),
                message: e.message().to_string(),
            })
    }

    fn abort_job(&self, uuid: &str) -> Result<(), HvError> {
        self.on_guest(uuid, |d| {
            // SAFETY: `d` is a live domain handle for the duration of the call.
            if unsafe { sys::virDomainAbortJob(d.as_ptr()) } < 0 {
                return Err(VirtError::last_error());
            }
            Ok(())
        })
    }
}
