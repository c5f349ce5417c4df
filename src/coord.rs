//! Coordination between memscale daemons through etcd (issue 6): which daemon acts for a host,
//! and memory promised to destination hosts by migrations under way.
//!
//! - **One decision-maker per host.** A daemon acts on a host (resizes its guests, moves them
//!   away) only while it holds the key `PREFIX/owner/HOST`, written under the daemon's lease.
//!   Two daemons configured for the same host (a standby) never both act: the second waits, and
//!   takes over when the first's lease expires (it died, or lost etcd for longer than `ttl`).
//! - **No destination overfilled.** Before a migration, the mover writes
//!   `PREFIX/arrivals/DEST/GUEST` (size, until when) in a transaction that succeeds only if no
//!   arrival for DEST was written since it read them, and only if the destination's room still
//!   holds every promise plus this one. Two daemons draining two hosts at once into one
//!   destination cannot both take its last room.
//!
//! Without `[coordination]` the same promises are kept in process ([`Promises::Local`]): one
//! daemon for a set of hosts needs no etcd.

use crate::units::{Bytes, Dur};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordConfig {
    /// etcd client URLs, e.g. `["http://10.0.0.1:2379"]`.
    pub etcd: Vec<String>,
    /// Key prefix shared by the daemons that coordinate.
    pub prefix: String,
    /// Lease time: a daemon that stops renewing loses its hosts after this long.
    pub ttl: Dur,
    /// This daemon's name in etcd (default: hostname and process id).
    pub name: Option<String>,
}

impl Default for CoordConfig {
    fn default() -> CoordConfig {
        CoordConfig {
            etcd: Vec::new(),
            prefix: "/memscale".into(),
            ttl: Dur::secs(10),
            name: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: no answer within {0:?}")]
    Timeout(Duration),
    #[error("etcd: no session (lease) yet")]
    NoSession,
    #[error("etcd: reservation contended {0} times")]
    Contended(u32),
}

/// Who acts for a host.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    Me,
    Other(String),
}

/// One promise of memory to a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arrival {
    pub to: String,
    pub guest: String,
    pub from: String,
    #[serde(with = "plain_bytes")]
    pub size: Bytes,
    /// Epoch seconds after which the promise no longer counts.
    pub until: f64,
    #[serde(default)]
    pub by: String,
}

/// Sizes in etcd are plain byte counts (`Bytes` reads only text with a unit).
mod plain_bytes {
    use crate::units::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(b.0)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        u64::deserialize(d).map(Bytes)
    }
}

const CALL: Duration = Duration::from_secs(3);

async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CoordError> {
    match tokio::time::timeout(CALL, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(CoordError::Timeout(CALL)),
    }
}

fn epoch() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A daemon's session with etcd: a client, a lease kept alive in the background, and the time
/// until which that lease is known to hold.
pub struct Coord {
    cfg: CoordConfig,
    name: String,
    client: tokio::sync::Mutex<Option<Client>>,
    lease: AtomicI64,
    /// Epoch seconds until which our lease surely holds (0: no lease).
    valid_until: Mutex<f64>,
}

