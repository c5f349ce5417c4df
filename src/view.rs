//! What the daemon publishes for others to read: each host's and guest's view, the policy
//! status and migration proposals, as the API serves them and `/metrics` renders them. The
//! host loops write these and nothing reads decisions back from them, so this module depends
//! on none of its readers or writers (daemon, api, metrics).

// `Health` is the guest controller's own state (`crate::control`, pure), shown as it is.
use crate::control::Health;
use crate::envelope::{Envelope, Note};
use crate::planner::Decision;
use crate::policy;
use crate::units::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;

/// A guest as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct GuestView {
    pub name: String,
    pub uuid: String,
    pub host: String,
    pub state: Health,
    pub current: Bytes,
    pub target: Bytes,
    pub envelope: Option<Envelope>,
    pub envelope_error: Option<String>,
    pub can_grow: bool,
    pub notes: Vec<Note>,
    pub policy: String,
    pub total: Option<Bytes>,
    pub available: Option<Bytes>,
    pub free: Option<Bytes>,
    pub caches: Option<Bytes>,
    pub used: Option<Bytes>,
    pub stats_age_seconds: Option<f64>,
    pub rss: Option<Bytes>,
    pub pinned: bool,
    pub last_decision: Option<Decision>,
    pub why: Option<String>,
    pub bad_stats: u64,
    /// Its claimed use exceeds what its process holds on the host: capped at that.
    pub rss_capped: bool,
    /// The size the guest itself claims (`balloon.current`); `current` is what the host
    /// books for it.
    pub claimed_size: Option<Bytes>,
    /// Why that claim is not believed (a hostile or broken balloon driver).
    pub size_dispute: Option<crate::control::SizeDispute>,
    pub flavor: Option<String>,
    /// The flavor's RAM (Nova guests): what Nova's Placement already counts for the guest.
    pub flavor_memory: Option<Bytes>,
    /// Where the envelope came from (`nova-api` or `domain-metadata`) and since when, when
    /// live flavors are on.
    pub envelope_source: Option<crate::envelope::Origin>,
    pub project: Option<String>,
    /// The Nova project's id, whose members may adjust the guest through the compute API.
    pub project_id: Option<String>,
    pub tags: Vec<String>,
    /// The vCPU envelope, from the definitions.
    pub vcpus: Option<crate::envelope::Vcpus>,
}

impl GuestView {
    /// A view with nothing in it yet, for a host loop to fill.
    pub(crate) fn blank() -> GuestView {
        GuestView {
            name: String::new(),
            uuid: String::new(),
            host: String::new(),
            state: Health::Starting,
            current: Bytes(0),
            target: Bytes(0),
            envelope: None,
            envelope_error: None,
            can_grow: false,
            notes: Vec::new(),
            policy: String::new(),
            total: None,
            available: None,
            free: None,
            caches: None,
            used: None,
            stats_age_seconds: None,
            rss: None,
            pinned: false,
            last_decision: None,
            why: None,
            bad_stats: 0,
            rss_capped: false,
            claimed_size: None,
            size_dispute: None,
            flavor: None,
            flavor_memory: None,
            envelope_source: None,
            project: None,
            project_id: None,
            tags: Vec::new(),
            vcpus: None,
        }
    }

    pub fn labels(&self) -> policy::GuestLabels<'_> {
        policy::GuestLabels {
            name: &self.name,
            flavor: self.flavor.as_deref(),
            project: self.project.as_deref(),
            tags: &self.tags,
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct HostView {
    pub name: String,
    pub uri: String,
    pub connected: bool,
    pub last_error: Option<String>,
    pub capacity: Bytes,
    pub reserve: Bytes,
    pub committed: Bytes,
    /// What the guests need beyond capacity minus reserve (0: the host holds them).
    pub deficit: Bytes,
    /// What the guests, held at their use, hold beyond capacity minus reserve (0: they fit).
    pub over_capacity: Bytes,
    /// The host machine's own available memory (free, buffers and cache, from libvirt's node
    /// statistics), if it gives them.
    pub node_available: Option<Bytes>,
    /// Whether this daemon acts for the host (false: watched only, or another daemon acts).
    pub acting: bool,
    /// Why not: "watched only" (`manage = false`), or the daemon that acts for it.
    pub standby: Option<String>,
    /// The etcd lease is lost on a host this daemon held last: its guests are only grown.
    pub grow_only: bool,
    pub last_tick: f64,
    pub guests: Vec<GuestView>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct PolicyStatus {
    pub generation: u64,
    pub files: Vec<String>,
    pub policies: Vec<String>,
    /// The last reload's problems while they are not fixed (the previous set stays in force).
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
    pub last_reload: f64,
    /// Config file edits seen on SIGHUP that only a restart applies.
    pub config_refused: Vec<String>,
}

/// A migration proposed while moves need an operator's approval.
#[derive(Debug, Clone, Serialize)]
pub struct Proposal {
    pub id: u64,
    pub from: String,
    pub guest: String,
    pub to: String,
    pub size: Bytes,
    pub deficit: Bytes,
    /// When first proposed, and last found still the best move (epoch seconds).
    pub proposed_at: f64,
    pub last_seen: f64,
    /// proposed, approved, rejected, running, applied, failed, expired, superseded.
    pub state: String,
    pub error: Option<String>,
}

impl Proposal {
    pub fn open(&self) -> bool {
        self.state == "proposed" || self.state == "approved"
    }
}

/// Every guest of every host, as the host loops last published them.
pub fn all_guests(hosts: &BTreeMap<String, HostView>) -> Vec<GuestView> {
    hosts
        .values()
        .flat_map(|h| h.guests.iter().cloned())
        .collect()
}
