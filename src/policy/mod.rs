//! Policies: which guests a rule applies to (selectors and priority) and the knobs that steer
//! the planner. Parsed from TOML files in `policies/`, validated as a whole into a
//! [`PolicySet`] that the daemon swaps atomically on reload.

pub mod parse;

pub use parse::{Diag, Severity, load_dir, load_files, parse_policy_text};

use crate::envelope::{Limits, Method};
use crate::units::{Bytes, Dur, Percent, Rate};
use globset::{Glob, GlobMatcher};
use serde::Serialize;
use std::path::PathBuf;

/// The knobs of the memory planner. Every field has a default; see `docs/policies.md`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Knobs {
    /// MemAvailable to keep free in the guest after a resize (the smallest amount).
    pub headroom: Bytes,
    /// Headroom as a share of the guest's demand, when that is larger than `headroom`.
    pub headroom_pct: Percent,
    /// Grow when predicted MemAvailable falls below this share of the headroom.
    pub grow_at: Percent,
    /// Shrink when MemAvailable over the window stays above this share of the headroom.
    pub shrink_at: Percent,
    /// Never size a guest below its demand plus this much, whatever else the policy says.
    pub min_free: Bytes,
    /// How far ahead growth looks along the demand trend.
    pub predict: Dur,
    /// The span of samples the trend is fitted over.
    pub trend_window: Dur,
    /// The span of samples whose demand percentile a shrink must still cover.
    pub window: Dur,
    /// The percentile of demand over `window` that a shrink must leave room for.
    pub percentile: Percent,
    /// A shrink also leaves room for the highest demand over this span (0: off).
    pub peak_window: Dur,
    /// Demand that recurs with this period (e.g. 24h: the same hour yesterday) is expected
    /// again: the highest need seen one period ago, up to `recur_ahead` later, is grown to
    /// ahead of time and kept by shrinks (0: off; needs `peak_window`).
    pub recur: Dur,
    /// The peak's cushion halves every this long after the peak (0: the whole peak is kept for
    /// `peak_window`).
    pub peak_decay: Dur,
    /// How far ahead of the same time one `recur` period ago the recurring need is looked for.
    pub recur_ahead: Dur,
    /// While a guest's peak history spans less than `peak_window` (it was first seen less
    /// than a window ago: no day of peaks yet), its headroom is at least this (0: off; needs
    /// `peak_window`).
    pub young_headroom: Bytes,
    /// Growth speed limit per guest (0: unlimited).
    pub grow_rate: Rate,
    /// Shrink speed limit per guest (0: unlimited).
    pub shrink_rate: Rate,
    /// Largest single growth (0: unlimited).
    pub max_grow_step: Bytes,
    /// Largest single shrink (0: unlimited).
    pub max_shrink_step: Bytes,
    /// Time between two growths of one guest.
    pub grow_cooldown: Dur,
    /// Time after any growth before the guest may shrink.
    pub shrink_cooldown: Dur,
    /// Time between two shrinks of one guest.
    pub shrink_interval: Dur,
    /// Changes smaller than this are not made (growth to cover demand always is).
    pub min_change: Bytes,
    /// Swap-in faster than this counts as the guest being short of memory.
    pub swap_grow: Rate,
    /// Tighten the envelope's floor (never widens it).
    pub min: Option<Bytes>,
    /// Tighten the envelope's ceiling (never widens it).
    pub max: Option<Bytes>,
    /// The one way to go below the flavor's base RAM (Xen's shrink below boot size).
    pub floor_below_base: Option<Bytes>,
    /// Methods allowed, in preference order.
    pub methods: Vec<Method>,
    /// Keep NUMA nodes balanced (per-node devices move together).
    pub numa_balance: bool,
    /// Weight when guests compete for host memory.
    pub shares: u32,
    /// Stats older than this are stale (0: three stats periods).
    pub stale_after: Dur,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            headroom: Bytes::from_mib(256),
            headroom_pct: Percent(0.10),
            grow_at: Percent(0.60),
            shrink_at: Percent(2.0),
            min_free: Bytes::from_mib(96),
            predict: Dur::secs(5),
            trend_window: Dur::secs(10),
            window: Dur::secs(60),
            percentile: Percent(0.95),
            peak_window: Dur::secs(0),
            recur: Dur::secs(0),
            peak_decay: Dur::secs(0),
            recur_ahead: Dur::secs(3600),
            young_headroom: Bytes(0),
            grow_rate: Rate(Bytes(0)),
            shrink_rate: Rate(Bytes::from_mib(64)),
            max_grow_step: Bytes(0),
            max_shrink_step: Bytes::from_mib(512),
            grow_cooldown: Dur::secs(0),
            shrink_cooldown: Dur::secs(30),
            shrink_interval: Dur::secs(4),
            min_change: Bytes::from_mib(32),
            swap_grow: Rate(Bytes::from_mib(1)),
            min: None,
            max: None,
            floor_below_base: None,
            methods: vec![Method::VirtioMem, Method::Balloon, Method::Dimm],
            numa_balance: true,
            shares: 1000,
            stale_after: Dur::secs(0),
        }
    }
}

