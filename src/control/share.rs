//! Sharing one host among its guests' decisions, once for the daemon and the simulator: when
//! what the running guests ask for does not fit the host's capacity minus its reserve, cut
//! the planned decisions to each guest's fair share (`crate::fairshare::share`: floors, then
//! needs, then headroom, then cushions, by shares). A guest's cushion is what it holds past
//! its need plus headroom: the room a `peak_window` policy keeps for a peak it showed within
//! the window. It is kept while the host has room and given back first when the host runs
//! short, before any guest's headroom or need (the decision then says `took: cushion`). Guests held for other reasons (pinned, stale, resizing,
//! manual) keep their size and count as fixed. Sharing never takes a guest below what it
//! uses now (its unreclaimable memory, as its last report says, plus [`USE_MARGIN`]): that
//! would only trade a configured number for a dead guest (seen: two kernels out of memory on
//! a host with gigabytes free, their fair share below their use). When the machine itself
//! has room by its own figures, each guest keeps its need too, past the configured capacity
//! ([`Floor`]). What does not fit then is the host's deficit, for a move, and what the
//! guests hold past the capacity is reported ([`Shared::over`]). Only a machine out of
//! memory by its own figures lets a guest be cut below its use.

use crate::planner::{HoldReason, Squeeze};

use crate::envelope::Envelope;
use crate::fairshare::{Claim, share as fair_share};
use crate::planner::{Decision, Kind, Reason};
use crate::policy::Knobs;
use crate::units::Bytes;

/// Room kept above a guest's use when it is shared.
pub const USE_MARGIN: Bytes = Bytes::from_mib(32);

/// One guest's decision for this tick, as sharing sees it.
pub struct Ask<'a> {
    pub decision: &'a mut Decision,
    /// Its size now.
    pub before: Bytes,
    /// Its policy-limited envelope (None: it has none, and keeps its size).
    pub env: Option<&'a Envelope>,
    pub knobs: &'a Knobs,
    /// Whether the host holds its memory (running or paused).
    pub holds_memory: bool,
    /// The target of a resize still landing.
    pub pending: Option<Bytes>,
    /// What it uses now (MemTotal − MemAvailable of its last report, after the host's
    /// cross-check), if it reported.
    pub using: Option<Bytes>,
}

/// What sharing found of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shared {
    /// The guests' needs (floors and needs, each at most what the guest wants): beyond what
    /// the host can give, only a move can help.
    pub needs: Bytes,
    /// The guests together wanted more than the host can give: they were cut to their shares.
    pub contested: bool,
    /// What the guests were left holding beyond `available`: held at their use (or fixed),
    /// they do not fit, and only a move (or the guests' own shrinking) can help.
    pub over: Bytes,
}

/// What no guest is cut below when the host is shared, chosen from the host machine's own
/// memory (libvirt's node statistics), never from configuration alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// The machine has room to spare by its own figures: each guest keeps its need (what it
    /// uses, or where its trend takes it, plus `min_free`; at most what it asks), even past
    /// the configured capacity; the
    /// host is then over capacity, and says so, until a move relieves it.
    Need,
    /// No figures from the machine: never below its use (nor grown past capacity for it).
    Use,
    /// The machine itself is out of memory: only the envelope's floor holds, and a guest may
    /// be cut below its use (better than the host's own out-of-memory killer choosing).
    Envelope,
}

/// Cut `asks` to what `available` (capacity minus reserve) holds, never below a guest's use.
pub fn share(asks: &mut [Ask<'_>], available: Bytes) -> Shared {
    share_with(asks, available, Floor::Use)
}

/// As [`share`], with the floor the machine's own figures allow.
pub fn share_with(asks: &mut [Ask<'_>], available: Bytes, floor: Floor) -> Shared {
    let mut claims = Vec::with_capacity(asks.len());
    let mut index = Vec::with_capacity(asks.len());
    for (k, a) in asks.iter().enumerate() {
        if !a.holds_memory {
            continue;
        }
        match a.env {
            Some(env) if a.decision.reason.is_planned() && a.pending.is_none() => {
                let want = if a.decision.kind == Kind::Hold {
                    a.before
                } else {
                    a.decision.target
                };
                // Never below its use (and never above its size for that: sharing does not
                // grow a guest).
                let used = a
                    .using
                    .filter(|_| floor != Floor::Envelope)
                    .map(|u| u.saturating_add(USE_MARGIN).min(a.before))
                    .unwrap_or_default();
                let need = a.decision.need.saturating_add(a.knobs.min_free);
                // A climbing guest's need is where its trend takes it (`predicted`): the
                // growth granted a tick at a time lags a guest climbing at tens of MiB/s
                // (seen: a kernel out of memory at its bare need plus `min_free`).
                let kept = match floor {
                    Floor::Need => a
                        .decision
                        .predicted
                        .max(a.decision.need)
                        .saturating_add(a.knobs.min_free)
                        .min(want),
                    Floor::Use | Floor::Envelope => Bytes(0),
                };
                // Past its need plus headroom a guest holds a cushion (a kept peak), given
                // back before any other guest's headroom. A growth is all headroom: what it
                // asks past that is a starved guest's probe for the need it hides.
                let keep = if a.decision.kind == Kind::Grow {
                    want
                } else {
                    a.decision
                        .predicted
                        .max(a.decision.need)
                        .saturating_add(a.decision.headroom)
                        .max(need)
                };
                claims.push(Claim {
                    floor: env.floor.max(used).max(kept),
                    need,
                    keep,
                    want,
                    shares: a.knobs.shares,
                });
                index.push(Some(k));
            }
            _ => {
                let size = a.pending.map(|t| t.max(a.before)).unwrap_or(a.before);
                claims.push(Claim {
                    floor: size,
                    need: size,
                    keep: size,
                    want: size,
                    shares: 1,
                });
                index.push(None);
            }
        }
    }
    let needs = claims.iter().fold(Bytes(0), |acc, c| {
        acc.saturating_add(c.need.max(c.floor).min(c.want.max(c.floor)))
    });
    let wants = claims
        .iter()
        .fold(Bytes(0), |acc, c| acc.saturating_add(c.want.max(c.floor)));
    if wants <= available {
        return Shared {
            needs,
            contested: false,
            over: Bytes(0),
        };
    }
    let grants = fair_share(&claims, available);
    let over = grants
        .iter()
        .fold(Bytes(0), |acc, g| acc.saturating_add(*g))
        .saturating_sub(available);
    for ((c, granted), ix) in claims.iter().zip(grants).zip(index) {
        let Some(k) = ix else { continue };
        if granted >= c.want.max(c.floor) {
            continue;
        }
        let a = &mut asks[k];
        let Some(env) = a.env else { continue };
        let t = env.realize_down(granted);
        let took = if granted >= c.keep.min(c.want) {
            Squeeze::Cushion
        } else if granted >= c.need.min(c.want) {
            Squeeze::Headroom
        } else {
            Squeeze::Need
        };
        a.decision.reason = Reason::Hold(HoldReason::HostShare {
            wanted: c.want,
            granted,
            took,
        });
        a.decision.target = t;
        a.decision.kind = if t > a.before {
            Kind::Grow
        } else if t < a.before {
            Kind::Shrink
        } else {
            Kind::Hold
        };
    }
    Shared {
        needs,
        contested: true,
        over,
    }
}
