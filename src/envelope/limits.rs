//! The policy's limits on an envelope, and the envelope they narrow it to.

use super::{Envelope, Note};
use crate::units::Bytes;

/// The policy's limits on an envelope: tighten only, except an explicit Xen-style floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub min: Option<Bytes>,
    pub max: Option<Bytes>,
    pub floor_below_base: Option<Bytes>,
    pub allow_balloon: bool,
    pub allow_vmem: bool,
    pub allow_dimm: bool,
}

impl Limits {
    pub fn all() -> Limits {
        Limits {
            allow_balloon: true,
            allow_vmem: true,
            allow_dimm: true,
            ..Default::default()
        }
    }
}

impl Envelope {
    /// The envelope as a policy narrows it. Never widens, except the explicit below-base floor.
    pub fn limited(&self, l: &Limits) -> Envelope {
        let mut e = self.clone();
        if !l.allow_vmem && !e.vmem.is_empty() {
            e.vmem.clear();
            e.vmem_step = Bytes(0);
            e.ceiling = e.ceiling.min(e.base);
        }
        if !l.allow_dimm && e.dimm.is_some() {
            e.dimm = None;
            e.ceiling = e.ceiling.min(e.base);
        }
        if !l.allow_balloon && e.balloon {
            e.balloon = false;
            e.floor = e.floor.max(e.base.min(e.ceiling));
        }
        if let Some(f) = l.floor_below_base
            && e.balloon
            && f < e.floor
        {
            e.floor = f;
            e.notes.push(Note::FloorBelowBase { floor_mib: f.mib() });
        }
        let mut tightened = false;
        if let Some(min) = l.min
            && min > e.floor
        {
            e.floor = e.realize_up(min.min(e.ceiling));
            tightened = true;
        }
        if let Some(max) = l.max
            && max < e.ceiling
        {
            e.ceiling = e.realize_down(max.max(e.floor));
            tightened = true;
        }
        if e.ceiling < e.floor {
            e.ceiling = e.floor;
        }
        if tightened {
            e.notes.push(Note::Tightened);
        }
        e.add_room_notes();
        e
    }
}
