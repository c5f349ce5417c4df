//! What the planner answers for a guest: grow, shrink or hold, to which size, and why.

use crate::units::Bytes;
use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Grow,
    Shrink,
    Hold,
}

/// Why a decision was taken. Holds and resizes alike carry one.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum Reason {
    /// Predicted MemAvailable is below the grow threshold.
    Short {
        available: Bytes,
        threshold: Bytes,
    },
    /// The guest is swapping in faster than the policy allows.
    Swapping {
        bytes_per_sec: u64,
    },
    /// MemAvailable stayed above the shrink threshold over the window.
    Idle {
        available: Bytes,
        threshold: Bytes,
    },
    BelowFloor,
    AboveCeiling,
    /// Nothing to do: MemAvailable is between the thresholds.
    InBand {
        available: Bytes,
    },
    /// The guest wants more than its ceiling.
    AtCeiling {
        wanted: Bytes,
    },
    GrowCooldown {
        seconds_left: f64,
    },
    ShrinkCooldown {
        seconds_left: f64,
    },
    /// The change would be smaller than `min_change`.
    SmallChange {
        change: Bytes,
    },
    NoSamples,
    // Holds decided outside the planner, kept here so every decision has one reason type.
    NoDriver,
    Stale {
        age_seconds: f64,
    },
    ResizeInProgress,
    Unconverged {
        target: Bytes,
        actual: Bytes,
    },
    Pinned,
    /// An operator asked for this size through the API.
    Manual {
        requested: Bytes,
    },
    NotRunning {
        state: String,
    },
    NoMethod,
    BadEnvelope {
        message: String,
    },
    HostError {
        message: String,
    },
    /// The host cannot hold its guests' needs: this guest is moved to another host.
    Migrate {
        to: String,
        deficit: Bytes,
    },
    /// A growth was still landing when the guest ran shorter than when it was asked for.
    StillShort {
        available: Bytes,
        asked: Bytes,
        has: Bytes,
    },
    /// The host cannot give every guest what it asks for: this guest gets its fair share.
    HostShare {
        wanted: Bytes,
        granted: Bytes,
    },
    /// The guest refused to release a DIMM (libvirt's removal-failed event): it is not
    /// asked again for `hold_seconds`, and counts as boot memory meanwhile.
    UnplugRefused {
        alias: String,
        hold_seconds: u64,
    },
    /// Memory was plugged but the guest did not bring it online.
    NotOnlined {
        plugged: Bytes,
        onlined: Bytes,
    },
    /// An operator asked for this many vCPUs through the API.
    ManualVcpus {
        requested: u32,
    },
    /// A vCPU was plugged but the guest has not run on it (not brought online).
    VcpuNotOnlined {
        vcpu: u32,
    },
    /// The CPU policy: the guest kept its vCPUs busy over the window.
    CpuBusy {
        busy_pct: f64,
        vcpus: u32,
    },
    /// The CPU policy: the guest left its vCPUs idle over the window.
    CpuIdle {
        busy_pct: f64,
        vcpus: u32,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Short {
                available,
                threshold,
            } => write!(
                f,
                "short: predicted available {available} below {threshold}"
            ),
            Reason::Swapping { bytes_per_sec } => {
                write!(f, "swapping in at {}/s", Bytes(*bytes_per_sec))
            }
            Reason::Idle {
                available,
                threshold,
            } => write!(
                f,
                "idle: available {available} above {threshold} over the window"
            ),
            Reason::BelowFloor => f.write_str("below floor"),
            Reason::AboveCeiling => f.write_str("above ceiling"),
            Reason::InBand { available } => write!(f, "in band: available {available}"),
            Reason::AtCeiling { wanted } => write!(f, "at ceiling: wants {wanted}"),
            Reason::GrowCooldown { seconds_left } => {
                write!(f, "grow cooldown: {seconds_left:.0}s left")
            }
            Reason::ShrinkCooldown { seconds_left } => {
                write!(f, "shrink cooldown: {seconds_left:.0}s left")
            }
            Reason::SmallChange { change } => write!(f, "change of {change} too small"),
            Reason::NoSamples => f.write_str("no stats yet"),
            Reason::NoDriver => f.write_str("no balloon driver: guest never reported stats"),
            Reason::Stale { age_seconds } => {
                write!(f, "stale stats: last update {age_seconds:.0}s ago")
            }
            Reason::ResizeInProgress => f.write_str("resize in progress"),
            Reason::Unconverged { target, actual } => {
                write!(f, "resize did not converge: asked {target}, has {actual}")
            }
            Reason::Pinned => f.write_str("pinned by operator"),
            Reason::Manual { requested } => write!(f, "manual adjust to {requested} by operator"),
            Reason::NotRunning { state } => write!(f, "not running: {state}"),
            Reason::NoMethod => {
                f.write_str("no resize method: no balloon, no virtio-mem and no usable DIMM slots")
            }
            Reason::UnplugRefused {
                alias,
                hold_seconds,
            } => write!(
                f,
                "the guest refused to release DIMM {alias}: not asked again for {}s; it counts as boot memory (the balloon may reclaim it)",
                hold_seconds
            ),
            Reason::NotOnlined { plugged, onlined } => write!(
                f,
                "the guest did not online plugged memory: {plugged} plugged, {onlined} came online (check memhp_default_state / auto_online_blocks)"
            ),
            Reason::CpuBusy { busy_pct, vcpus } => write!(
                f,
                "cpu busy: {vcpus} vCPUs {busy_pct:.0}% busy over the window"
            ),
            Reason::CpuIdle { busy_pct, vcpus } => write!(
                f,
                "cpu idle: {vcpus} vCPUs {busy_pct:.0}% busy over the window"
            ),
            Reason::ManualVcpus { requested } => {
                write!(f, "manual adjust to {requested} vCPUs by operator")
            }
            Reason::VcpuNotOnlined { vcpu } => write!(
                f,
                "the guest did not bring vCPU {vcpu} online (no udev rule or CPU hotplug support in the guest)"
            ),
            Reason::BadEnvelope { message } => write!(f, "bad envelope: {message}"),
            Reason::HostError { message } => write!(f, "host error: {message}"),
            Reason::Migrate { to, deficit } => write!(
                f,
                "host short of {deficit} for its guests' needs: moving to {to}"
            ),
            Reason::HostShare { wanted, granted } => write!(
                f,
                "host short of memory: wants {wanted}, its fair share is {granted}"
            ),
            Reason::StillShort {
                available,
                asked,
                has,
            } => write!(
                f,
                "still short while growing: available {available}, has {has} of {asked} asked"
            ),
        }
    }
}

