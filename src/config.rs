//! The daemon's configuration file (`/etc/memscale/memscale.toml`): hosts, timing, where
//! policies live, the API address and the flavor catalog. Command-line flags override it.

use crate::envelope::FlavorCatalog;
use crate::policy::{Diag, Severity};
use crate::units::{Bytes, Dur};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// libvirt URI, e.g. `qemu:///system` or `qemu+tcp://10.0.0.2/system`.
    pub uri: String,
    /// A short name for logs and metrics (default: the URI).
    #[serde(default)]
    pub name: Option<String>,
    /// Memory the guests of this host may use in all (default: the host's memory).
    #[serde(default)]
    pub capacity: Option<Bytes>,
    /// Memory never given to guests.
    #[serde(default = "default_reserve")]
    pub reserve: Bytes,
    /// The libvirt URI other hosts' libvirtds reach this one at, for peer-to-peer migration
    /// (default: `uri`).
    #[serde(default)]
    pub migration_uri: Option<String>,
    /// Where migration data is streamed to, e.g. `tcp://10.0.0.2` (default: libvirt's choice).
    #[serde(default)]
    pub migration_address: Option<String>,
    /// `false`: only watched, as a destination for migrations (its committed memory counts);
    /// this daemon neither resizes its guests nor moves them.
    #[serde(default = "yes")]
    pub manage: bool,
    /// How guests leave this host: libvirt peer to peer, or by asking OpenStack Nova (its
    /// records stay true) for hosts whose guests Nova manages.
    #[serde(default)]
    pub migration_backend: MigrationBackend,
    /// This host's name in Nova (`openstack compute service list`), when it is a destination
    /// for Nova migrations (default: `name`).
    #[serde(default)]
    pub nova_host: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationBackend {
    #[default]
    Libvirt,
    Nova,
}

fn yes() -> bool {
    true
}

/// Moving guests off a host that sharing cannot relieve.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationConfig {
    pub enabled: bool,
    /// Decide and report migrations (`/v1/migrations`, the audit), move nothing.
    pub propose_only: bool,
    /// Least time between two migrations off one host.
    pub min_interval: Dur,
    /// A migration not done after this long is reported failed.
    pub timeout: Dur,
    /// A destination a migration to failed is not tried again for this long.
    pub retry_after: Dur,
}

impl Default for MigrationConfig {
    fn default() -> MigrationConfig {
        MigrationConfig {
            enabled: false,
            propose_only: false,
            min_interval: Dur::secs(60),
            timeout: Dur::secs(300),
            retry_after: Dur::secs(300),
        }
    }
}

fn default_reserve() -> Bytes {
    Bytes::from_gib(1)
}

