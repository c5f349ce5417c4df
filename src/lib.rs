//! memscale: sizes virtual machines' memory automatically within each guest's envelope.
//!
//! The pipeline runs one way: the collector reads stats from each host, the planner (a pure
//! function) decides per guest, the actuator resizes, and every decision is audited. See
//! `docs/architecture.md`.

pub mod actuator;
pub mod api;
pub mod assets;
pub mod audit;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod control;
pub mod coord;
pub mod cpuplan;
pub mod daemon;
pub mod domain;
pub mod envelope;
pub mod exit;
pub mod fairshare;
pub mod hypervisor;
pub mod libvirt;
pub mod liveflavor;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod nova;
pub mod placement;
pub mod planner;
pub mod policy;
pub mod rebalance;
pub mod reload;
pub mod sim;
pub mod state;
pub mod trace;
pub mod units;
pub mod view;
