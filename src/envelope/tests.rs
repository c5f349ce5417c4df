use super::*;
use crate::domain::DomainSpec;
use crate::domain::tests::NOVA_XML;

fn plain(mem: u64, cur: u64, vmem: &[(u64, u64)]) -> DomainSpec {
    DomainSpec {
        name: "g".into(),
        memory: Bytes::from_mib(mem + vmem.iter().map(|v| v.0).sum::<u64>()),
        current_memory: Bytes::from_mib(cur),
        balloon_device: true,
        virtio_mem: vmem
            .iter()
            .enumerate()
            .map(|(i, (s, b))| crate::domain::VirtioMem {
                alias: Some(format!("virtiomem{i}")),
                node: Some(i as u32),
                size: Bytes::from_mib(*s),
                block: Bytes::from_mib(*b),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn plain_libvirt_envelope() {
    let e = Envelope::from_spec(&plain(512, 512, &[(1024, 2)]), &FlavorCatalog::new()).unwrap();
    assert_eq!(e.floor, Bytes::from_mib(512));
    assert_eq!(e.ceiling, Bytes::from_mib(1536));
    assert_eq!(e.base, Bytes::from_mib(512));
    assert_eq!(e.vmem_step, Bytes::from_mib(2));
    assert_eq!(e.source, Source::Libvirt);
    assert_eq!(e.methods(), vec![Method::Balloon, Method::VirtioMem]);
    // balloon-only range below boot size when the definition boots smaller
    let e = Envelope::from_spec(&plain(1024, 512, &[]), &FlavorCatalog::new()).unwrap();
    assert_eq!(
        (e.floor, e.ceiling),
        (Bytes::from_mib(512), Bytes::from_mib(1024))
    );
}

#[test]
fn nova_envelope_and_numa_step() {
    let d = DomainSpec::parse(NOVA_XML).unwrap();
    let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
    assert_eq!(e.source, Source::Nova);
    assert_eq!(e.floor, Bytes::from_mib(1024));
    assert_eq!(e.ceiling, Bytes::from_mib(3072));
    assert_eq!(e.numa_nodes, 2);
    assert_eq!(e.vmem_step, Bytes::from_mib(4));
    let p = e.split(Bytes::from_mib(2048));
    assert_eq!(p.balloon, Bytes::from_mib(1024));
    assert_eq!(p.vmem, vec![Bytes::from_mib(512), Bytes::from_mib(512)]);
    assert_eq!(e.realize_up(Bytes::from_mib(1025)), Bytes::from_mib(1028));
    assert_eq!(e.realize_down(Bytes::from_mib(1027)), Bytes::from_mib(1024));
}

#[test]
fn nova_without_mem_max_has_no_envelope() {
    let xml = NOVA_XML.replace(
        r#"<nova:extraSpec name="hw:mem_max_mb">3072</nova:extraSpec>"#,
        "",
    );
    let e = Envelope::from_spec(&DomainSpec::parse(&xml).unwrap(), &FlavorCatalog::new()).unwrap();
    assert_eq!(e.floor, e.ceiling);
    assert!(e.notes.contains(&Note::NoEnvelope));
}

#[test]
fn ceiling_clamped_and_catalog() {
    let xml = NOVA_XML.replace(">3072<", ">9999<");
    let e = Envelope::from_spec(&DomainSpec::parse(&xml).unwrap(), &FlavorCatalog::new()).unwrap();
    assert_eq!(e.ceiling, Bytes::from_mib(4096));
    assert!(matches!(
        e.notes[0],
        Note::CeilingClamped {
            asked_mib: 9999,
            ..
        }
    ));

    let mut d = DomainSpec::parse(NOVA_XML).unwrap();
    let nova = d.nova.as_mut().unwrap();
    nova.memory = None;
    nova.extra_specs.clear();
    let mut cat = FlavorCatalog::new();
    cat.insert(
        "m1.flex".into(),
        Flavor {
            memory: Bytes::from_mib(1024),
            mem_max: Some(Bytes::from_mib(2048)),
            ..Default::default()
        },
    );
    let e = Envelope::from_spec(&d, &cat).unwrap();
    assert_eq!(e.source, Source::NovaCatalog);
    assert_eq!(e.ceiling, Bytes::from_mib(2048));
    let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
    assert!(matches!(e.notes[0], Note::UnknownFlavor { .. }));
}

#[test]
fn hugepages_fit_or_drop_virtio_mem() {
    let mut d = plain(512, 512, &[(1024, 2)]);
    d.hugepage_size = Some(Bytes::from_gib(1));
    let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
    assert!(!e.balloon);
    assert_eq!(e.vmem_step, Bytes::from_gib(1));
    assert!(e.notes.contains(&Note::HugepagesNoBalloon));
    let mut d = plain(512, 512, &[(512, 2)]);
    d.hugepage_size = Some(Bytes::from_gib(1));
    let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
    assert!(e.vmem.is_empty());
    assert!(
        e.notes
            .iter()
            .any(|n| matches!(n, Note::HugepagesNoVirtioMem { .. }))
    );
    assert!(e.notes.contains(&Note::NoMethod));
}

#[test]
fn limits_tighten_but_never_widen() {
    let e = Envelope::from_spec(&plain(512, 512, &[(1024, 2)]), &FlavorCatalog::new()).unwrap();
    let l = Limits {
        min: Some(Bytes::from_mib(100)),
        max: Some(Bytes::from_gib(8)),
        ..Limits::all()
    };
    let t = e.limited(&l);
    assert_eq!((t.floor, t.ceiling), (e.floor, e.ceiling));
    let l = Limits {
        max: Some(Bytes::from_mib(1001)),
        floor_below_base: Some(Bytes::from_mib(256)),
        ..Limits::all()
    };
    let t = e.limited(&l);
    assert_eq!(t.ceiling, Bytes::from_mib(1000));
    assert_eq!(t.floor, Bytes::from_mib(256));
    let no_vmem = e.limited(&Limits {
        allow_vmem: false,
        ..Limits::all()
    });
    assert_eq!(no_vmem.ceiling, Bytes::from_mib(512));
    assert!(no_vmem.notes.contains(&Note::NoEnvelope));
}

fn dimm_guest(nodes: u32, slots: u32) -> DomainSpec {
    DomainSpec {
        name: "d".into(),
        memory: Bytes::from_mib(512),
        current_memory: Bytes::from_mib(512),
        max_memory: Some(Bytes::from_mib(512 + 4096)),
        max_memory_slots: slots,
        balloon_device: true,
        acpi: true,
        cpu_threads: 1,
        numa: (0..nodes)
            .map(|i| crate::domain::NumaCell {
                id: i,
                memory: Bytes::from_mib(512 / nodes as u64),
                cpus: String::new(),
            })
            .collect(),
        ..Default::default()
    }
}

#[test]
fn dimm_envelope_steps_by_a_dimm_per_node() {
    let e = Envelope::from_spec(&dimm_guest(1, 8), &FlavorCatalog::new()).unwrap();
    assert_eq!(e.methods(), vec![Method::Balloon, Method::Dimm]);
    assert_eq!(e.hot_step(), Bytes::from_mib(256));
    assert_eq!(e.ceiling, Bytes::from_mib(512 + 8 * 256));
    assert!(e.is_realizable(Bytes::from_mib(768)));
    assert!(!e.is_realizable(Bytes::from_mib(700)));
    assert_eq!(e.realize_up(Bytes::from_mib(513)), Bytes::from_mib(768));
    // Two nodes: one DIMM on each, so 512 MiB steps; 7 slots give 6 DIMMs.
    let e = Envelope::from_spec(&dimm_guest(2, 7), &FlavorCatalog::new()).unwrap();
    assert_eq!(e.hot_step(), Bytes::from_mib(512));
    assert_eq!(e.ceiling, Bytes::from_mib(512 + 6 * 256));
    assert!(
        !e.is_realizable(Bytes::from_mib(768)),
        "uneven split refused"
    );
    let p = e.split(Bytes::from_mib(1536));
    assert_eq!(p.dimm, vec![Bytes::from_mib(512), Bytes::from_mib(512)]);
    assert_eq!(p.total(), Bytes::from_mib(1536));
    // Without ACPI QEMU cannot plug: no DIMM method, and a note says why.
    let mut d = dimm_guest(1, 8);
    d.acpi = false;
    let e = Envelope::from_spec(&d, &FlavorCatalog::new()).unwrap();
    assert!(e.dimm.is_none());
    assert!(e.notes.contains(&Note::DimmNoAcpi));
    // A policy without "dimm" keeps the guest at its boot RAM.
    let e = Envelope::from_spec(&dimm_guest(1, 8), &FlavorCatalog::new()).unwrap();
    let l = e.limited(&Limits {
        allow_dimm: false,
        ..Limits::all()
    });
    assert_eq!(l.ceiling, Bytes::from_mib(512));
}

#[test]
fn vcpu_envelope_refusals_name_the_problem() {
    let mut d = dimm_guest(2, 0);
    d.vcpus_max = 8;
    d.vcpus_current = 2;
    let v = Vcpus::from_spec(&d, None);
    assert_eq!((v.floor, v.ceiling, v.step), (2, 8, 2));
    assert!(v.check(4).is_ok());
    let e = v.check(3).unwrap_err();
    assert!(
        matches!(
            e,
            VcpuError::Uneven {
                lower: 2,
                upper: 4,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("nearest valid counts are 2 and 4"));
    assert!(matches!(
        v.check(10),
        Err(VcpuError::BeyondCeiling { ceiling: 8, .. })
    ));
    assert!(matches!(
        v.check(0),
        Err(VcpuError::BelowFloor { floor: 2, .. })
    ));
    // Nova: the flavor's vCPUs are the floor, the max topology the ceiling; SMT steps.
    d.cpu_threads = 2;
    d.nova = Some(crate::domain::NovaMeta {
        vcpus: Some(4),
        extra_specs: [
            ("hw:cpu_max_sockets".to_string(), "1".to_string()),
            ("hw:cpu_max_cores".to_string(), "3".to_string()),
            ("hw:cpu_max_threads".to_string(), "2".to_string()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    let v = Vcpus::from_spec(&d, None);
    assert_eq!((v.floor, v.ceiling, v.step), (4, 6, 4));
    assert!(v.check(4).is_ok());
    assert!(matches!(v.check(6), Err(VcpuError::Uneven { .. })));
    d.cpu_pinned = true;
    let e = Vcpus::from_spec(&d, None).check(4).unwrap_err();
    assert_eq!(e, VcpuError::Pinned);
    assert!(e.to_string().contains("CPU-pinned"));
}