impl Knobs {
    pub fn limits(&self) -> Limits {
        Limits {
            min: self.min,
            max: self.max,
            floor_below_base: self.floor_below_base,
            allow_balloon: self.methods.contains(&Method::Balloon),
            allow_vmem: self.methods.contains(&Method::VirtioMem),
            allow_dimm: self.methods.contains(&Method::Dimm),
        }
    }
}

/// The optional vCPU policy (`[policy.cpu]`), off by default: add vCPUs while the guest keeps
/// them busy, remove them while it leaves them idle. See `docs/policies.md`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuKnobs {
    pub enabled: bool,
    /// Add a step of vCPUs when their average busy time over `window` is above this.
    pub grow_at: Percent,
    /// Remove a step when it is below this (and would stay below `grow_at` after).
    pub shrink_at: Percent,
    /// The span busy time is averaged over; a change needs a full window of samples.
    pub window: Dur,
    /// Time after a change before the next.
    pub cooldown: Dur,
    /// Hold when the vCPUs wait on the host's run queue more than this share of the time:
    /// the host is short of CPU and more vCPUs would only wait longer.
    pub max_delay: Percent,
    /// Tighten the vCPU floor and ceiling (never widen them).
    pub min: Option<u32>,
    pub max: Option<u32>,
}

impl Default for CpuKnobs {
    fn default() -> CpuKnobs {
        CpuKnobs {
            enabled: false,
            grow_at: Percent(0.80),
            shrink_at: Percent(0.20),
            window: Dur::secs(60),
            cooldown: Dur::secs(120),
            max_delay: Percent(0.30),
            min: None,
            max: None,
        }
    }
}

/// What a guest is known by, for selectors.
#[derive(Debug, Clone, Default)]
pub struct GuestLabels<'a> {
    pub name: &'a str,
    pub flavor: Option<&'a str>,
    pub project: Option<&'a str>,
    pub tags: &'a [String],
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Selector {
    pub names: Vec<String>,
    pub flavors: Vec<String>,
    pub projects: Vec<String>,
    pub tags: Vec<String>,
    #[serde(skip)]
    globs: Vec<GlobMatcher>,
}

impl Selector {
    pub fn new(
        names: Vec<String>,
        flavors: Vec<String>,
        projects: Vec<String>,
        tags: Vec<String>,
    ) -> Result<Selector, String> {
        let mut globs = Vec::new();
        for n in &names {
            globs.push(
                Glob::new(n)
                    .map_err(|e| format!("bad name glob {n:?}: {}", e.kind()))?
                    .compile_matcher(),
            );
        }
        Ok(Selector {
            names,
            flavors,
            projects,
            tags,
            globs,
        })
    }

    /// Every non-empty criterion must hold (and within one, any listed value).
    pub fn matches(&self, g: &GuestLabels) -> bool {
        (self.globs.is_empty() || self.globs.iter().any(|m| m.is_match(g.name)))
            && (self.flavors.is_empty()
                || g.flavor
                    .is_some_and(|f| self.flavors.iter().any(|x| x == f)))
            && (self.projects.is_empty()
                || g.project
                    .is_some_and(|p| self.projects.iter().any(|x| x == p)))
            && (self.tags.is_empty() || g.tags.iter().any(|t| self.tags.contains(t)))
    }

