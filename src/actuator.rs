//! From a decided size to the operations that reach it: which methods, in which order. Growth
//! deflates the balloon up to boot RAM first, then plugs virtio-mem or DIMMs; shrinking
//! unplugs first, then inflates the balloon. The plan is pure; the daemon executes it.
//!
//! DIMMs: growth adds memscale's own DIMMs round-robin over the NUMA nodes (the envelope
//! only allows totals that split evenly), shrinking unplugs the newest on each node. A shrink
//! that unplugs DIMMs stops at the boot RAM: QEMU sizes the balloon against the memory plugged
//! at the moment, and an unplug lands only when the guest has offlined the memory.

use crate::domain::{DIMM_ALIAS_PREFIX, Dimm};
use crate::envelope::{Envelope, Method, Parts};
use crate::units::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// `target` is the guest's whole size as QEMU's balloon takes it: the balloon part plus
    /// the DIMMs plugged when it runs.
    Balloon {
        target: Bytes,
    },
    VirtioMem {
        alias: String,
        requested: Bytes,
    },
    DimmAdd {
        alias: String,
        node: Option<u32>,
        size: Bytes,
    },
    DimmRemove {
        alias: String,
        size: Bytes,
    },
}

impl Op {
    pub fn method(&self) -> Method {
        match self {
            Op::Balloon { .. } => Method::Balloon,
            Op::VirtioMem { .. } => Method::VirtioMem,
            Op::DimmAdd { .. } | Op::DimmRemove { .. } => Method::Dimm,
        }
    }
}

