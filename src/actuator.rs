//! From a decided size to the operations that reach it: which methods, in which order. Growth
//! deflates the balloon up to boot RAM first, then plugs virtio-mem; shrinking unplugs
//! virtio-mem first, then inflates the balloon. The plan is pure; the daemon executes it.

use crate::envelope::{Envelope, Method, Parts};
use crate::units::Bytes;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    Balloon { target: Bytes },
    VirtioMem { alias: String, requested: Bytes },
}

impl Op {
    pub fn method(&self) -> Method {
        match self {
            Op::Balloon { .. } => Method::Balloon,
            Op::VirtioMem { .. } => Method::VirtioMem,
        }
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
pub fn ops(env: &Envelope, now: &Parts, target: Bytes) -> Result<Vec<Op>, PlanError> {
    if !env.is_realizable(target) {
        return Err(PlanError::NotRealizable { target });
    }
    let want = env.split(target);
    let mut balloon = Vec::new();
    if want.balloon != now.balloon {
        balloon.push(Op::Balloon {
            target: want.balloon,
        });
    }
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
        balloon.into_iter().chain(vmem).collect()
    } else {
        vmem.into_iter().chain(balloon).collect()
    })
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
        };
        let o = ops(&e, &now, Bytes::from_mib(2048)).unwrap();
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
        };
        let o = ops(&e, &now, Bytes::from_mib(1024)).unwrap();
        assert!(matches!(o[0], Op::VirtioMem { .. }));
        assert_eq!(o.len(), 2);
        assert!(
            ops(&e, &now, Bytes::from_mib(1025)).is_err(),
            "misaligned NUMA split refused"
        );
        assert!(
            ops(&e, &now, Bytes::from_mib(9000)).is_err(),
            "beyond ceiling refused"
        );
    }
}
