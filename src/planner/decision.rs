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

/// Why a decision was taken. Holds and resizes alike carry one; which part of memscale gave it
/// is the variant. The JSON is the inner reason's (`{"reason": "short", ...}`), whoever gave it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Reason {
    Plan(PlannerReason),
    Hold(HoldReason),
    Event(EventReason),
}

/// What the planner (`planner::plan`) decided from a guest's reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum PlannerReason {
    /// Predicted MemAvailable is below the grow threshold.
    Short {
        available: Bytes,
        threshold: Bytes,
    },
    /// The guest is swapping in faster than the policy allows.
    Swapping {
        bytes_per_sec: u64,
    },
    /// Demand that recurs (the policy's `recur`) is expected at `expected` soon: grown to
    /// ahead of it.
    Recurring {
        expected: Bytes,
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
}

/// What the guest controller and the daemon decided around the planner: holds while the
/// guest cannot be planned, an operator's size, the host's share, a growth re-asked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum HoldReason {
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
    /// The guest is being live-migrated to `to`: left as it is until it has moved (or not).
    Migrating {
        to: String,
    },
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
    /// A growth was still landing when the guest ran shorter than when it was asked for.
    StillShort {
        available: Bytes,
        asked: Bytes,
        has: Bytes,
    },
    /// The host cannot give every guest what it asks for: this guest gets its fair share.
    /// `took` says how deep the cut went: only its cushion, its headroom too, or its need.
    HostShare {
        wanted: Bytes,
        granted: Bytes,
        took: Squeeze,
    },
    /// With etcd, this daemon lost its lease (etcd unreachable for longer than `ttl`): it
    /// grows the guests of the hosts it held last into free memory only, and shrinks nothing
    /// until the lease is back. `wanted` is the size decided.
    NoLease {
        wanted: Bytes,
    },
}

/// How deep a host's squeeze cut a guest ([`HoldReason::HostShare`]): sharing gives back
/// cushions first, then headroom, and needs last (`crate::fairshare`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Squeeze {
    /// Only memory past its need plus headroom: the cushion a guest keeps for a peak it showed
    /// within `peak_window` (or memory a shrink had not given back yet).
    Cushion,
    /// Part of its headroom too; its need is met.
    Headroom,
    /// Part of its need: the host cannot hold every guest's need.
    Need,
}

/// Something memscale did or saw outside a memory decision: a migration, a DIMM the guest
/// refused, memory or vCPUs never onlined, a vCPU change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum EventReason {
    /// The host cannot hold its guests' needs: this guest is moved to another host.
    Migrate { to: String, deficit: Bytes },
    /// The guest refused to release a DIMM (libvirt's removal-failed event): it is not
    /// asked again for `hold_seconds`, and counts as boot memory meanwhile.
    UnplugRefused { alias: String, hold_seconds: u64 },
    /// Memory was plugged but the guest did not bring it online.
    NotOnlined { plugged: Bytes, onlined: Bytes },
    /// An operator asked for this many vCPUs through the API.
    ManualVcpus { requested: u32 },
    /// A vCPU was plugged but the guest has not run on it (not brought online).
    VcpuNotOnlined { vcpu: u32 },
    /// The CPU policy: the guest kept its vCPUs busy over the window.
    CpuBusy { busy_pct: f64, vcpus: u32 },
    /// The CPU policy: the guest left its vCPUs idle over the window.
    CpuIdle { busy_pct: f64, vcpus: u32 },
    /// The guest's claimed size (its balloon driver's word) is not believed: it is booked
    /// at the size it may hold. `dispute` is `SizeDispute`'s label.
    SizeDisputed {
        dispute: String,
        claimed: Bytes,
        believed: Bytes,
    },
    /// The host's guests, held at their use, hold `over` more than its capacity minus reserve
    /// (`available`) and no move relieves it yet: none is cut below its use.
    OverCapacity { over: Bytes, available: Bytes },
}

impl fmt::Display for PlannerReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlannerReason::Short {
                available,
                threshold,
            } => write!(
                f,
                "short: predicted available {available} below {threshold}"
            ),
            PlannerReason::Swapping { bytes_per_sec } => {
                write!(f, "swapping in at {}/s", Bytes(*bytes_per_sec))
            }
            PlannerReason::Idle {
                available,
                threshold,
            } => write!(
                f,
                "idle: available {available} above {threshold} over the window"
            ),
            PlannerReason::Recurring { expected } => {
                write!(f, "recurring: {expected} expected soon (as one period ago)")
            }
            PlannerReason::BelowFloor => f.write_str("below floor"),
            PlannerReason::AboveCeiling => f.write_str("above ceiling"),
            PlannerReason::InBand { available } => write!(f, "in band: available {available}"),
            PlannerReason::AtCeiling { wanted } => write!(f, "at ceiling: wants {wanted}"),
            PlannerReason::GrowCooldown { seconds_left } => {
                write!(f, "grow cooldown: {seconds_left:.0}s left")
            }
            PlannerReason::ShrinkCooldown { seconds_left } => {
                write!(f, "shrink cooldown: {seconds_left:.0}s left")
            }
            PlannerReason::SmallChange { change } => write!(f, "change of {change} too small"),
            PlannerReason::NoSamples => f.write_str("no stats yet"),
        }
    }
}