impl HostConfig {
    pub fn from_uri(uri: &str) -> HostConfig {
        HostConfig {
            uri: uri.to_string(),
            name: None,
            capacity: None,
            reserve: default_reserve(),
            migration_uri: None,
            migration_address: None,
            manage: true,
            migration_backend: MigrationBackend::Libvirt,
            nova_host: None,
        }
    }
    /// `--connect` takes `URI` or `NAME=URI` (a name has no `:` or `/`).
    pub fn from_arg(arg: &str) -> HostConfig {
        match arg.split_once('=') {
            Some((name, uri)) if !name.is_empty() && !name.contains([':', '/']) => HostConfig {
                name: Some(name.to_string()),
                ..HostConfig::from_uri(uri)
            },
            _ => HostConfig::from_uri(arg),
        }
    }

    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.uri.clone())
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hosts: Vec<HostConfig>,
    /// Time between two decisions for each host.
    pub interval: Dur,
    /// Stats period set on guests that have none (seconds).
    pub stats_period: u32,
    pub policies: PathBuf,
    pub listen: SocketAddr,
    pub dry_run: bool,
    /// Where every decision is appended as one JSON line (none: only the in-memory ring).
    pub audit_log: Option<PathBuf>,
    /// File holding the bearer token mutating API calls must present (none: they are refused).
    pub api_token_file: Option<PathBuf>,
    /// How many decisions the in-memory ring keeps.
    pub audit_ring: usize,
    /// A resize that has not landed after this long is reported and the guest held.
    pub converge_timeout: Dur,
    /// How long a guest whose resize did not converge is held.
    pub unconverged_hold: Dur,
    /// Guests that never report stats are called driverless after this long.
    pub driver_grace: Dur,
    /// Flavors for Nova releases that write only the flavor name.
    pub flavors: FlavorCatalog,
    pub migration: MigrationConfig,
    /// Several daemons: who acts for which host, and promises to destinations, through etcd.
    pub coordination: Option<crate::coord::CoordConfig>,
    /// Where pins, manual sizes and each guest's planner memory are kept across restarts.
    pub state_dir: PathBuf,
    /// OpenStack credentials, for hosts with `migration_backend = "nova"`.
    pub nova: Option<crate::nova::NovaConfig>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            hosts: Vec::new(),
            interval: Dur::secs(1),
            stats_period: 2,
            policies: PathBuf::from("/etc/memscale/policies"),
            listen: SocketAddr::from(([127, 0, 0, 1], 9847)),
            dry_run: false,
            audit_log: None,
            api_token_file: None,
            audit_ring: 10_000,
            converge_timeout: Dur::secs(30),
            unconverged_hold: Dur::secs(60),
            driver_grace: Dur::secs(30),
            flavors: FlavorCatalog::new(),
            migration: MigrationConfig::default(),
            coordination: None,
            nova: None,
            state_dir: PathBuf::from("/var/lib/memscale"),
        }
    }
}

