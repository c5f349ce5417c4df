//! What a domain's XML says about its memory: sizes, virtio-mem devices, DIMMs, NUMA cells,
//! huge pages, the balloon device, vCPUs and the OpenStack Nova metadata.
//!
//! Pure parsing of text: nothing here talks to libvirt, so the simulator and tests can build a
//! [`DomainSpec`] from a string.

use crate::units::Bytes;
use std::collections::BTreeMap;

pub const NOVA_NS: &str = "http://openstack.org/xmlns/libvirt/nova/1.1";
/// Namespace of memscale's own metadata element, for tags operators put on guests:
/// `<memscale:tags xmlns:memscale="urn:memscale:1"><memscale:tag>db</memscale:tag></memscale:tags>`.
pub const MEMSCALE_NS: &str = "urn:memscale:1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("domain xml does not parse: {0}")]
    Xml(String),
    #[error("domain xml has no <{0}> element")]
    Missing(&'static str),
    #[error("<{element}> has a bad value {value:?}")]
    BadValue { element: String, value: String },
    #[error("<{element}> has unknown unit {unit:?}")]
    BadUnit { element: String, unit: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NumaCell {
    pub id: u32,
    pub memory: Bytes,
    pub cpus: String,
}

/// A virtio-mem device as defined (and, in live XML, its current plugged size).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VirtioMem {
    pub alias: Option<String>,
    pub node: Option<u32>,
    pub size: Bytes,
    pub block: Bytes,
    pub requested: Bytes,
    pub current: Option<Bytes>,
}

/// Aliases of the DIMMs memscale plugs: `ua-` makes them user aliases libvirt keeps; the rest
/// is the node and a sequence number (`ua-memscale-dimm-1-7`).
pub const DIMM_ALIAS_PREFIX: &str = "ua-memscale-dimm-";

/// Size of each DIMM memscale plugs: x86 hotplug works in 128 MiB sections and QEMU aligns
/// DIMMs to 256 MiB on some machines, so 256 MiB is the finest size that always works.
pub const DIMM_SIZE: Bytes = Bytes::from_mib(256);

/// A hot-plugged (or cold-plugged) DIMM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dimm {
    pub alias: Option<String>,
    pub node: Option<u32>,
    pub size: Bytes,
    /// Plugged by memscale (by its alias), so memscale may unplug it. Others (an operator's,
    /// or one the guest refused to release) count as boot memory.
    pub managed: bool,
}

impl Dimm {
    /// The sequence number in a memscale alias.
    pub fn seq(&self) -> Option<u64> {
        let rest = self.alias.as_deref()?.strip_prefix(DIMM_ALIAS_PREFIX)?;
        rest.rsplit('-').next()?.parse().ok()
    }
}