impl Coord {
    pub fn new(cfg: CoordConfig) -> Coord {
        let name = cfg.name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "memscale".into());
            format!("{host}:{}", std::process::id())
        });
        Coord {
            cfg,
            name,
            client: tokio::sync::Mutex::new(None),
            lease: AtomicI64::new(0),
            valid_until: Mutex::new(0.0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &CoordConfig {
        &self.cfg
    }

    /// Whether our lease is known to hold now.
    pub fn live(&self) -> bool {
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) > epoch()
    }

    async fn client(&self) -> Result<Client, CoordError> {
        let mut c = self.client.lock().await;
        if let Some(c) = c.as_ref() {
            return Ok(c.clone());
        }
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(CALL)
            .with_timeout(CALL);
        let new = timed(Client::connect(self.cfg.etcd.clone(), Some(opts))).await?;
        *c = Some(new.clone());
        Ok(new)
    }

    async fn forget_client(&self) {
        *self.client.lock().await = None;
    }

    fn key(&self, rest: &str) -> String {
        format!("{}/{rest}", self.cfg.prefix.trim_end_matches('/'))
    }

    /// Keep a lease alive until `shutdown`; grant a new one whenever it is lost. Runs for the
    /// daemon's life.
    pub async fn keep_alive(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let ttl = self.cfg.ttl.0.as_secs().max(2) as i64;
        let every = Duration::from_millis((ttl as u64 * 1000 / 3).max(500));
        let mut reported = false;
        loop {
            match self.renew(ttl).await {
                Ok(()) => {
                    if reported {
                        tracing::info!(node = %self.name, "etcd session back");
                        reported = false;
                    }
                }
                Err(e) => {
                    if !reported {
                        tracing::error!(node = %self.name, error = %e, "etcd session lost: this daemon acts for no host until it is back");
                        reported = true;
                    }
                    self.forget_client().await;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        // Give the hosts up at once rather than after the lease runs out.
        let id = self.lease.load(Ordering::SeqCst);
        if id != 0
            && let Ok(mut c) = self.client().await
        {
            let _ = timed(c.lease_revoke(id)).await;
        }
    }

    /// One keep-alive round: renew the lease, or grant a new one.
    async fn renew(&self, ttl: i64) -> Result<(), CoordError> {
        let mut c = self.client().await?;
        let id = self.lease.load(Ordering::SeqCst);
        let sent = epoch();
        if id != 0 {
            let (mut keeper, mut stream) = timed(c.lease_keep_alive(id)).await?;
            timed(keeper.keep_alive()).await?;
            if let Some(r) = timed(stream.message()).await?
                && r.ttl() > 0
            {
                *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + r.ttl() as f64;
                return Ok(());
            }
            tracing::warn!(node = %self.name, lease = id, "etcd lease expired; taking a new one");
        }
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = 0.0;
        let r = timed(c.lease_grant(ttl, None)).await?;
        self.lease.store(r.id(), Ordering::SeqCst);
        *self.valid_until.lock().unwrap_or_else(|p| p.into_inner()) = sent + r.ttl() as f64;
        tracing::info!(node = %self.name, lease = r.id(), ttl = r.ttl(), "etcd session");
        Ok(())
    }

    fn session(&self) -> Result<i64, CoordError> {
        let id = self.lease.load(Ordering::SeqCst);
        if id == 0 || !self.live() {
            return Err(CoordError::NoSession);
        }
        Ok(id)
    }

    /// Take or confirm the right to act for `host`. Our key lives as long as our lease.
    pub async fn own(&self, host: &str) -> Result<Owner, CoordError> {
        let lease = self.session()?;
        let key = self.key(&format!("owner/{host}"));
        let me = format!("{}#{lease:x}", self.name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                me.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let mut c = self.client().await?;
        let r = timed(c.txn(txn)).await?;
        if r.succeeded() {
            return Ok(Owner::Me);
        }
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Get(g) = op
                && let Some(kv) = g.kvs().first()
            {
                let v = String::from_utf8_lossy(kv.value()).to_string();
                return Ok(if v == me { Owner::Me } else { Owner::Other(v) });
            }
        }
        // The key vanished between compare and get: try again next time.
        Ok(Owner::Other(String::new()))
    }

    /// Every promise in force, by destination.
    pub async fn arrivals(&self) -> Result<Vec<Arrival>, CoordError> {
        Ok(self.read_arrivals("").await?.0)
    }

    async fn read_arrivals(&self, to: &str) -> Result<(Vec<Arrival>, i64), CoordError> {
        let mut c = self.client().await?;
        let prefix = if to.is_empty() {
            self.key("arrivals/")
        } else {
            self.key(&format!("arrivals/{to}/"))
        };
        let r = timed(c.get(prefix, Some(GetOptions::new().with_prefix()))).await?;
        let rev = r.header().map(|h| h.revision()).unwrap_or(0);
        let now = epoch();
        let list = r
            .kvs()
            .iter()
            .filter_map(|kv| match serde_json::from_slice::<Arrival>(kv.value()) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e, "unreadable promise in etcd: ignored");
                    None
                }
            })
            .filter(|a| a.until > now)
            .collect();
        Ok((list, rev))
    }

    /// Promise `a.size` on `a.to` if `room` (its capacity minus reserve minus what its guests
    /// hold, as the caller sees it) still holds every unexpired promise plus this one.
    /// Optimistic: retried when another promise to the same destination lands in between.
    pub async fn reserve(&self, a: &Arrival, room: Bytes) -> Result<bool, CoordError> {
        let lease = self.session()?;
        let dir = format!("arrivals/{}/", a.to);
        let mut value = a.clone();
        value.by = self.name.clone();
        let body = serde_json::to_vec(&value).unwrap_or_default();
        for _ in 0..5 {
            let (list, rev) = self.read_arrivals(&a.to).await?;
            let promised: u64 = list
                .iter()
                .filter(|x| x.guest != a.guest)
                .map(|x| x.size.0)
                .sum();
            if promised + a.size.0 > room.0 {
                return Ok(false);
            }
            let prefix = self.key(&dir);
            let key = self.key(&format!("{dir}{}", a.guest));
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(prefix.as_str(), CompareOp::Less, rev + 1).with_prefix(),
                ])
                .and_then([TxnOp::put(
                    key.as_str(),
                    body.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            let mut c = self.client().await?;
            if timed(c.txn(txn)).await?.succeeded() {
                return Ok(true);
            }
        }
        Err(CoordError::Contended(5))
    }

    /// Keep a promise until `until` (after the move, until the destination counts the guest).
    pub async fn extend(&self, to: &str, guest: &str, until: f64) -> Result<(), CoordError> {
        let lease = self.session()?;
        let key = self.key(&format!("arrivals/{to}/{guest}"));
        let mut c = self.client().await?;
        let r = timed(c.get(key.as_str(), None)).await?;
        if let Some(kv) = r.kvs().first()
            && let Ok(mut a) = serde_json::from_slice::<Arrival>(kv.value())
        {
            a.until = until;
            let body = serde_json::to_vec(&a).unwrap_or_default();
            timed(c.put(key, body, Some(PutOptions::new().with_lease(lease)))).await?;
        }
        Ok(())
    }

    pub async fn release(&self, to: &str, guest: &str) -> Result<(), CoordError> {
        let key = self.key(&format!("arrivals/{to}/{guest}"));
        let mut c = self.client().await?;
        timed(c.delete(key, None)).await?;
        Ok(())
    }
}

/// Where promises to destinations are kept: in this process (one daemon for every host it
/// moves guests between) or in etcd (several daemons).
pub enum Promises {
    Local(Mutex<Vec<Arrival>>),
    Etcd(std::sync::Arc<Coord>),
}

impl Promises {
    /// Memory promised to each destination now.
    pub async fn promised(&self) -> Result<Vec<Arrival>, CoordError> {
        match self {
            Promises::Local(m) => {
                let now = epoch();
                let mut v = m.lock().unwrap_or_else(|p| p.into_inner());
                v.retain(|a| a.until > now);
                Ok(v.clone())
            }
            Promises::Etcd(c) => c.arrivals().await,
        }
    }

    /// Promise `a.size` on `a.to` if `room` holds it beside every other promise; atomic
    /// against every other mover (in process: under one lock; across daemons: an etcd
    /// transaction).
    pub async fn reserve(&self, a: &Arrival, room: Bytes) -> Result<bool, CoordError> {
        match self {
            Promises::Local(m) => {
                let now = epoch();
                let mut v = m.lock().unwrap_or_else(|p| p.into_inner());
                v.retain(|x| x.until > now && !(x.to == a.to && x.guest == a.guest));
                let promised: u64 = v.iter().filter(|x| x.to == a.to).map(|x| x.size.0).sum();
                if promised + a.size.0 > room.0 {
                    return Ok(false);
                }
                v.push(a.clone());
                Ok(true)
            }
            Promises::Etcd(c) => c.reserve(a, room).await,
        }
    }

    pub async fn extend(&self, to: &str, guest: &str, until: f64) -> Result<(), CoordError> {
        match self {
            Promises::Local(m) => {
                let mut v = m.lock().unwrap_or_else(|p| p.into_inner());
                for x in v.iter_mut().filter(|x| x.to == to && x.guest == guest) {
                    x.until = until;
                }
                Ok(())
            }
            Promises::Etcd(c) => c.extend(to, guest, until).await,
        }
    }

    pub async fn release(&self, to: &str, guest: &str) -> Result<(), CoordError> {
        match self {
            Promises::Local(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|x| !(x.to == to && x.guest == guest));
                Ok(())
            }
            Promises::Etcd(c) => c.release(to, guest).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(to: &str, guest: &str, mib: u64) -> Arrival {
        Arrival {
            to: to.into(),
            guest: guest.into(),
            from: "x".into(),
            size: Bytes::from_mib(mib),
            until: epoch() + 60.0,
            by: String::new(),
        }
    }

    #[tokio::test]
    async fn local_promises_never_exceed_the_room() {
        let p = Promises::Local(Mutex::new(Vec::new()));
        let room = Bytes::from_mib(1000);
        assert!(p.reserve(&a("c", "g1", 600), room).await.unwrap());
        assert!(!p.reserve(&a("c", "g2", 600), room).await.unwrap());
        assert!(p.reserve(&a("c", "g3", 400), room).await.unwrap());
        // Another destination has its own room.
        assert!(p.reserve(&a("b", "g2", 600), room).await.unwrap());
        p.release("c", "g1").await.unwrap();
        assert!(p.reserve(&a("c", "g2", 600), room).await.unwrap());
        // Expired promises stop counting.
        p.extend("c", "g2", epoch() - 1.0).await.unwrap();
        let left: Vec<_> = p.promised().await.unwrap();
        assert_eq!(
            left.iter().map(|x| x.guest.as_str()).collect::<Vec<_>>(),
            ["g3", "g2"]
        );
    }
}
