//! The baselines: what memscale is measured against, each from its published rules.

use super::controllers::{OracleCtl, StaticCtl};
use super::{Controller, Model};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    Static,
    Oracle,
}

impl Baseline {
    pub const ALL: [Baseline; 2] = [Baseline::Static, Baseline::Oracle];

    pub fn build(&self, _guests: usize, model: &Model) -> Box<dyn Controller> {
        match self {
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
        })
    }
}

impl FromStr for Baseline {
    type Err = String;
    fn from_str(s: &str) -> Result<Baseline, String> {
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
