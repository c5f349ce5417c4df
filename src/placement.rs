//! Placement kept true (issue 19): memory memscale gives Nova guests beyond their flavors' RAM
//! is held in OpenStack Placement as a `MEMORY_MB` allocation on the host's compute node
//! resource provider, so Nova's scheduler does not place new instances into memory that is
//! already given away.
//!
//! One consumer of memscale's own per host (a UUID v5 of the provider's name: stable across
//! restarts, never one of Nova's instance consumers), written with consumer generations
//! (microversion 1.28), rate-limited (at most once per `interval_seconds`, and only on a change
//! of `min_change_mib`), off the control loop. The first write after a start overwrites
//! whatever a killed daemon left (reconciliation); a clean stop deletes the allocation.

use crate::nova::{Nova, NovaError, Service};
use crate::view::GuestView;
use serde::Serialize;
use serde_json::{Value, json};

/// 1.28: consumer generations on `PUT /allocations/{consumer}`.
pub const MICROVERSION: &str = "placement 1.28";

pub use crate::nova::PlacementConfig;

/// What memscale holds in Placement for one host, for status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostPlacement {
    /// The resource provider's name (the hypervisor hostname) and, once found, its UUID.
    pub provider: String,
    pub provider_uuid: Option<String>,
    pub consumer: String,
    /// MiB held, as last written (None: not written yet since the start).
    pub held_mib: Option<u64>,
    /// MiB the guests were given beyond their flavors at the last look.
    pub wanted_mib: u64,
    pub last_write: Option<f64>,
    pub error: Option<String>,
    pub error_name: Option<&'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("placement cannot be reached: {0}")]
    Unreachable(String),
    #[error("no resource provider named {0:?} in placement (set hypervisor_hostname on the host)")]
    NoProvider(String),
    #[error(
        "placement refused the allocation twice: the consumer's generation moved under memscale ({0})"
    )]
    GenerationConflict(String),
    #[error(
        "placement refused {mib} MiB on {provider}: it exceeds the provider's capacity ({why})"
    )]
    OverCapacity {
        provider: String,
        mib: u64,
        why: String,
    },
    #[error("placement refused the allocation: HTTP {status}: {why}")]
    Refused { status: u16, why: String },
}

impl PlacementError {
    pub fn name(&self) -> &'static str {
        match self {
            PlacementError::Unreachable(_) => "unreachable",
            PlacementError::NoProvider(_) => "no_provider",
            PlacementError::GenerationConflict(_) => "generation_conflict",
            PlacementError::OverCapacity { .. } => "over_capacity",
            PlacementError::Refused { .. } => "refused",
        }
    }
}

/// MiB a host's Nova guests hold beyond their flavors' RAM: each guest's larger of its size
/// and the size it is being taken to (what the host books for it), less its flavor's RAM.
pub fn beyond_flavors_mib(guests: &[GuestView]) -> u64 {
    guests
        .iter()
        .filter_map(|g| {
            let f = g.flavor_memory?;
            Some(g.current.max(g.target).saturating_sub(f).mib())
        })
        .sum()
}

/// Whether to write now: always the first time (reconciling what a killed daemon left), then
/// at most once per interval, on a change of at least `min_change_mib` or a return to zero.
pub fn should_write(last: Option<(u64, f64)>, want: u64, now: f64, cfg: &PlacementConfig) -> bool {
    let Some((held, at)) = last else {
        return true;
    };
    if now - at < cfg.interval_seconds || held == want {
        return false;
    }
    want == 0 || held.abs_diff(want) >= cfg.min_change_mib
}

/// Namespace of memscale's consumer UUIDs (a v4 UUID chosen once; never change it, or
/// allocations left by an older memscale would not be found).
const NAMESPACE: [u8; 16] = [
    0x6d, 0x3f, 0x1b, 0x52, 0x8c, 0x0e, 0x4f, 0x1a, 0x9d, 0x47, 0x2e, 0x61, 0xb3, 0x5c, 0x70, 0x19,
];

/// The consumer memscale's allocation on a provider is made for: UUID v5 of the provider's name.
pub fn consumer_uuid(provider: &str) -> String {
    uuid_v5(&NAMESPACE, provider.as_bytes())
}

/// RFC 4122 name-based UUID (SHA-1), hyphenated lowercase.
pub fn uuid_v5(namespace: &[u8; 16], name: &[u8]) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::from_bytes(*namespace), name)
        .hyphenated()
        .to_string()
}

fn unreachable(e: NovaError) -> PlacementError {
    PlacementError::Unreachable(e.to_string())
}

fn brief(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    s.chars().take(300).collect()
}

/// The UUID of the resource provider named `name`.
pub fn provider_uuid(nova: &Nova, name: &str) -> Result<String, PlacementError> {
    let path = format!(
        "/resource_providers?name={}",
        crate::nova::path_segment(name)
    );
    match nova
        .request(Service::Placement, MICROVERSION, "GET", &path, None)
        .map_err(unreachable)?
    {
        (200, v) => v["resource_providers"][0]["uuid"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| PlacementError::NoProvider(name.to_string())),
        (s, v) => Err(PlacementError::Unreachable(format!(
            "GET {path}: HTTP {s}: {}",
            brief(&v)
        ))),
    }
}

