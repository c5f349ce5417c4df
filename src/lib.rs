//! memscale: sizes virtual machines' memory automatically within each guest's envelope.
//!
//! The pipeline runs one way: the collector reads stats from each host, the planner (a pure
//! function) decides per guest, the actuator resizes, and every decision is audited. See
//! `docs/architecture.md`.

pub mod domain;
pub mod envelope;
pub mod hypervisor;
pub mod libvirt;
pub mod policy;
pub mod planner;
pub mod units;