impl Config {
    /// Read and check a config file; every problem is a [`Diag`] with its place.
    pub fn load(path: &Path) -> Result<Config, Vec<Diag>> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Diag {
                path: shown.clone(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: format!("cannot read: {e}"),
            }]
        })?;
        Config::parse(&shown, &text)
    }

    pub fn parse(shown: &str, text: &str) -> Result<Config, Vec<Diag>> {
        let c: Config = toml::from_str(text).map_err(|e| {
            let (line, col) =
                crate::policy::parse::line_col(text, e.span().map(|s| s.start).unwrap_or(0));
            vec![Diag {
                path: shown.to_string(),
                line,
                col,
                severity: Severity::Error,
                message: e.message().to_string(),
            }]
        })?;
        let mut diags = Vec::new();
        let mut err = |m: String| {
            diags.push(Diag {
                path: shown.to_string(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: m,
            })
        };
        if c.interval.0 < std::time::Duration::from_millis(100)
            || c.interval.0 > std::time::Duration::from_secs(600)
        {
            err(format!(
                "interval {} is out of range 100ms to 10m",
                c.interval
            ));
        }
        if c.stats_period == 0 || c.stats_period > 300 {
            err(format!(
                "stats_period {} is out of range 1 to 300",
                c.stats_period
            ));
        }
        if c.audit_ring == 0 || c.audit_ring > 1_000_000 {
            err(format!(
                "audit_ring {} is out of range 1 to 1000000",
                c.audit_ring
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for h in &c.hosts {
            if !seen.insert(h.label()) {
                err(format!("host {:?} is listed twice", h.label()));
            }
            if let Some(cap) = h.capacity
                && cap <= h.reserve
            {
                err(format!(
                    "host {:?}: capacity {} is not above its reserve {}",
                    h.label(),
                    cap,
                    h.reserve
                ));
            }
        }
        for h in &c.hosts {
            if h.migration_backend == MigrationBackend::Nova && c.nova.is_none() {
                err(format!(
                    "host {:?}: migration_backend = \"nova\" needs a [nova] section (auth_url, username, password_file, project_name)",
                    h.label()
                ));
            }
        }
        if let Some(co) = &c.coordination {
            if co.etcd.is_empty() {
                err("coordination: etcd lists no endpoint".into());
            }
            if co.ttl.0 < std::time::Duration::from_secs(2)
                || co.ttl.0 > std::time::Duration::from_secs(600)
            {
                err(format!(
                    "coordination: ttl {} is out of range 2s to 10m",
                    co.ttl
                ));
            }
            if !co.prefix.starts_with('/') {
                err(format!(
                    "coordination: prefix {:?} must start with /",
                    co.prefix
                ));
            }
        }
        if diags.is_empty() { Ok(c) } else { Err(diags) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let c = Config::parse(
            "c.toml",
            "interval = \"2s\"\n[[hosts]]\nuri = \"qemu:///system\"\ncapacity = \"16GiB\"\n[flavors.\"m1.small\"]\nmemory = \"2GiB\"\nmem_max = \"4GiB\"\n",
        )
        .unwrap();
        assert_eq!(c.interval, Dur::secs(2));
        assert_eq!(c.hosts[0].capacity, Some(Bytes::from_gib(16)));
        assert_eq!(c.flavors["m1.small"].mem_max, Some(Bytes::from_gib(4)));
        let h = HostConfig::from_arg("a=qemu+unix:///system?socket=/x");
        assert_eq!(
            (h.label(), h.uri.as_str()),
            ("a".to_string(), "qemu+unix:///system?socket=/x")
        );
        assert_eq!(
            HostConfig::from_arg("qemu:///system?x=y").label(),
            "qemu:///system?x=y"
        );
        let e = Config::parse("c.toml", "intervall = \"2s\"\n").unwrap_err();
        assert_eq!((e[0].line, e[0].col), (1, 1));
        assert!(e[0].message.contains("unknown field"), "{e:?}");
        let e = Config::parse("c.toml", "\n\ninterval = \"2\"\n").unwrap_err();
        assert_eq!(e[0].line, 3, "{e:?}");
        assert!(e[0].message.contains("missing unit"));
    }

    #[test]
    fn coordination_and_nova_are_checked() {
        let c = Config::parse(
            "c.toml",
            "[coordination]\netcd = [\"http://127.0.0.1:2379\"]\n[[hosts]]\nuri = \"qemu:///system\"\nmanage = false\n",
        )
        .unwrap();
        let co = c.coordination.unwrap();
        assert_eq!((co.prefix.as_str(), co.ttl), ("/memscale", Dur::secs(10)));
        assert!(!c.hosts[0].manage);
        assert_eq!(c.hosts[0].migration_backend, MigrationBackend::Libvirt);
        let e = Config::parse(
            "c.toml",
            "[coordination]\netcd = []\nttl = \"1s\"\nprefix = \"x\"\n",
        )
        .unwrap_err();
        let all: Vec<&str> = e.iter().map(|d| d.message.as_str()).collect();
        assert!(
            all.iter().any(|m| m.contains("lists no endpoint")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|m| m.contains("ttl 1s is out of range")),
            "{all:?}"
        );
        assert!(
            all.iter().any(|m| m.contains("must start with /")),
            "{all:?}"
        );
        let e = Config::parse(
            "c.toml",
            "[[hosts]]\nuri = \"qemu:///system\"\nname = \"k1\"\nmigration_backend = \"nova\"\n",
        )
        .unwrap_err();
        assert!(
            e[0].message
                .contains("host \"k1\": migration_backend = \"nova\" needs a [nova] section"),
            "{e:?}"
        );
        let e = Config::parse(
            "c.toml",
            "[[hosts]]\nuri = \"qemu:///system\"\nmigration_backend = \"xen\"\n",
        )
        .unwrap_err();
        assert_eq!(e[0].line, 3, "{e:?}");
        let c = Config::parse(
            "c.toml",
            "[nova]\nauth_url = \"http://k/v3\"\nusername = \"u\"\npassword_file = \"/p\"\nproject_name = \"p\"\n[[hosts]]\nuri = \"qemu:///system\"\nmigration_backend = \"nova\"\n",
        )
        .unwrap();
        let n = c.nova.unwrap();
        assert_eq!(
            (n.interface.as_str(), n.user_domain_name.as_str()),
            ("public", "Default")
        );
    }
}