impl fmt::Display for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HoldReason::NoDriver => f.write_str("no balloon driver: guest never reported stats"),
            HoldReason::Stale { age_seconds } => {
                write!(f, "stale stats: last update {age_seconds:.0}s ago")
            }
            HoldReason::ResizeInProgress => f.write_str("resize in progress"),
            HoldReason::Unconverged { target, actual } => {
                write!(f, "resize did not converge: asked {target}, has {actual}")
            }
            HoldReason::Pinned => f.write_str("pinned by operator"),
            HoldReason::Migrating { to } => write!(f, "being moved to {to}"),
            HoldReason::Manual { requested } => {
                write!(f, "manual adjust to {requested} by operator")
            }
            HoldReason::NotRunning { state } => write!(f, "not running: {state}"),
            HoldReason::NoMethod => {
                f.write_str("no resize method: no balloon, no virtio-mem and no usable DIMM slots")
            }
            HoldReason::BadEnvelope { message } => write!(f, "bad envelope: {message}"),
            HoldReason::HostError { message } => write!(f, "host error: {message}"),
            HoldReason::HostShare {
                wanted,
                granted,
                took: Squeeze::Cushion,
            } => write!(
                f,
                "cushion given back for the host: keeps {granted} of {wanted} (its need and headroom met); the host is short of memory"
            ),
            HoldReason::HostShare {
                wanted,
                granted,
                took: Squeeze::Headroom,
            } => write!(
                f,
                "host short of memory: wants {wanted}, its fair share is {granted} (its need met, not all its headroom)"
            ),
            HoldReason::HostShare {
                wanted,
                granted,
                took: Squeeze::Need,
            } => write!(
                f,
                "host short of memory: wants {wanted}, its fair share is {granted}, below its need"
            ),
            HoldReason::NoLease { wanted } => write!(
                f,
                "etcd lease lost: wants {wanted}; only growth into free memory until the lease is back"
            ),
            HoldReason::StillShort {
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

impl fmt::Display for EventReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventReason::UnplugRefused {
                alias,
                hold_seconds,
            } => write!(
                f,
                "the guest refused to release DIMM {alias}: not asked again for {}s; it counts as boot memory (the balloon may reclaim it)",
                hold_seconds
            ),
            EventReason::NotOnlined { plugged, onlined } => write!(
                f,
                "the guest did not online plugged memory: {plugged} plugged, {onlined} came online (check memhp_default_state / auto_online_blocks)"
            ),
            EventReason::CpuBusy { busy_pct, vcpus } => write!(
                f,
                "cpu busy: {vcpus} vCPUs {busy_pct:.0}% busy over the window"
            ),
            EventReason::CpuIdle { busy_pct, vcpus } => write!(
                f,
                "cpu idle: {vcpus} vCPUs {busy_pct:.0}% busy over the window"
            ),
            EventReason::ManualVcpus { requested } => {
                write!(f, "manual adjust to {requested} vCPUs by operator")
            }
            EventReason::VcpuNotOnlined { vcpu } => write!(
                f,
                "the guest did not bring vCPU {vcpu} online (no udev rule or CPU hotplug support in the guest)"
            ),
            EventReason::Migrate { to, deficit } => write!(
                f,
                "host short of {deficit} for its guests' needs: moving to {to}"
            ),
            EventReason::SizeDisputed {
                dispute,
                claimed,
                believed,
            } => write!(
                f,
                "the guest claims a size of {claimed} ({dispute}): not believed; booked at {believed}"
            ),
            EventReason::OverCapacity { over, available } => write!(
                f,
                "host over its capacity by {over} ({available} for guests): its guests are held at their use, none cut below it; looking for a move"
            ),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Plan(r) => r.fmt(f),
            Reason::Hold(r) => r.fmt(f),
            Reason::Event(r) => r.fmt(f),
        }
    }
}

