//! Nova's flavors as the envelope reads them: the configured catalog, for releases that write
//! only the flavor name, and the extra-spec values that bound memory.

use super::EnvelopeError;
use crate::units::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One flavor in the configured catalog, for Nova releases that write only the flavor name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Flavor {
    pub memory: Bytes,
    #[serde(default)]
    pub mem_max: Option<Bytes>,
    #[serde(default)]
    pub numa_nodes: Option<u32>,
    #[serde(default)]
    pub vcpus: Option<u32>,
}

pub type FlavorCatalog = BTreeMap<String, Flavor>;

pub(super) fn spec_mib(
    extra: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<Bytes>, EnvelopeError> {
    match extra.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u64>()
            .map(|m| Some(Bytes::from_mib(m)))
            .map_err(|_| EnvelopeError::BadExtraSpec {
                key: key.to_string(),
                value: v.clone(),
            }),
    }
}

/// `hw:mem_page_size`: `small`, `large`, `any`, or a size such as `2MB`, `1GB`, `2048` (KiB).
pub(super) fn nova_page_size(v: &str) -> Option<Bytes> {
    let v = v.trim();
    match v {
        "small" | "any" | "" => None,
        "large" => Some(Bytes::from_mib(2)),
        _ => {
            let (num, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
            let n: u64 = num.parse().ok()?;
            let mult = match unit.trim().to_ascii_uppercase().as_str() {
                "" | "KB" | "K" | "KIB" => 1 << 10,
                "MB" | "M" | "MIB" => 1 << 20,
                "GB" | "G" | "GIB" => 1 << 30,
                _ => return None,
            };
            let b = n.checked_mul(mult)?;
            (b > 4096).then_some(Bytes(b))
        }
    }
}