    /// Whether some guest could match both selectors (conservative for globs).
    pub fn may_overlap(&self, o: &Selector) -> bool {
        fn lists(a: &[String], b: &[String]) -> bool {
            a.is_empty() || b.is_empty() || a.iter().any(|x| b.contains(x))
        }
        let names = self.names.is_empty()
            || o.names.is_empty()
            || self.names.iter().zip(0..).any(|(a, i)| {
                o.names.iter().zip(0..).any(|(b, j)| {
                    a == b
                        || self.globs[i].is_match(b)
                        || o.globs[j].is_match(a)
                        || (is_glob(a) && is_glob(b))
                })
            });
        // A guest has one flavor and one project but may carry many tags: two tag lists can
        // both match one guest even when they share no tag.
        names && lists(&self.flavors, &o.flavors) && lists(&self.projects, &o.projects)
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub name: String,
    pub priority: i64,
    pub dry_run: bool,
    pub selector: Selector,
    pub knobs: Knobs,
    pub cpu: CpuKnobs,
    /// Where it was defined: file and line, for `check --explain` and audit.
    pub origin: String,
}

impl Policy {
    /// The policy a guest gets when no file matches it.
    pub fn builtin() -> Policy {
        Policy {
            name: "builtin".into(),
            priority: i64::MIN,
            dry_run: false,
            selector: Selector::default(),
            knobs: Knobs::default(),
            cpu: CpuKnobs::default(),
            origin: "built-in defaults".into(),
        }
    }
}

/// The policy shipped as `policies/default.toml`, as this binary was built with it: what
/// `memscale simulate` replays by default, and what `memscale run` gives every guest when
/// there is no policy directory (one default, not a second set of knobs).
pub fn shipped_default() -> Policy {
    let (mut ps, diags) = parse_policy_text(
        "policies/default.toml",
        include_str!("../../policies/default.toml"),
    );
    match ps.pop() {
        Some(p) if diags.is_empty() => p,
        // Caught by `shipped_default_policy_parses`; never reached in a tested build.
        _ => {
            let mut p = Policy::builtin();
            p.name = "default".into();
            p
        }
    }
}

/// A validated set of policies, swapped whole on reload.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySet {
    pub generation: u64,
    pub policies: Vec<Policy>,
    pub files: Vec<PathBuf>,
    #[serde(skip)]
    builtin: Policy,
}

impl Default for PolicySet {
    fn default() -> Self {
        PolicySet::new(Vec::new(), Vec::new(), 0)
    }
}

impl PolicySet {
    pub fn new(mut policies: Vec<Policy>, files: Vec<PathBuf>, generation: u64) -> PolicySet {
        // Highest priority first; name breaks ties so the choice is deterministic.
        policies.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.name.cmp(&b.name)));
        PolicySet {
            generation,
            policies,
            files,
            builtin: Policy::builtin(),
        }
    }

    /// The one policy that wins for a guest.
    pub fn select(&self, g: &GuestLabels) -> &Policy {
        self.at(self.select_index(g))
    }

    /// Where the winning policy stands (`policies.len()`: the built-in defaults), for callers
    /// that keep the choice for as long as the guest's labels and the generation last.
    pub fn select_index(&self, g: &GuestLabels) -> usize {
        self.policies
            .iter()
            .position(|p| p.selector.matches(g))
            .unwrap_or(self.policies.len())
    }

    /// The policy at `select_index`'s answer; the built-in defaults past the end.
    pub fn at(&self, i: usize) -> &Policy {
        self.policies.get(i).unwrap_or(&self.builtin)
    }

    /// Every policy matching a guest, winner first, for `check --explain`.
    pub fn candidates(&self, g: &GuestLabels) -> Vec<&Policy> {
        self.policies
            .iter()
            .filter(|p| p.selector.matches(g))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(names: &[&str], flavors: &[&str]) -> Selector {
        Selector::new(
            names.iter().map(|s| s.to_string()).collect(),
            flavors.iter().map(|s| s.to_string()).collect(),
            vec![],
            vec![],
        )
        .unwrap()
    }

    #[test]
    fn selection_by_priority() {
        let mk = |name: &str, prio, s| Policy {
            name: name.into(),
            priority: prio,
            selector: s,
            ..Policy::builtin()
        };
        let set = PolicySet::new(
            vec![
                mk("all", 0, sel(&["*"], &[])),
                mk("db", 10, sel(&["db-*"], &[])),
            ],
            vec![],
            1,
        );
        let g = |n| GuestLabels {
            name: n,
            ..Default::default()
        };
        assert_eq!(set.select(&g("db-1")).name, "db");
        assert_eq!(set.select(&g("web")).name, "all");
        assert_eq!(set.candidates(&g("db-1")).len(), 2);
        let empty = PolicySet::default();
        assert_eq!(empty.select(&g("x")).name, "builtin");
    }

    #[test]
    fn overlap() {
        assert!(sel(&["db-*"], &[]).may_overlap(&sel(&["db-1"], &[])));
        assert!(!sel(&["db-1"], &[]).may_overlap(&sel(&["web-1"], &[])));
        assert!(!sel(&[], &["a"]).may_overlap(&sel(&[], &["b"])));
        assert!(sel(&[], &["a"]).may_overlap(&sel(&["x"], &[])));
        let tag = |t: &str| Selector::new(vec![], vec![], vec![], vec![t.to_string()]).unwrap();
        assert!(
            tag("db").may_overlap(&tag("dev")),
            "a guest may carry both tags"
        );
    }
}