/// A 409's kind: Placement names a generation conflict `placement.concurrent_update`.
fn is_generation_conflict(v: &Value) -> bool {
    v["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e["code"] == "placement.concurrent_update")
}

/// Make memscale's allocation on `provider` (UUID) `mib` MiB (0: delete it). Reads the
/// consumer's generation first and, on a generation conflict, reads it again and retries once.
pub fn write(
    nova: &Nova,
    cfg: &PlacementConfig,
    consumer: &str,
    provider: &str,
    mib: u64,
) -> Result<(), PlacementError> {
    let path = format!("/allocations/{consumer}");
    let call = |method: &str, body: Option<&Value>| {
        nova.request(Service::Placement, MICROVERSION, method, &path, body)
            .map_err(unreachable)
    };
    let mut conflict = String::new();
    for _attempt in 0..2 {
        let (s, cur) = call("GET", None)?;
        if s != 200 {
            return Err(PlacementError::Unreachable(format!(
                "GET {path}: HTTP {s}: {}",
                brief(&cur)
            )));
        }
        let held = cur["allocations"]
            .as_object()
            .is_some_and(|a| !a.is_empty());
        if mib == 0 {
            if !held {
                return Ok(());
            }
            return match call("DELETE", None)? {
                (204 | 404, _) => Ok(()),
                (s, v) => Err(PlacementError::Refused {
                    status: s,
                    why: brief(&v),
                }),
            };
        }
        let body = json!({
            "allocations": {provider: {"resources": {"MEMORY_MB": mib}}},
            "consumer_generation": cur.get("consumer_generation").cloned().unwrap_or(Value::Null),
            "project_id": cfg.project_id,
            "user_id": cfg.user_id,
        });
        match call("PUT", Some(&body))? {
            (204, _) => return Ok(()),
            (409, v) if is_generation_conflict(&v) => {
                conflict = brief(&v);
                continue;
            }
            (409, v) if brief(&v).contains("capacity") => {
                return Err(PlacementError::OverCapacity {
                    provider: provider.to_string(),
                    mib,
                    why: brief(&v),
                });
            }
            (s, v) => {
                return Err(PlacementError::Refused {
                    status: s,
                    why: brief(&v),
                });
            }
        }
    }
    Err(PlacementError::GenerationConflict(conflict))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Bytes;

    #[test]
    fn uuid_v5_matches_the_rfc_examples() {
        // Python: uuid.uuid5(uuid.NAMESPACE_DNS, "python.org")
        let dns = [
            0x6b, 0xa7, 0xb8, 0x10, 0x9d, 0xad, 0x11, 0xd1, 0x80, 0xb4, 0x00, 0xc0, 0x4f, 0xd4,
            0x30, 0xc8,
        ];
        assert_eq!(
            uuid_v5(&dns, b"python.org"),
            "886313e1-3b8a-5372-9b90-0c9aee199e5d"
        );
        assert_eq!(consumer_uuid("h1"), consumer_uuid("h1"));
        assert_ne!(consumer_uuid("h1"), consumer_uuid("h2"));
    }

    fn cfg() -> PlacementConfig {
        PlacementConfig {
            project_id: "p".into(),
            user_id: "u".into(),
            interval_seconds: 10.0,
            min_change_mib: 64,
        }
    }

    #[test]
    fn writes_first_then_rate_limited_on_real_changes() {
        let c = cfg();
        assert!(should_write(None, 0, 0.0, &c), "the first write reconciles");
        assert!(
            !should_write(Some((512, 100.0)), 1024, 105.0, &c),
            "within the interval"
        );
        assert!(should_write(Some((512, 100.0)), 1024, 110.0, &c));
        assert!(
            !should_write(Some((512, 100.0)), 560, 200.0, &c),
            "a change under 64 MiB"
        );
        assert!(should_write(Some((512, 100.0)), 576, 200.0, &c));
        assert!(
            should_write(Some((32, 100.0)), 0, 200.0, &c),
            "back to zero is written"
        );
        assert!(!should_write(Some((0, 100.0)), 0, 200.0, &c));
    }

    #[test]
    fn counts_only_nova_guests_beyond_their_flavor() {
        let g = |flavor: Option<u64>, current: u64, target: u64| GuestView {
            flavor_memory: flavor.map(Bytes::from_mib),
            current: Bytes::from_mib(current),
            target: Bytes::from_mib(target),
            ..GuestView::blank()
        };
        let guests = [
            g(Some(512), 1024, 1024),
            g(Some(512), 512, 768),
            g(Some(1024), 600, 600),
            g(None, 4096, 4096),
        ];
        assert_eq!(beyond_flavors_mib(&guests), 512 + 256);
    }

    #[test]
    fn names_a_generation_conflict() {
        let v = json!({"errors": [{"status": 409, "code": "placement.concurrent_update", "title": "Conflict"}]});
        assert!(is_generation_conflict(&v));
        assert!(!is_generation_conflict(
            &json!({"errors": [{"code": "placement.undefined_code"}]})
        ));
    }
}
