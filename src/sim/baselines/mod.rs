//! The baselines: what memscale is measured against, each from its published rules.
//!
//! `Baseline` names them and builds each one's controller; every family lives in its own file
//! with its published constants: `vpa` (Kubernetes), `mom` (oVirt), `proxmox` and `autopilot`
//! (Google); the static allocation and the oracle are in `reference`.

pub mod autopilot;
pub mod mom;
pub mod proxmox;
pub mod reference;
pub mod vpa;

pub use autopilot::AutopilotCtl;
pub use mom::MomCtl;
pub use proxmox::{ProxmoxCtl, PveGuest, pve_compute};
pub use reference::{OracleCtl, StaticCtl};
pub use vpa::VpaCtl;

use super::{Controller, Model};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Static,
    Oracle,
    Mom,
    Proxmox,
    Vpa,
    /// With the constants the paper does not publish (`autopilot:window=12h,margin=5%`).
    Autopilot(autopilot::Params),
}

impl Baseline {
    pub const ALL: [Baseline; 6] = [
        Baseline::Static,
        Baseline::Oracle,
        Baseline::Mom,
        Baseline::Proxmox,
        Baseline::Vpa,
        Baseline::Autopilot(autopilot::Params {
            window_s: 24 * 3600,
            margin_pm: 100,
            oom_bump_pm: 200,
        }),
    ];

    pub fn build(&self, guests: usize, model: &Model) -> Box<dyn Controller> {
        match self {
            Baseline::Vpa => Box::new(VpaCtl::new(guests)),
            Baseline::Mom => Box::new(MomCtl::new()),
            Baseline::Autopilot(p) => Box::new(AutopilotCtl::new(guests, *p)),
            Baseline::Proxmox => Box::new(ProxmoxCtl::new()),
            Baseline::Static => Box::new(StaticCtl),
            Baseline::Oracle => Box::new(OracleCtl::new(model)),
        }
    }
}

impl fmt::Display for Baseline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Baseline::Static => "static",
            Baseline::Oracle => "oracle",
            Baseline::Vpa => "vpa",
            Baseline::Mom => "mom",
            Baseline::Autopilot(p) if *p == autopilot::Params::default() => "autopilot",
            Baseline::Autopilot(p) => return write!(f, "autopilot:{}", p.describe()),
            Baseline::Proxmox => "proxmox",
        })
    }
}

impl FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Baseline, String> {
        if let Some(rest) = s.strip_prefix("autopilot:") {
            return autopilot::Params::parse(rest).map(Baseline::Autopilot);
        }
        Baseline::ALL
            .iter()
            .copied()
            .find(|b| b.to_string() == s)
            .ok_or_else(|| {
                let names: Vec<String> = Baseline::ALL.iter().map(|b| b.to_string()).collect();
                format!("unknown baseline {s:?}: choose from {}", names.join(", "))
            })
    }
}