impl Reason {
    /// Whether the planner decided this from the guest's reports (and a host squeeze may
    /// change it), rather than an outside hold (pinned, stale, resizing, manual...).
    pub fn is_planned(&self) -> bool {
        matches!(
            self,
            Reason::Short { .. }
                | Reason::StillShort { .. }
                | Reason::Swapping { .. }
                | Reason::Idle { .. }
                | Reason::BelowFloor
                | Reason::InBand { .. }
                | Reason::AtCeiling { .. }
                | Reason::GrowCooldown { .. }
                | Reason::ShrinkCooldown { .. }
                | Reason::SmallChange { .. }
        )
    }

    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Short { .. } => "short",
            Reason::Swapping { .. } => "swapping",
            Reason::Idle { .. } => "idle",
            Reason::BelowFloor => "below_floor",
            Reason::AboveCeiling => "above_ceiling",
            Reason::InBand { .. } => "in_band",
            Reason::AtCeiling { .. } => "at_ceiling",
            Reason::GrowCooldown { .. } => "grow_cooldown",
            Reason::ShrinkCooldown { .. } => "shrink_cooldown",
            Reason::SmallChange { .. } => "small_change",
            Reason::NoSamples => "no_samples",
            Reason::NoDriver => "no_driver",
            Reason::Stale { .. } => "stale",
            Reason::ResizeInProgress => "in_progress",
            Reason::Unconverged { .. } => "unconverged",
            Reason::Pinned => "pinned",
            Reason::Manual { .. } => "manual",
            Reason::NotRunning { .. } => "not_running",
            Reason::NoMethod => "no_method",
            Reason::BadEnvelope { .. } => "bad_envelope",
            Reason::HostError { .. } => "host_error",
            Reason::HostShare { .. } => "host_share",
            Reason::Migrate { .. } => "migrate",
            Reason::StillShort { .. } => "still_short",
            Reason::UnplugRefused { .. } => "unplug_refused",
            Reason::NotOnlined { .. } => "not_onlined",
            Reason::ManualVcpus { .. } => "manual_vcpus",
            Reason::VcpuNotOnlined { .. } => "vcpu_not_onlined",
            Reason::CpuBusy { .. } => "cpu_busy",
            Reason::CpuIdle { .. } => "cpu_idle",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub kind: Kind,
    /// The size asked for (equal to the current size on a hold).
    pub target: Bytes,
    pub reason: Reason,
    /// Estimated need now, predicted need for growth, and need the shrink must cover.
    pub need: Bytes,
    pub predicted: Bytes,
    pub headroom: Bytes,
}

impl Decision {
    pub fn hold(size: Bytes, reason: Reason) -> Decision {
        Decision {
            kind: Kind::Hold,
            target: size,
            reason,
            need: Bytes(0),
            predicted: Bytes(0),
            headroom: Bytes(0),
        }
    }
}
