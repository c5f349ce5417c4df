use super::*;
use serde_json::json;

fn meta(id: Option<&str>, name: &str, mem: u64, max: Option<&str>) -> NovaMeta {
    let mut n = NovaMeta {
        flavor_id: id.map(str::to_string),
        flavor_name: Some(name.to_string()),
        memory: Some(Bytes::from_mib(mem)),
        vcpus: Some(2),
        ..Default::default()
    };
    if let Some(m) = max {
        n.extra_specs.insert("hw:mem_max_mb".into(), m.into());
    }
    n
}

fn flavor(max: &str) -> LiveFlavor {
    parse_flavor(&json!({
        "id": "f1", "name": "m1.scal", "ram": 512, "vcpus": 2,
        "extra_specs": {"hw:mem_max_mb": max, "hw:cpu_max_sockets": "4"},
    }))
    .expect("a flavor")
}

#[test]
fn the_flavor_is_found_by_id_else_by_name() {
    assert_eq!(
        key_of(&meta(Some("f1"), "m1.scal", 512, None)).as_deref(),
        Some("id:f1")
    );
    assert_eq!(
        key_of(&meta(None, "m1.scal", 512, None)).as_deref(),
        Some("name:m1.scal")
    );
    assert_eq!(key_of(&NovaMeta::default()), None);
}

#[test]
fn reads_a_flavor_and_names_a_malformed_spec() {
    let f = flavor("2048");
    assert_eq!(f.ram, Bytes::from_mib(512));
    assert_eq!(f.extra_specs["hw:mem_max_mb"], "2048");
    let e = parse_flavor(&json!({
        "id": "f1", "name": "m1.scal", "ram": 512, "vcpus": 2,
        "extra_specs": {"hw:mem_max_mb": "lots"},
    }))
    .expect_err("a malformed spec");
    assert_eq!(e.name(), "bad_flavor_spec");
    let msg = e.to_string();
    assert!(
        msg.contains("m1.scal") && msg.contains("hw:mem_max_mb") && msg.contains("lots"),
        "{msg}"
    );
    assert_eq!(
        parse_flavor(&json!({"id": "f1", "name": "x"}))
            .expect_err("no ram")
            .name(),
        "bad_flavor_answer"
    );
    // Specs the envelope does not read are not checked.
    assert!(
        parse_flavor(&json!({"id": "f", "name": "x", "ram": 1, "vcpus": 1,
        "extra_specs": {"hw:cpu_policy": "dedicated", "quota:x": "y"}}))
        .is_ok()
    );
}

#[test]
fn the_metadata_stands_until_nova_api_answers_then_the_live_flavor_wins() {
    let c = FlavorCache::new(60.0);
    let mut n = meta(Some("f1"), "m1.scal", 512, Some("1024"));
    let o = c.apply(&mut n, 100.0).expect("an origin");
    assert_eq!(
        (o.source, o.since, o.pending),
        (DOMAIN_METADATA, 100.0, true)
    );
    assert!(
        c.apply(&mut n.clone(), 130.0).is_some_and(|o| !o.pending),
        "nova-api is waited for 30 s at most"
    );
    assert_eq!(n.extra_specs["hw:mem_max_mb"], "1024", "metadata untouched");
    assert_eq!(c.due(100.0), ["id:f1"]);
    assert_eq!(
        c.store("id:f1", Ok(flavor("2048")), 101.0),
        Transition::Live
    );
    assert_ne!(
        c.generation("id:f1", 0.0),
        o.generation,
        "the guest re-reads"
    );
    let o = c.apply(&mut n, 102.0).expect("an origin");
    assert_eq!((o.source, o.since), (NOVA_API, 101.0));
    assert_eq!(n.extra_specs["hw:mem_max_mb"], "2048", "the live flavor");
    // Fresh within the TTL; due after it; the same answer changes nothing.
    assert!(c.due(150.0).is_empty());
    assert_eq!(c.due(161.0), ["id:f1"]);
    let g = c.generation("id:f1", 0.0);
    assert_eq!(
        c.store("id:f1", Ok(flavor("2048")), 161.0),
        Transition::Unchanged
    );
    assert_eq!(c.generation("id:f1", 0.0), g);
    assert_eq!(
        c.store("id:f1", Ok(flavor("4096")), 222.0),
        Transition::Changed
    );
    assert_ne!(c.generation("id:f1", 0.0), g);
}