/// Where one step toward `target` can go from `now`: a shrink that unplugs DIMMs stops at the
/// boot RAM (the balloon is inflated in a later step, once the unplug landed).
pub fn step_target(env: &Envelope, now: &Parts, target: Bytes) -> Bytes {
    if target < now.total() && now.dimm_total().0 > 0 && target < env.base {
        env.base.min(now.total())
    } else {
        target
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{target} is not a size this guest's envelope can take")]
    NotRealizable { target: Bytes },
    #[error("virtio-mem device on node {node:?} has no alias in the live definition")]
    NoAlias { node: Option<u32> },
}

/// The operations that take a guest from `now` to `target`, in the order to run them.
/// `dimms` are the guest's DIMMs as its live definition lists them.
pub fn ops(
    env: &Envelope,
    now: &Parts,
    target: Bytes,
    dimms: &[Dimm],
) -> Result<Vec<Op>, PlanError> {
    if !env.is_realizable(target) {
        return Err(PlanError::NotRealizable { target });
    }
    let want = env.split(target);
    let mut balloon = Vec::new();
    if want.balloon != now.balloon {
        balloon.push(Op::Balloon {
            target: want.balloon + now.dimm_total(),
        });
    }
    let dimm = dimm_ops(env, now, &want, dimms);
    let mut vmem = Vec::new();
    for (i, slot) in env.vmem.iter().enumerate() {
        let cur = now.vmem.get(i).copied().unwrap_or(Bytes(0));
        let w = want.vmem.get(i).copied().unwrap_or(Bytes(0));
        if cur != w {
            let alias = slot
                .alias
                .clone()
                .ok_or(PlanError::NoAlias { node: slot.node })?;
            vmem.push(Op::VirtioMem {
                alias,
                requested: w,
            });
        }
    }
    Ok(if target >= now.total() {
        balloon.into_iter().chain(vmem).chain(dimm).collect()
    } else if !dimm.is_empty() {
        // See `step_target`: the balloon waits for the unplug to land.
        vmem.into_iter().chain(dimm).collect()
    } else {
        vmem.into_iter().chain(balloon).collect()
    })
}

/// DIMMs to add or remove, per node, interleaved so that a growth interrupted half-way (a
/// failed call) leaves the nodes as even as it can.
fn dimm_ops(env: &Envelope, now: &Parts, want: &Parts, dimms: &[Dimm]) -> Vec<Op> {
    let Some(room) = env.dimm else {
        return Vec::new();
    };
    let nodes = room.nodes.max(1) as usize;
    let mut per_node: Vec<Vec<Op>> = vec![Vec::new(); nodes];
    for (i, ops) in per_node.iter_mut().enumerate() {
        let cur = now.dimm.get(i).copied().unwrap_or(Bytes(0));
        let w = want.dimm.get(i).copied().unwrap_or(Bytes(0));
        let node = room.numa.then_some(i as u32);
        if w > cur {
            for _ in 0..(w.0 - cur.0) / room.size.0 {
                // Named below, in the order they are plugged.
                ops.push(Op::DimmAdd {
                    alias: String::new(),
                    node,
                    size: room.size,
                });
            }
        } else if w < cur {
            // The newest first: the oldest have had the longest to collect unmovable pages.
            let mut mine: Vec<&Dimm> = dimms
                .iter()
                .filter(|d| d.managed && d.node.unwrap_or(0) as usize == i)
                .collect();
            mine.sort_by_key(|d| std::cmp::Reverse(d.seq()));
            let mut left = cur.0 - w.0;
            for d in mine {
                if left < d.size.0 {
                    break;
                }
                left -= d.size.0;
                if let Some(alias) = &d.alias {
                    ops.push(Op::DimmRemove {
                        alias: alias.clone(),
                        size: d.size,
                    });
                }
            }
        }
    }
    let mut seq = dimms
        .iter()
        .filter_map(Dimm::seq)
        .max()
        .map_or(0, |s| s + 1);
    let mut out = Vec::new();
    let longest = per_node.iter().map(Vec::len).max().unwrap_or(0);
    for k in 0..longest {
        for ops in &per_node {
            if let Some(o) = ops.get(k) {
                let mut o = o.clone();
                if let Op::DimmAdd { alias, node, .. } = &mut o {
                    *alias = format!("{DIMM_ALIAS_PREFIX}{}-{seq}", node.unwrap_or(0));
                    seq += 1;
                }
                out.push(o);
            }
        }
    }
    out
}

/// A label for the methods a plan uses, for audit and metrics.
pub fn method_label(ops: &[Op]) -> String {
    let mut m: Vec<Method> = ops.iter().map(Op::method).collect();
    m.sort();
    m.dedup();
    m.iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("+")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::DomainSpec;
    use crate::envelope::FlavorCatalog;

    #[test]
    fn grow_deflates_first_shrink_unplugs_first() {
        let e = Envelope::from_spec(
            &DomainSpec::parse(crate::domain::tests::NOVA_XML).unwrap(),
            &FlavorCatalog::new(),
        )
        .unwrap();
        let now = Parts {
            balloon: Bytes::from_mib(1000),
            vmem: vec![Bytes(0), Bytes(0)],
            dimm: vec![],
        };
        let o = ops(&e, &now, Bytes::from_mib(2048), &[]).unwrap();
        assert_eq!(
            o[0],
            Op::Balloon {
                target: Bytes::from_mib(1024)
            }
        );
        assert_eq!(
            o[1],
            Op::VirtioMem {
                alias: "virtiomem0".into(),
                requested: Bytes::from_mib(512)
            }
        );
        assert_eq!(o.len(), 3);
        assert_eq!(method_label(&o), "balloon+virtio-mem");
        let now = Parts {
            balloon: Bytes::from_mib(1024),
            vmem: vec![Bytes::from_mib(512), Bytes::from_mib(512)],
            dimm: vec![],
        };
        let o = ops(&e, &now, Bytes::from_mib(1024), &[]).unwrap();
        assert!(matches!(o[0], Op::VirtioMem { .. }));
        assert_eq!(o.len(), 2);
        assert!(
            ops(&e, &now, Bytes::from_mib(1025), &[]).is_err(),
            "misaligned NUMA split refused"
        );
        assert!(
            ops(&e, &now, Bytes::from_mib(9000), &[]).is_err(),
            "beyond ceiling refused"
        );
    }

    #[test]
    fn dimms_go_round_robin_and_come_out_newest_first() {
        let mut spec = crate::domain::DomainSpec {
            memory: Bytes::from_mib(512),
            current_memory: Bytes::from_mib(512),
            max_memory: Some(Bytes::from_mib(4608)),
            max_memory_slots: 8,
            balloon_device: true,
            acpi: true,
            numa: (0..2)
                .map(|i| crate::domain::NumaCell {
                    id: i,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let e = Envelope::from_spec(&spec, &FlavorCatalog::new()).unwrap();
        let now = e.split(Bytes::from_mib(512));
        let o = ops(&e, &now, Bytes::from_mib(1536), &[]).unwrap();
        let nodes: Vec<Option<u32>> = o
            .iter()
            .map(|o| match o {
                Op::DimmAdd { node, .. } => *node,
                _ => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(nodes, vec![Some(0), Some(1), Some(0), Some(1)]);
        // Plugged: memscale's four DIMMs (aliases with sequence numbers), one operator DIMM.
        for (i, op) in o.iter().enumerate() {
            if let Op::DimmAdd { alias, node, size } = op {
                spec.dimms.push(Dimm {
                    alias: Some(alias.clone()),
                    node: *node,
                    size: *size,
                    managed: true,
                });
                assert!(alias.ends_with(&format!("-{i}")), "{alias}");
            }
        }
        let now = e.split(Bytes::from_mib(1536));
        let o = ops(&e, &now, Bytes::from_mib(1024), &spec.dimms).unwrap();
        assert_eq!(
            o,
            vec![
                Op::DimmRemove {
                    alias: format!("{DIMM_ALIAS_PREFIX}0-2"),
                    size: Bytes::from_mib(256)
                },
                Op::DimmRemove {
                    alias: format!("{DIMM_ALIAS_PREFIX}1-3"),
                    size: Bytes::from_mib(256)
                },
            ]
        );
        // Below boot RAM with DIMMs plugged: this step only unplugs.
        assert_eq!(
            step_target(&e, &now, Bytes::from_mib(400)),
            Bytes::from_mib(512)
        );
        let o = ops(&e, &now, Bytes::from_mib(512), &spec.dimms).unwrap();
        assert_eq!(o.len(), 4);
        assert!(o.iter().all(|o| matches!(o, Op::DimmRemove { .. })));
        // The balloon's target counts the DIMMs plugged (QEMU sizes it against them).
        let mut now = e.split(Bytes::from_mib(1024));
        now.balloon = Bytes::from_mib(400);
        let o = ops(&e, &now, Bytes::from_mib(1536), &spec.dimms).unwrap();
        assert_eq!(
            o[0],
            Op::Balloon {
                target: Bytes::from_mib(512 + 512)
            }
        );
    }
}