impl Reason {
    /// Whether the planner decided this from the guest's reports (and a host squeeze may
    /// change it), rather than an outside hold (pinned, stale, resizing, manual...).
    pub fn is_planned(&self) -> bool {
        match self {
            Reason::Plan(r) => !matches!(r, PlannerReason::AboveCeiling | PlannerReason::NoSamples),
            Reason::Hold(r) => matches!(r, HoldReason::StillShort { .. }),
            Reason::Event(_) => false,
        }
    }

    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Plan(r) => r.label(),
            Reason::Hold(r) => r.label(),
            Reason::Event(r) => r.label(),
        }
    }
}

impl PlannerReason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            PlannerReason::Short { .. } => "short",
            PlannerReason::Swapping { .. } => "swapping",
            PlannerReason::Idle { .. } => "idle",
            PlannerReason::Recurring { .. } => "recurring",
            PlannerReason::BelowFloor => "below_floor",
            PlannerReason::AboveCeiling => "above_ceiling",
            PlannerReason::InBand { .. } => "in_band",
            PlannerReason::AtCeiling { .. } => "at_ceiling",
            PlannerReason::GrowCooldown { .. } => "grow_cooldown",
            PlannerReason::ShrinkCooldown { .. } => "shrink_cooldown",
            PlannerReason::SmallChange { .. } => "small_change",
            PlannerReason::NoSamples => "no_samples",
        }
    }
}

impl HoldReason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            HoldReason::NoDriver => "no_driver",
            HoldReason::Stale { .. } => "stale",
            HoldReason::ResizeInProgress => "in_progress",
            HoldReason::Unconverged { .. } => "unconverged",
            HoldReason::Pinned => "pinned",
            HoldReason::Migrating { .. } => "migrating",
            HoldReason::Manual { .. } => "manual",
            HoldReason::NotRunning { .. } => "not_running",
            HoldReason::NoMethod => "no_method",
            HoldReason::BadEnvelope { .. } => "bad_envelope",
            HoldReason::HostError { .. } => "host_error",
            HoldReason::HostShare { .. } => "host_share",
            HoldReason::StillShort { .. } => "still_short",
            HoldReason::NoLease { .. } => "no_lease",
        }
    }
}

impl EventReason {
    /// A short stable label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            EventReason::Migrate { .. } => "migrate",
            EventReason::UnplugRefused { .. } => "unplug_refused",
            EventReason::NotOnlined { .. } => "not_onlined",
            EventReason::ManualVcpus { .. } => "manual_vcpus",
            EventReason::VcpuNotOnlined { .. } => "vcpu_not_onlined",
            EventReason::CpuBusy { .. } => "cpu_busy",
            EventReason::CpuIdle { .. } => "cpu_idle",
            EventReason::SizeDisputed { .. } => "size_disputed",
            EventReason::OverCapacity { .. } => "over_capacity",
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

#[cfg(test)]
mod wire {
    use super::*;

    /// Whoever gave a reason, its JSON is the inner reason's, as audit records and the API
    /// always wrote it: `{"reason": "<kebab-case name>", fields...}`.
    #[test]
    fn reasons_serialize_as_before_the_split() {
        let cases = [
            (
                Reason::Plan(PlannerReason::Short {
                    available: Bytes(1),
                    threshold: Bytes(2),
                }),
                r#"{"reason":"short","available":1,"threshold":2}"#,
                "short",
            ),
            (
                Reason::Plan(PlannerReason::NoSamples),
                r#"{"reason":"no-samples"}"#,
                "no_samples",
            ),
            (
                Reason::Hold(HoldReason::StillShort {
                    available: Bytes(1),
                    asked: Bytes(2),
                    has: Bytes(3),
                }),
                r#"{"reason":"still-short","available":1,"asked":2,"has":3}"#,
                "still_short",
            ),
            (
                Reason::Hold(HoldReason::ResizeInProgress),
                r#"{"reason":"resize-in-progress"}"#,
                "in_progress",
            ),
            (
                Reason::Hold(HoldReason::HostShare {
                    wanted: Bytes(4),
                    granted: Bytes(3),
                    took: Squeeze::Cushion,
                }),
                r#"{"reason":"host-share","wanted":4,"granted":3,"took":"cushion"}"#,
                "host_share",
            ),
            (
                Reason::Event(EventReason::Migrate {
                    to: "b".into(),
                    deficit: Bytes(5),
                }),
                r#"{"reason":"migrate","to":"b","deficit":5}"#,
                "migrate",
            ),
        ];
        for (r, json, label) in cases {
            assert_eq!(serde_json::to_string(&r).expect("json"), json);
            assert_eq!(r.label(), label);
        }
        assert!(
            Reason::Hold(HoldReason::StillShort {
                available: Bytes(1),
                asked: Bytes(2),
                has: Bytes(3)
            })
            .is_planned()
        );
        assert!(!Reason::Plan(PlannerReason::AboveCeiling).is_planned());
        assert!(!Reason::Hold(HoldReason::Pinned).is_planned());
    }
}