#[test]
fn falls_back_to_the_metadata_once_per_episode_and_says_why() {
    let c = FlavorCache::new(60.0);
    let mut n = meta(Some("f1"), "m1.scal", 512, Some("1024"));
    c.apply(&mut n, 0.0);
    c.store("id:f1", Ok(flavor("2048")), 1.0);
    let down = FlavorError::Unreachable("connection refused".into());
    assert_eq!(
        c.store("id:f1", Err(down.clone()), 61.0),
        Transition::Fallback(down.clone())
    );
    let mut n = meta(Some("f1"), "m1.scal", 512, Some("1024"));
    let o = c.apply(&mut n, 62.0).expect("an origin");
    assert_eq!(
        (o.source, o.since, o.pending),
        (DOMAIN_METADATA, 61.0, false)
    );
    assert_eq!(o.error_name, Some("nova_unreachable"));
    assert_eq!(
        n.extra_specs["hw:mem_max_mb"], "1024",
        "the metadata is used"
    );
    // A failure is tried again within 10 s, and the same failure is no new episode.
    assert_eq!(c.due(71.0), ["id:f1"]);
    let g = c.generation("id:f1", 0.0);
    assert_eq!(
        c.store(
            "id:f1",
            Err(FlavorError::Unreachable("timeout".into())),
            71.0
        ),
        Transition::Unchanged
    );
    assert_eq!(c.generation("id:f1", 0.0), g);
    let gone = FlavorError::Gone("f1".into());
    assert_eq!(
        c.store("id:f1", Err(gone.clone()), 81.0),
        Transition::Fallback(gone)
    );
    assert_eq!(c.store("id:f1", Ok(flavor("2048")), 91.0), Transition::Live);
    let o = c.apply(&mut n, 92.0).expect("an origin");
    assert_eq!((o.source, o.since, o.error), (NOVA_API, 91.0, None));
}

#[test]
fn off_when_the_ttl_is_zero_and_unused_flavors_are_dropped() {
    let off = FlavorCache::new(0.0);
    let mut n = meta(Some("f1"), "m1.scal", 512, None);
    assert!(off.apply(&mut n, 0.0).is_none());
    assert!(off.due(0.0).is_empty());
    let c = FlavorCache::new(60.0);
    c.apply(&mut n, 0.0);
    assert_eq!(c.due(0.0).len(), 1);
    c.generation("id:f1", 500.0);
    assert_eq!(c.due(601.0).len(), 1, "a guest's tick counts as use");
    assert!(
        c.due(1101.0).is_empty(),
        "no guest named it for ten minutes"
    );
    assert_eq!(c.generation("id:f1", 1101.0), 0);
}

#[test]
fn the_envelope_follows_the_live_flavor() {
    use crate::envelope::{Envelope, FlavorCatalog};
    let mut d = crate::domain::DomainSpec::parse(crate::domain::tests::NOVA_XML).expect("xml");
    let boot = Envelope::from_spec(&d, &FlavorCatalog::new()).expect("envelope");
    assert_eq!(boot.ceiling, Bytes::from_mib(3072), "the metadata's copy");
    let c = FlavorCache::new(60.0);
    let nova = d.nova.as_mut().expect("nova metadata");
    let key = key_of(nova).expect("a key");
    c.apply(nova, 0.0);
    let live = LiveFlavor {
        id: "f".into(),
        name: "m".into(),
        ram: Bytes::from_mib(1024),
        vcpus: 2,
        extra_specs: [("hw:mem_max_mb".to_string(), "2048".to_string())].into(),
    };
    c.store(&key, Ok(live), 1.0);
    c.apply(nova, 2.0);
    let now = Envelope::from_spec(&d, &FlavorCatalog::new()).expect("envelope");
    assert_eq!(now.ceiling, Bytes::from_mib(2048), "nova-api's flavor");
}

#[test]
fn path_segments_are_encoded() {
    assert_eq!(path_segment("m1.small"), "m1.small");
    assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
}