/// The `<memory model='dimm'>` element of a DIMM to hot-plug.
pub fn dimm_xml(alias: &str, node: Option<u32>, size: Bytes) -> String {
    let node = node
        .map(|n| format!("<node>{n}</node>"))
        .unwrap_or_default();
    format!(
        "<memory model='dimm'><alias name='{alias}'/><target><size unit='KiB'>{}</size>{node}</target></memory>",
        size.kib()
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NovaMeta {
    pub flavor_name: Option<String>,
    /// `<nova:flavor id=…>` (Nova 32 and later): the flavor's id in nova-api.
    pub flavor_id: Option<String>,
    pub memory: Option<Bytes>,
    pub vcpus: Option<u32>,
    pub extra_specs: BTreeMap<String, String>,
    pub project: Option<String>,
    /// The project's id (`<nova:project uuid=...>`): whose members may adjust the server.
    pub project_id: Option<String>,
    pub user: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DomainSpec {
    pub name: String,
    pub uuid: String,
    /// `<memory>`: boot RAM plus every memory device's full size.
    pub memory: Bytes,
    /// `<currentMemory>`: the balloon target (live XML: plus plugged virtio-mem).
    pub current_memory: Bytes,
    /// `<maxMemory slots=…>`: the ceiling for DIMM hotplug.
    pub max_memory: Option<Bytes>,
    pub max_memory_slots: u32,
    pub numa: Vec<NumaCell>,
    pub virtio_mem: Vec<VirtioMem>,
    pub dimms: Vec<Dimm>,
    /// A `<memballoon>` other than model `none`.
    pub balloon_device: bool,
    pub stats_period: Option<u32>,
    /// Page size of `<memoryBacking><hugepages>`, if the guest is backed by huge pages.
    pub hugepage_size: Option<Bytes>,
    pub vcpus_max: u32,
    pub vcpus_current: u32,
    pub cpu_pinned: bool,
    /// Threads per core of `<cpu><topology>` (1 when absent).
    pub cpu_threads: u32,
    /// `<features><acpi/>`: without it QEMU has no hotplug controller for DIMMs or vCPUs.
    pub acpi: bool,
    pub nova: Option<NovaMeta>,
    pub tags: Vec<String>,
}

impl DomainSpec {
    pub fn virtio_mem_size(&self) -> Bytes {
        self.virtio_mem.iter().map(|d| d.size).sum()
    }
    /// The DIMMs memscale may unplug (its own), in total.
    pub fn dimm_size(&self) -> Bytes {
        self.dimms
            .iter()
            .filter(|d| d.managed)
            .map(|d| d.size)
            .sum()
    }
    /// The RAM the guest boots with (the most the balloon alone can give it), with any DIMM
    /// memscale did not plug.
    pub fn base_memory(&self) -> Bytes {
        self.memory
            .saturating_sub(self.virtio_mem_size())
            .saturating_sub(self.dimm_size())
    }

    pub fn parse(xml: &str) -> Result<DomainSpec, DomainError> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| DomainError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "domain" {
            return Err(DomainError::Missing("domain"));
        }
        let mut d = DomainSpec {
            name: child_text(root, "name").unwrap_or_default(),
            uuid: child_text(root, "uuid").unwrap_or_default(),
            ..Default::default()
        };
        let mem = child(root, "memory").ok_or(DomainError::Missing("memory"))?;
        d.memory = sized(mem)?;
        d.current_memory = match child(root, "currentMemory") {
            Some(n) => sized(n)?,
            None => d.memory,
        };
        if let Some(n) = child(root, "maxMemory") {
            d.max_memory = Some(sized(n)?);
            d.max_memory_slots = n
                .attribute("slots")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        }
        if let Some(v) = child(root, "vcpu") {
            d.vcpus_max = number(v, "vcpu")? as u32;
            d.vcpus_current = v
                .attribute("current")
                .and_then(|s| s.parse().ok())
                .unwrap_or(d.vcpus_max);
            if v.attribute("cpuset").is_some() {
                d.cpu_pinned = true;
            }
        }
        if let Some(ct) = child(root, "cputune")
            && ct.children().any(|c| c.has_tag_name("vcpupin"))
        {
            d.cpu_pinned = true;
        }
        d.cpu_threads = 1;
        if let Some(t) = child(root, "cpu").and_then(|c| child(c, "topology")) {
            d.cpu_threads = t
                .attribute("threads")
                .and_then(|s| s.parse().ok())
                .unwrap_or(1u32)
                .max(1);
        }
        d.acpi = child(root, "features").is_some_and(|f| child(f, "acpi").is_some());
        if let Some(cpu) = child(root, "cpu")
            && let Some(numa) = child(cpu, "numa")
        {
            for cell in numa.children().filter(|c| c.has_tag_name("cell")) {
                d.numa.push(NumaCell {
                    id: cell
                        .attribute("id")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(d.numa.len() as u32),
                    memory: match cell.attribute("memory") {
                        Some(m) => scaled(m, cell.attribute("unit"), "cell")?,
                        None => Bytes(0),
                    },
                    cpus: cell.attribute("cpus").unwrap_or("").to_string(),
                });
            }
        }
        if let Some(mb) = child(root, "memoryBacking")
            && let Some(hp) = child(mb, "hugepages")
        {
            let size = hp
                .children()
                .find(|c| c.has_tag_name("page"))
                .and_then(|p| {
                    p.attribute("size")
                        .map(|s| scaled(s, p.attribute("unit"), "page"))
                });
            d.hugepage_size = Some(match size {
                Some(r) => r?,
                None => Bytes::from_mib(2),
            });
        }
        if let Some(devs) = child(root, "devices") {
            for dev in devs.children().filter(|c| c.is_element()) {
                match dev.tag_name().name() {
                    "memballoon" => {
                        d.balloon_device = dev.attribute("model").unwrap_or("none") != "none";
                        d.stats_period = child(dev, "stats")
                            .and_then(|s| s.attribute("period"))
                            .and_then(|p| p.parse().ok());
                    }
                    "memory" => {
                        let model = dev.attribute("model").unwrap_or("");
                        let target = child(dev, "target");
                        let alias = child(dev, "alias")
                            .and_then(|a| a.attribute("name"))
                            .map(str::to_string);
                        let node = target
                            .and_then(|t| child_text(t, "node"))
                            .and_then(|s| s.parse().ok());
                        let size = match target.and_then(|t| child(t, "size")) {
                            Some(n) => sized(n)?,
                            None => Bytes(0),
                        };
                        if model == "virtio-mem" {
                            let t = target.ok_or(DomainError::Missing("target"))?;
                            d.virtio_mem.push(VirtioMem {
                                alias,
                                node,
                                size,
                                block: match child(t, "block") {
                                    Some(n) => sized(n)?,
                                    None => Bytes::from_mib(2),
                                },
                                requested: match child(t, "requested") {
                                    Some(n) => sized(n)?,
                                    None => Bytes(0),
                                },
                                current: match child(t, "current") {
                                    Some(n) => Some(sized(n)?),
                                    None => None,
                                },
                            });
                        } else if model == "dimm" {
                            let managed = alias
                                .as_deref()
                                .is_some_and(|a| a.starts_with(DIMM_ALIAS_PREFIX));
                            d.dimms.push(Dimm {
                                alias,
                                node,
                                size,
                                managed,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        if let Some(md) = child(root, "metadata") {
            for m in md.children().filter(|c| c.is_element()) {
                let ns = m.tag_name().namespace();
                if ns == Some(NOVA_NS) && m.tag_name().name() == "instance" {
                    d.nova = Some(parse_nova(m)?);
                } else if ns == Some(MEMSCALE_NS) {
                    for t in m.descendants().filter(|c| c.has_tag_name("tag")) {
                        if let Some(txt) = t.text() {
                            d.tags.push(txt.trim().to_string());
                        }
                    }
                }
            }
        }
        if let Some(nova) = &d.nova
            && nova.extra_specs.get("hw:cpu_policy").map(String::as_str) == Some("dedicated")
        {
            d.cpu_pinned = true;
        }
        Ok(d)
    }
}

fn parse_nova(inst: roxmltree::Node) -> Result<NovaMeta, DomainError> {
    let mut n = NovaMeta::default();
    for c in inst.children().filter(|c| c.is_element()) {
        match c.tag_name().name() {
            "flavor" => {
                n.flavor_name = c.attribute("name").map(str::to_string);
                n.flavor_id = c.attribute("id").map(str::to_string);
                for f in c.children().filter(|c| c.is_element()) {
                    match f.tag_name().name() {
                        "memory" => n.memory = Some(Bytes::from_mib(number(f, "nova:memory")?)),
                        "vcpus" => n.vcpus = Some(number(f, "nova:vcpus")? as u32),
                        "extraSpecs" => {
                            for s in f.children().filter(|s| s.has_tag_name("extraSpec")) {
                                if let Some(k) = s.attribute("name") {
                                    n.extra_specs.insert(
                                        k.to_string(),
                                        s.text().unwrap_or("").trim().to_string(),
                                    );
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            "owner" => {
                for o in c.children().filter(|c| c.is_element()) {
                    let txt = o.text().map(|t| t.trim().to_string());
                    match o.tag_name().name() {
                        "project" => {
                            n.project = txt;
                            n.project_id = o.attribute("uuid").map(str::to_string);
                        }
                        "user" => n.user = txt,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(n)
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn child_text(n: roxmltree::Node, name: &str) -> Option<String> {
    child(n, name)
        .and_then(|c| c.text())
        .map(|t| t.trim().to_string())
}

fn number(n: roxmltree::Node, what: &str) -> Result<u64, DomainError> {
    let t = n.text().unwrap_or("").trim();
    t.parse().map_err(|_| DomainError::BadValue {
        element: what.to_string(),
        value: t.to_string(),
    })
}

/// An element whose text is a size in the unit of its `unit` attribute (KiB when absent).
fn sized(n: roxmltree::Node) -> Result<Bytes, DomainError> {
    let t = n.text().unwrap_or("").trim();
    scaled(t, n.attribute("unit"), n.tag_name().name())
}

/// libvirt's scaled integers: the unit names of its schema, KiB by default.
pub fn scaled(value: &str, unit: Option<&str>, element: &str) -> Result<Bytes, DomainError> {
    let v: u64 = value.trim().parse().map_err(|_| DomainError::BadValue {
        element: element.to_string(),
        value: value.to_string(),
    })?;
    let mult: u64 = match unit.unwrap_or("KiB") {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "T" | "TiB" => 1 << 40,
        other => {
            return Err(DomainError::BadUnit {
                element: element.to_string(),
                unit: other.to_string(),
            });
        }
    };
    v.checked_mul(mult)
        .map(Bytes)
        .ok_or_else(|| DomainError::BadValue {
            element: element.to_string(),
            value: value.to_string(),
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub const NOVA_XML: &str = r#"<domain type='qemu'>
  <name>inst-1</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>web-1</nova:name>
      <nova:flavor name="m1.flex" id="42">
        <nova:memory>1024</nova:memory><nova:disk>1</nova:disk><nova:swap>0</nova:swap>
        <nova:ephemeral>0</nova:ephemeral><nova:vcpus>2</nova:vcpus>
        <nova:extraSpecs>
          <nova:extraSpec name="hw:mem_max_mb">3072</nova:extraSpec>
          <nova:extraSpec name="hw:numa_nodes">2</nova:extraSpec>
        </nova:extraSpecs>
      </nova:flavor>
      <nova:owner><nova:user uuid="u">alice</nova:user><nova:project uuid="p">shop</nova:project></nova:owner>
    </nova:instance>
    <memscale:tags xmlns:memscale="urn:memscale:1"><memscale:tag>web</memscale:tag></memscale:tags>
  </metadata>
  <maxMemory slots='4' unit='MiB'>8192</maxMemory>
  <memory unit='KiB'>4194304</memory>
  <currentMemory unit='KiB'>1048576</currentMemory>
  <vcpu placement='static' current='2'>4</vcpu>
  <cpu><numa>
    <cell id='0' cpus='0-1' memory='512' unit='MiB'/>
    <cell id='1' cpus='2-3' memory='512' unit='MiB'/>
  </numa></cpu>
  <devices>
    <memballoon model='virtio'><stats period='2'/></memballoon>
    <memory model='virtio-mem'><target><size unit='KiB'>1572864</size><node>0</node>
      <block unit='KiB'>2048</block><requested unit='KiB'>0</requested><current unit='KiB'>0</current></target>
      <alias name='virtiomem0'/></memory>
    <memory model='virtio-mem'><target><size unit='KiB'>1572864</size><node>1</node>
      <block unit='KiB'>2048</block><requested unit='KiB'>0</requested><current unit='KiB'>0</current></target>
      <alias name='virtiomem1'/></memory>
  </devices>
</domain>"#;

    #[test]
    fn parses_nova_domain() {
        let d = DomainSpec::parse(NOVA_XML).unwrap();
        assert_eq!(d.name, "inst-1");
        assert_eq!(d.memory, Bytes::from_mib(4096));
        assert_eq!(d.current_memory, Bytes::from_mib(1024));
        assert_eq!(d.max_memory, Some(Bytes::from_mib(8192)));
        assert_eq!(d.max_memory_slots, 4);
        assert_eq!(d.numa.len(), 2);
        assert_eq!(d.virtio_mem.len(), 2);
        assert_eq!(d.virtio_mem[1].node, Some(1));
        assert_eq!(d.virtio_mem[1].alias.as_deref(), Some("virtiomem1"));
        assert_eq!(d.base_memory(), Bytes::from_mib(1024));
        assert!(d.balloon_device);
        assert_eq!(d.stats_period, Some(2));
        assert_eq!((d.vcpus_current, d.vcpus_max), (2, 4));
        let n = d.nova.unwrap();
        assert_eq!(n.flavor_name.as_deref(), Some("m1.flex"));
        assert_eq!(n.memory, Some(Bytes::from_mib(1024)));
        assert_eq!(n.extra_specs["hw:mem_max_mb"], "3072");
        assert_eq!(n.project.as_deref(), Some("shop"));
        assert_eq!(n.project_id.as_deref(), Some("p"));
        assert_eq!(d.tags, vec!["web".to_string()]);
    }

    #[test]
    fn rejects_garbage_and_bad_units() {
        assert!(matches!(
            DomainSpec::parse("<domain"),
            Err(DomainError::Xml(_))
        ));
        assert!(matches!(
            DomainSpec::parse("<domain><name>x</name></domain>"),
            Err(DomainError::Missing("memory"))
        ));
        assert!(matches!(
            DomainSpec::parse("<domain><memory unit='parsecs'>1</memory></domain>"),
            Err(DomainError::BadUnit { .. })
        ));
    }
}

/// The XML of one virtio-mem device of a live domain, found by alias, with its requested size
/// replaced: what `virDomainUpdateDeviceFlags` takes (as `virsh update-memory-device` does).
pub fn virtio_mem_update_xml(
    live_xml: &str,
    alias: &str,
    requested: Bytes,
) -> Result<String, DomainError> {
    let doc = roxmltree::Document::parse(live_xml).map_err(|e| DomainError::Xml(e.to_string()))?;
    let dev = doc
        .descendants()
        .find(|n| {
            n.has_tag_name("memory")
                && n.attribute("model") == Some("virtio-mem")
                && child(*n, "alias").and_then(|a| a.attribute("name")) == Some(alias)
        })
        .ok_or(DomainError::Missing(
            "memory model='virtio-mem' with that alias",
        ))?;
    let range = dev.range();
    let text = &live_xml[range.clone()];
    let new_req = format!("<requested unit='KiB'>{}</requested>", requested.kib());
    let target = child(dev, "target").ok_or(DomainError::Missing("target"))?;
    Ok(match child(target, "requested") {
        Some(r) => {
            let rr = r.range();
            format!(
                "{}{}{}",
                &live_xml[range.start..rr.start],
                new_req,
                &live_xml[rr.end..range.end]
            )
        }
        None => {
            let end = target.range().end - range.start;
            let close = text[..end].rfind("</target>").unwrap_or(end);
            format!("{}{}{}", &text[..close], new_req, &text[close..])
        }
    })
}

#[cfg(test)]
mod update_tests {
    use super::*;

    #[test]
    fn rewrites_requested_of_the_named_device_only() {
        let xml = tests::NOVA_XML;
        let out = virtio_mem_update_xml(xml, "virtiomem1", Bytes::from_mib(256)).unwrap();
        assert!(out.starts_with("<memory model='virtio-mem'>"));
        assert!(out.contains("<node>1</node>"));
        assert!(out.contains("<requested unit='KiB'>262144</requested>"));
        assert!(out.contains("<alias name='virtiomem1'/>"));
        assert!(out.ends_with("</memory>"));
        let again = DomainSpec::parse(&format!(
            "<domain><memory>1</memory><devices>{out}</devices></domain>"
        ))
        .unwrap();
        assert_eq!(again.virtio_mem[0].requested, Bytes::from_mib(256));
        assert!(virtio_mem_update_xml(xml, "nope", Bytes(0)).is_err());
    }
}
