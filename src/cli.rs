//! The command line: `memscale run`, `memscale check`, and friends. Kept apart from `main.rs`
//! so integration tests can drive the same code paths.

use crate::config::{Config, HostConfig};
use crate::daemon::{self, Shared};
use crate::hypervisor::Hypervisor;
use crate::libvirt::LibvirtHost;
use crate::policy::{self, Diag, Severity};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Exit codes: 0 fine, 1 invalid config or policy, 2 usage, 3 runtime failure.
pub use crate::exit::{EXIT_INVALID, EXIT_RUNTIME, EXIT_USAGE};

#[derive(Parser, Debug)]
#[command(
    name = "memscale",
    version,
    about = "Sizes virtual machines' memory automatically, within each guest's envelope."
)]
pub struct Cli {
    /// Log format: human on a terminal, plain lines for journald, or JSON.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Auto,
    Human,
    Plain,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon.
    Run(RunArgs),
    /// Validate the config and policy files without running.
    Check(CheckArgs),
    /// Show the guests a running daemon manages.
    Status(StatusArgs),
    /// Resize a guest by hand, within its envelope (the guest is then pinned).
    Adjust(AdjustArgs),
    /// Exclude a guest from autoscaling.
    Pin(PinArgs),
    /// Return a guest to autoscaling.
    Unpin(PinArgs),
    /// List proposed and recent migrations; approve or reject a proposed one.
    Migrations(MigrationsArgs),
    /// Replay a recorded trace through policies and baselines, side by side.
    Simulate(crate::sim::cmd::SimulateArgs),
    /// Write the man pages and shell completions into a directory (for packaging).
    #[command(hide = true, name = "package-assets")]
    PackageAssets(PackageAssetsArgs),
}

#[derive(clap::Args, Debug)]
pub struct PackageAssetsArgs {
    /// Directory to write `man/` and `completions/` into (created).
    pub dir: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Address of the daemon's API.
    #[arg(long, default_value = "127.0.0.1:9847")]
    pub api: SocketAddr,
    /// File holding the API's bearer token.
    #[arg(long, default_value = "/etc/memscale/api-token")]
    pub token_file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct AdjustArgs {
    pub guest: String,
    /// New size, with a unit: "4GiB", "1536MiB".
    #[arg(long, required_unless_present = "vcpus")]
    pub memory: Option<String>,
    /// New number of online vCPUs (added or removed live).
    #[arg(long)]
    pub vcpus: Option<u32>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Args, Debug)]
pub struct PinArgs {
    pub guest: String,
    #[command(flatten)]
    pub api: ApiArgs,
}

fn token(a: &ApiArgs) -> Result<String, i32> {
    std::fs::read_to_string(&a.token_file)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            eprintln!(
                "memscale: {}: cannot read the API token: {e}",
                a.token_file.display()
            );
            EXIT_USAGE
        })
}

fn mutate(a: &ApiArgs, guest: &str, action: &str, body: Option<String>) -> i32 {
    let t = match token(a) {
        Ok(t) => t,
        Err(c) => return c,
    };
    let path = format!("/v1/guests/{guest}/{action}");
    match crate::client::request(a.api, "POST", &path, body.as_deref(), Some(&t)) {
        Ok(v) => {
            println!("{v}");
            0
        }
        Err(e) => {
            eprintln!("memscale: {e}");
            if matches!(e, crate::client::ClientError::Status { .. }) {
                EXIT_INVALID
            } else {
                EXIT_RUNTIME
            }
        }
    }
}

pub fn adjust(a: &AdjustArgs) -> i32 {
    let mut body = serde_json::Map::new();
    if let Some(m) = &a.memory {
        match crate::units::Bytes::parse(m) {
            Ok(b) => {
                body.insert("memory_mib".into(), b.mib().into());
            }
            Err(e) => {
                eprintln!("memscale: --memory: {e}");
                return EXIT_USAGE;
            }
        }
    }
    if let Some(n) = a.vcpus {
        body.insert("vcpus".into(), n.into());
    }
    mutate(
        &a.api,
        &a.guest,
        "adjust",
        Some(serde_json::Value::Object(body).to_string()),
    )
}

pub fn pin(a: &PinArgs, on: bool) -> i32 {
    mutate(&a.api, &a.guest, if on { "pin" } else { "unpin" }, None)
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Address of the daemon's API.
    #[arg(long, default_value = "127.0.0.1:9847")]
    pub api: SocketAddr,
    /// Print the JSON the API gave.
    #[arg(long)]
    pub json: bool,
}

pub fn status(a: &StatusArgs) -> i32 {
    match crate::client::request(a.api, "GET", "/v1/guests", None, None) {
        Ok(v) if a.json => {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        Ok(v) => {
            print!("{}", crate::client::status_table(&v));
            0
        }
        Err(e) => {
            eprintln!("memscale: {e}");
            EXIT_RUNTIME
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct MigrationsArgs {
    #[command(subcommand)]
    pub action: Option<MigrationAction>,
    /// Print the JSON the API gave.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Subcommand, Debug)]
pub enum MigrationAction {
    /// Let a proposed migration run (on its host's next tick).
    Approve { id: u64 },
    /// Drop a proposed migration.
    Reject { id: u64 },
}

pub fn migrations(a: &MigrationsArgs) -> i32 {
    if let Some(act) = &a.action {
        let t = match token(&a.api) {
            Ok(t) => t,
            Err(c) => return c,
        };
        let (id, verb) = match act {
            MigrationAction::Approve { id } => (id, "approve"),
            MigrationAction::Reject { id } => (id, "reject"),
        };
        let path = format!("/v1/proposals/{id}/{verb}");
        return match crate::client::request(a.api.api, "POST", &path, None, Some(&t)) {
            Ok(v) => {
                println!(
                    "proposal {}: {} -> {} ({}): {}",
                    v["id"],
                    v["guest"].as_str().unwrap_or("?"),
                    v["to"].as_str().unwrap_or("?"),
                    v["from"].as_str().unwrap_or("?"),
                    v["state"].as_str().unwrap_or("?")
                );
                0
            }
            Err(e) => {
                eprintln!("memscale: {e}");
                if matches!(e, crate::client::ClientError::Status { .. }) {
                    EXIT_INVALID
                } else {
                    EXIT_RUNTIME
                }
            }
        };
    }
    let get = |path: &str| crate::client::request(a.api.api, "GET", path, None, None);
    match (get("/v1/proposals"), get("/v1/migrations")) {
        (Ok(p), Ok(m)) if a.json => {
            let v = serde_json::json!({ "proposals": p, "migrations": m });
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            0
        }
        (Ok(p), Ok(m)) => {
            print!("{}", crate::client::migrations_table(&p, &m));
            0
        }
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("memscale: {e}");
            EXIT_RUNTIME
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Config file (TOML).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// libvirt URI of a host to manage, or NAME=URI; repeat for several hosts (default
    /// qemu:///system).
    #[arg(long = "connect", short = 'C')]
    pub connect: Vec<String>,
    /// Where pins and the planner's memory survive restarts (default /var/lib/memscale).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Directory of policy files.
    #[arg(long)]
    pub policies: Option<PathBuf>,
    /// Address of the HTTP API and /metrics.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Decide and report, never resize.
    #[arg(long)]
    pub dry_run: bool,
    /// Append every decision to this file as JSON lines.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Time between decisions, e.g. "1s".
    #[arg(long)]
    pub interval: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Config file to check too.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Policy files or directories (default: the config's policy directory).
    pub paths: Vec<PathBuf>,
    /// State directory to check too (default: the config's `state_dir`, with --config).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Say which policy a guest of this name gets, and which others match it.
    #[arg(long, value_name = "GUEST")]
    pub explain: Option<String>,
    /// With --explain: the guest's Nova flavor.
    #[arg(long, requires = "explain")]
    pub flavor: Option<String>,
    /// With --explain: the guest's Nova project.
    #[arg(long, requires = "explain")]
    pub project: Option<String>,
    /// With --explain: a tag of the guest (repeatable).
    #[arg(long, requires = "explain")]
    pub tag: Vec<String>,
    /// Print the outcome as JSON on stdout (diagnostics, counts, the --explain answer); the
    /// exit code is the same.
    #[arg(long)]
    pub json: bool,
}

pub fn init_logging(fmt: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("MEMSCALE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let fmt = match fmt {
        LogFormat::Auto if std::io::stderr().is_terminal() => LogFormat::Human,
        LogFormat::Auto => LogFormat::Plain,
        f => f,
    };
    match fmt {
        LogFormat::Json => b.json().flatten_event(true).init(),
        // journald stamps each line itself; colours would be noise there.
        LogFormat::Plain => b.with_ansi(false).without_time().init(),
        _ => b.init(),
    }
}

fn print_diags(diags: &[Diag]) {
    for d in diags {
        eprintln!("{d}");
    }
}

/// The config file's settings (or the defaults) with the flags applied over them.
pub fn effective_config(file: Config, a: &RunArgs) -> Result<Config, Vec<Diag>> {
    let mut c = file;
    if !a.connect.is_empty() {
        c.hosts = a.connect.iter().map(|u| HostConfig::from_arg(u)).collect();
    }
    if c.hosts.is_empty() {
        c.hosts.push(HostConfig::from_uri("qemu:///system"));
    }
    if let Some(p) = &a.policies {
        c.policies = p.clone();
    }
    if let Some(l) = a.listen {
        c.listen = l;
    }
    if a.dry_run {
        c.dry_run = true;
    }
    if let Some(p) = &a.audit_log {
        c.audit_log = Some(p.clone());
    }
    if let Some(p) = &a.state_dir {
        c.state_dir = p.clone();
    }
    if let Some(i) = &a.interval {
        c.interval = crate::units::Dur::parse(i).map_err(|e| {
            vec![Diag {
                path: "--interval".into(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: e.to_string(),
            }]
        })?;
    }
    Ok(c)
}

/// What `run` would make of the saved state: a file from a newer memscale is an error (the
/// start is refused), an unreadable one a warning (set aside, the previous generation read).
fn state_diags(dir: &std::path::Path) -> Vec<Diag> {
    let diag = |path: &std::path::Path, (line, col), severity, message| Diag {
        path: path.display().to_string(),
        line,
        col,
        severity,
        message,
    };
    match crate::state::load(dir) {
        Err(e) => vec![diag(
            &e.path,
            (1, 1),
            Severity::Error,
            format!(
                "state version {} is newer than this memscale reads ({}): `memscale run` would refuse to start",
                e.found, e.reads
            ),
        )],
        Ok(l) => {
            let then = match &l.state {
                Some((g, _)) => format!("restores {}", g.file()),
                None => "starts afresh".into(),
            };
            l.unreadable
                .iter()
                .map(|u| {
                    let why = &u.why;
                    let at = u.at.unwrap_or((1, 1));
                    diag(
                        &u.path,
                        at,
                        Severity::Warning,
                        format!("{why}; `memscale run` sets it aside and {then}"),
                    )
                })
                .collect()
        }
    }
}

pub fn check(a: &CheckArgs) -> i32 {
    let mut diags = Vec::new();
    let mut dir = None;
    let mut state_dir = a.state_dir.clone();
    if let Some(p) = &a.config {
        match Config::load(p) {
            Ok(c) => {
                dir = Some(c.policies);
                state_dir = state_dir.or(Some(c.state_dir));
            }
            Err(d) => diags.extend(d),
        }
    }
    if let Some(d) = &state_dir {
        diags.extend(state_diags(d));
    }
    let mut files = Vec::new();
    let paths = if a.paths.is_empty() {
        dir.into_iter().collect()
    } else {
        a.paths.clone()
    };
    for p in &paths {
        if p.is_dir() {
            match policy::parse::policy_files(p) {
                Ok(f) => files.extend(f),
                Err(e) => diags.push(Diag {
                    path: p.display().to_string(),
                    line: 1,
                    col: 1,
                    severity: Severity::Error,
                    message: format!("cannot read directory: {e}"),
                }),
            }
        } else {
            files.push(p.clone());
        }
    }
    let (set, d) = policy::load_files(&files, 1);
    diags.extend(d);
    let errors = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let places: std::collections::BTreeSet<&str> = diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.path.as_str())
        .collect();
    let set = set.unwrap_or_default();
    let explained = a.explain.as_ref().filter(|_| errors == 0).map(|name| {
        let g = policy::GuestLabels {
            name,
            flavor: a.flavor.as_deref(),
            project: a.project.as_deref(),
            tags: &a.tag,
        };
        let win = set.select(&g).clone();
        let losers: Vec<policy::Policy> = set
            .candidates(&g)
            .iter()
            .skip(1)
            .map(|p| (*p).clone())
            .collect();
        (name, win, losers)
    });
    if a.json {
        let brief = |p: &policy::Policy| serde_json::json!({ "name": p.name, "priority": p.priority, "origin": p.origin });
        let v = serde_json::json!({
            "ok": errors == 0,
            "errors": errors,
            "warnings": diags.len() - errors,
            "diagnostics": diags,
            "files": files,
            "policies": if errors == 0 {
                set.policies.iter().map(brief).collect::<Vec<_>>()
            } else {
                Vec::new()
            },
            "explain": explained.as_ref().map(|(name, win, losers)| serde_json::json!({
                "guest": name,
                "policy": brief(win),
                "losers": losers.iter().map(brief).collect::<Vec<_>>(),
            })),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
        );
        return if errors > 0 { EXIT_INVALID } else { 0 };
    }
    print_diags(&diags);
    if errors > 0 {
        eprintln!("{errors} error(s) in {} file(s)", places.len());
        return EXIT_INVALID;
    }
    if let Some((name, win, losers)) = &explained {
        println!(
            "{name}: policy {:?} (priority {}, {})",
            win.name, win.priority, win.origin
        );
        for p in losers {
            println!(
                "  also matches {:?} (priority {}, {}), which loses",
                p.name, p.priority, p.origin
            );
        }
        return 0;
    }
    println!(
        "ok: {} policies in {} file(s)",
        set.policies.len(),
        files.len()
    );
    0
}

pub async fn run(a: RunArgs) -> i32 {
    // The file as read is kept apart from the flags: a SIGHUP compares edits of the file
    // with it, not with what the flags made of it.
    let file = match &a.config {
        Some(p) => match Config::load(p) {
            Ok(c) => Some((p.clone(), c)),
            Err(d) => {
                print_diags(&d);
                return EXIT_INVALID;
            }
        },
        None => None,
    };
    let from_file = file.as_ref().map_or_else(Config::default, |f| f.1.clone());
    let config = match effective_config(from_file, &a) {
        Ok(c) => c,
        Err(d) => {
            print_diags(&d);
            return EXIT_INVALID;
        }
    };
    let (set, diags) = if config.policies.is_dir() {
        policy::load_dir(&config.policies, 1)
    } else {
        tracing::warn!(dir = %config.policies.display(), "no policy directory: every guest gets the shipped default policy (policies/default.toml, built in)");
        (
            Some(policy::PolicySet::new(
                vec![policy::shipped_default()],
                vec![],
                1,
            )),
            vec![],
        )
    };
    let Some(set) = set else {
        print_diags(&diags);
        eprintln!("memscale: invalid policies; nothing was started");
        return EXIT_INVALID;
    };
    // The saved state before anything is opened or started: a file from a newer memscale
    // stops the start here, read but not moved, for the operator who downgraded to decide.
    let loaded = match crate::state::load(&config.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "memscale: {e}; nothing was started and the file is left as it is (run the newer memscale, or move the file aside to start without it)"
            );
            return EXIT_INVALID;
        }
    };
    if config.migration.tls {
        let nova: Vec<String> = config
            .hosts
            .iter()
            .filter(|h| h.migration_backend == crate::config::MigrationBackend::Nova)
            .map(|h| h.label())
            .collect();
        if !nova.is_empty() {
            // os-migrateLive has no such choice: Nova's compute hosts decide the transport.
            tracing::warn!(hosts = ?nova, "[migration] tls does not apply to moves through Nova: set live_migration_with_native_tls = true in [libvirt] of nova.conf on the compute hosts");
        }
    }
    let shared = match Shared::new(config.clone(), set, &diags) {
        Ok(mut s) => {
            s.config_file = file;
            if let Some(n) = &config.nova {
                match crate::nova::Nova::new(n.clone()) {
                    Ok(n) => s.nova = Some(Arc::new(n)),
                    Err(e) => {
                        eprintln!("memscale: {e}");
                        return EXIT_INVALID;
                    }
                }
            }
            if let Some(f) = &config.api_token_file {
                match crate::api::auth::read_token_file(f) {
                    Ok(t) => s.api_token = Some(t),
                    Err(e) => {
                        eprintln!("memscale: {e}");
                        return EXIT_INVALID;
                    }
                }
            }
            Arc::new(s)
        }
        Err(e) => {
            eprintln!("memscale: cannot open the audit log: {e}");
            return EXIT_RUNTIME;
        }
    };
    shared.restore_state(loaded);
    let hosts: Vec<(HostConfig, Arc<dyn Hypervisor>)> = config
        .hosts
        .iter()
        .map(|h| {
            (
                h.clone(),
                Arc::new(LibvirtHost::new(&h.uri)) as Arc<dyn Hypervisor>,
            )
        })
        .collect();
    tracing::info!(hosts = hosts.len(), dry_run = config.dry_run, interval = %config.interval, "memscale starting");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let api = {
        let s = shared.clone();
        let rx = stop_rx.clone();
        let addr = config.listen;
        tokio::spawn(async move {
            if let Err(e) = crate::api::serve(s, addr, rx).await {
                tracing::error!(%addr, error = %e, "api cannot listen");
                return Err(e);
            }
            Ok(())
        })
    };
    let session = shared.coord.clone().map(|c| {
        let rx = stop_rx.clone();
        tracing::info!(node = %c.name(), etcd = ?c.config().etcd, "coordinating through etcd");
        tokio::spawn(async move { c.keep_alive(rx).await })
    });
    let reloader = tokio::spawn(crate::reload::watch(shared.clone(), stop_rx.clone()));
    let daemon = tokio::spawn(daemon::run(shared.clone(), hosts, stop_rx.clone()));
    let notifier = tokio::spawn(crate::notify::run(shared.clone(), stop_rx.clone()));
    let flavors = tokio::spawn(daemon::openstack::flavors(shared.clone(), stop_rx.clone()));
    let placement = tokio::spawn(daemon::openstack::placement(
        shared.clone(),
        stop_rx.clone(),
    ));
    let code = wait_for_stop(&api).await;
    let _ = stop_tx.send(true);
    // A second signal forces the exit while the loops wind down.
    let forced = tokio::spawn(async {
        wait_signal().await;
        eprintln!("memscale: second signal, exiting now");
        std::process::exit(EXIT_RUNTIME);
    });
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), daemon).await;
    reloader.abort();
    flavors.abort();
    // A clean stop deletes memscale's allocations in Placement.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), placement).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), notifier).await;
    // A clean stop saves the planner's memory of every guest.
    let _ = tokio::task::spawn_blocking({
        let s = shared.clone();
        move || s.save_state()
    })
    .await;
    if let Some(t) = session {
        // Hand our hosts over at once (the lease is revoked) rather than after its ttl.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(4), t).await;
    }
    forced.abort();
    tracing::info!("memscale stopped");
    code
}

async fn wait_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
        }
        _ => std::future::pending::<()>().await,
    }
}

async fn wait_for_stop(api: &tokio::task::JoinHandle<std::io::Result<()>>) -> i32 {
    let sig = wait_signal();
    tokio::pin!(sig);
    loop {
        tokio::select! {
            _ = &mut sig => { tracing::info!("signal received: stopping"); return 0; }
            _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                if api.is_finished() {
                    return EXIT_RUNTIME;
                }
            }
        }
    }
}
