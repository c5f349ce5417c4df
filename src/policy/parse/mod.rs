//! Reading policy files: a walk over the spanned TOML document that reports every problem at
//! once as `PATH:LINE:COL: message`, instead of stopping at the first like serde would.

use super::{CpuKnobs, Knobs, Policy, PolicySet, Selector};
use crate::envelope::Method;
use crate::units::{Bytes, Dur, Percent, Rate};
use serde::Serialize;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a file, with its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diag {
    pub path: String,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.path, self.line, self.col, sev, self.message
        )
    }
}

struct Ctx<'a> {
    path: &'a str,
    text: &'a str,
    diags: Vec<Diag>,
}

impl Ctx<'_> {
    fn at(&mut self, span: Range<usize>, severity: Severity, message: String) {
        let (line, col) = line_col(self.text, span.start);
        self.diags.push(Diag {
            path: self.path.to_string(),
            line,
            col,
            severity,
            message,
        });
    }
    fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.at(span, Severity::Error, message.into());
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

type Entry<'a, 'i> = (
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
);

fn string(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<String> {
    match v.get_ref() {
        DeValue::String(s) => Some(s.to_string()),
        other => {
            ctx.err(
                v.span(),
                format!("{key}: expected a string, found {}", other.type_str()),
            );
            None
        }
    }
}

fn integer(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<i64> {
    match v.get_ref() {
        DeValue::Integer(i) => match i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()) {
            Ok(n) => Some(n),
            Err(_) => {
                ctx.err(v.span(), format!("{key}: integer out of range"));
                None
            }
        },
        other => {
            ctx.err(
                v.span(),
                format!("{key}: expected an integer, found {}", other.type_str()),
            );
            None
        }
    }
}

fn boolean(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<bool> {
    match v.get_ref() {
        DeValue::Boolean(b) => Some(*b),
        other => {
            ctx.err(
                v.span(),
                format!("{key}: expected true or false, found {}", other.type_str()),
            );
            None
        }
    }
}

fn strings(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<Vec<String>> {
    match v.get_ref() {
        DeValue::String(s) => Some(vec![s.to_string()]),
        DeValue::Array(a) => {
            let mut out = Vec::new();
            for e in a.iter() {
                out.push(string(ctx, key, e)?);
            }
            Some(out)
        }
        other => {
            ctx.err(
                v.span(),
                format!(
                    "{key}: expected a list of strings, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

/// A unit-bearing string value, parsed and range-checked.
fn unit<T: PartialOrd + fmt::Display + Copy>(
    ctx: &mut Ctx,
    key: &str,
    v: &Spanned<DeValue>,
    parse: fn(&str) -> Result<T, crate::units::UnitError>,
    range: (T, T),
) -> Option<T> {
    let s = match v.get_ref() {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(i) => i.as_str().to_string(),
        DeValue::Float(f) => f.as_str().to_string(),
        other => {
            ctx.err(
                v.span(),
                format!(
                    "{key}: expected a quoted value with a unit, found {}",
                    other.type_str()
                ),
            );
            return None;
        }
    };
    match parse(&s) {
        Ok(x) if x < range.0 || x > range.1 => {
            ctx.err(
                v.span(),
                format!("{key}: {x} is out of range {} to {}", range.0, range.1),
            );
            None
        }
        Ok(x) => Some(x),
        Err(e) => {
            ctx.err(v.span(), format!("{key}: {e}"));
            None
        }
    }
}

const KNOBS: &[&str] = &[
    "headroom",
    "headroom_pct",
    "grow_at",
    "shrink_at",
    "min_free",
    "predict",
    "trend_window",
    "window",
    "peak_window",
    "percentile",
    "grow_rate",
    "shrink_rate",
    "max_grow_step",
    "max_shrink_step",
    "grow_cooldown",
    "shrink_cooldown",
    "shrink_interval",
    "min_change",
    "swap_grow",
    "min",
    "max",
    "floor_below_base",
    "methods",
    "numa_balance",
    "shares",
    "stale_after",
];

fn unknown(ctx: &mut Ctx, k: &Spanned<std::borrow::Cow<str>>, table: &str, known: &[&str]) {
    let name = k.get_ref();
    let hint = known
        .iter()
        .min_by_key(|c| strsim(name, c))
        .filter(|c| strsim(name, c) <= 3)
        .map(|c| format!(" (did you mean {c:?}?)"))
        .unwrap_or_default();
    ctx.err(k.span(), format!("unknown key {name:?} in {table}{hint}"));
}

/// Edit distance, for "did you mean".
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

fn parse_knobs(ctx: &mut Ctx, t: &DeTable, span: Range<usize>) -> Knobs {
    let mut k = Knobs::default();
    let big = Bytes::from_gib(1024);
    let mut spans = std::collections::HashMap::new();
    for (key, v) in t.iter() {
        let name = key.get_ref().as_ref();
        spans.insert(name.to_string(), v.span());
        let b = |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Bytes::parse, (lo, hi));
        let d = |ctx: &mut Ctx, hi| unit(ctx, name, v, Dur::parse, (Dur::secs(0), hi));
        let p =
            |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Percent::parse, (Percent(lo), Percent(hi)));
        let r = |ctx: &mut Ctx| unit(ctx, name, v, Rate::parse, (Rate(Bytes(0)), Rate(big)));
        match name {
            "headroom" => k.headroom = b(ctx, Bytes::from_mib(16), big).unwrap_or(k.headroom),
            "headroom_pct" => k.headroom_pct = p(ctx, 0.0, 1.0).unwrap_or(k.headroom_pct),
            "grow_at" => k.grow_at = p(ctx, 0.01, 0.99).unwrap_or(k.grow_at),
            "shrink_at" => k.shrink_at = p(ctx, 0.01, 10.0).unwrap_or(k.shrink_at),
            "min_free" => k.min_free = b(ctx, Bytes(0), big).unwrap_or(k.min_free),
            "predict" => k.predict = d(ctx, Dur::secs(600)).unwrap_or(k.predict),
            "trend_window" => {
                k.trend_window = unit(ctx, name, v, Dur::parse, (Dur::secs(1), Dur::secs(3600)))
                    .unwrap_or(k.trend_window)
            }
            "peak_window" => k.peak_window = d(ctx, Dur::secs(7 * 86400)).unwrap_or(k.peak_window),
            "window" => {
                k.window = unit(ctx, name, v, Dur::parse, (Dur::secs(1), Dur::secs(86400)))
                    .unwrap_or(k.window)
            }
            "percentile" => k.percentile = p(ctx, 0.01, 1.0).unwrap_or(k.percentile),
            "grow_rate" => k.grow_rate = r(ctx).unwrap_or(k.grow_rate),
            "shrink_rate" => k.shrink_rate = r(ctx).unwrap_or(k.shrink_rate),
            "max_grow_step" => k.max_grow_step = b(ctx, Bytes(0), big).unwrap_or(k.max_grow_step),
            "max_shrink_step" => {
                k.max_shrink_step = b(ctx, Bytes(0), big).unwrap_or(k.max_shrink_step)
            }
            "grow_cooldown" => k.grow_cooldown = d(ctx, Dur::secs(3600)).unwrap_or(k.grow_cooldown),
            "shrink_cooldown" => {
                k.shrink_cooldown = d(ctx, Dur::secs(86400)).unwrap_or(k.shrink_cooldown)
            }
            "shrink_interval" => {
                k.shrink_interval = d(ctx, Dur::secs(86400)).unwrap_or(k.shrink_interval)
            }
            "min_change" => {
                k.min_change = b(ctx, Bytes(0), Bytes::from_gib(64)).unwrap_or(k.min_change)
            }
            "swap_grow" => k.swap_grow = r(ctx).unwrap_or(k.swap_grow),
            "min" => k.min = b(ctx, Bytes::from_mib(64), big).or(k.min),
            "max" => k.max = b(ctx, Bytes::from_mib(64), big).or(k.max),
            "floor_below_base" => {
                k.floor_below_base = b(ctx, Bytes::from_mib(128), big).or(k.floor_below_base)
            }
            "methods" => {
                if let Some(list) = strings(ctx, name, v) {
                    let mut ms = Vec::new();
                    for m in list {
                        match m.as_str() {
                            "balloon" => ms.push(Method::Balloon),
                            "virtio-mem" => ms.push(Method::VirtioMem),
                            "dimm" => ms.push(Method::Dimm),
                            other => ctx.err(
                                v.span(),
                                format!("methods: unknown method {other:?}: use \"virtio-mem\", \"balloon\" or \"dimm\""),
                            ),
                        }
                    }
                    let mut dedup = ms.clone();
                    dedup.sort();
                    dedup.dedup();
                    if dedup.len() != ms.len() {
                        ctx.err(v.span(), "methods: a method is listed twice");
                    } else if ms.is_empty() {
                        ctx.err(v.span(), "methods: list at least one method");
                    } else {
                        k.methods = ms;
                    }
                }
            }
            "numa_balance" => k.numa_balance = boolean(ctx, name, v).unwrap_or(k.numa_balance),
            "shares" => {
                if let Some(n) = integer(ctx, name, v) {
                    if (1..=1_000_000).contains(&n) {
                        k.shares = n as u32;
                    } else {
                        ctx.err(
                            v.span(),
                            format!("shares: {n} is out of range 1 to 1000000"),
                        );
                    }
                }
            }
            "stale_after" => k.stale_after = d(ctx, Dur::secs(3600)).unwrap_or(k.stale_after),
            _ => unknown(ctx, key, "[policy.memory]", KNOBS),
        }
    }
    // Cross-knob rules: each names the knob it is reported at.
    let at = |n: &str| spans.get(n).cloned().unwrap_or(span.clone());
    if k.shrink_at.0 <= k.grow_at.0 {
        let s = at("shrink_at");
        ctx.err(
            s,
            format!(
                "shrink threshold {} must be above grow threshold {}",
                k.shrink_at, k.grow_at
            ),
        );
    } else if k.shrink_at.0 <= 1.0 {
        let s = at("shrink_at");
        ctx.err(s, format!("shrink threshold {} must be above 100% of the headroom, or every growth would be undone", k.shrink_at));
    }
    if k.min_free > k.headroom {
        let s = at("min_free");
        ctx.err(
            s,
            format!("min_free {} is above headroom {}", k.min_free, k.headroom),
        );
    }
    if let (Some(min), Some(max)) = (k.min, k.max)
        && min > max
    {
        let s = at("min");
        ctx.err(s, format!("floor {min} (min) is above ceiling {max} (max)"));
    }
    if let (Some(fb), Some(min)) = (k.floor_below_base, k.min)
        && fb > min
    {
        let s = at("floor_below_base");
        ctx.err(
            s,
            format!("floor_below_base {fb} is above min {min}: it would never apply"),
        );
    }
    if !k.numa_balance {
        let s = at("numa_balance");
        ctx.err(
            s,
            "numa_balance = false is not supported: per-node devices always move together",
        );
    }
    k
}

fn parse_policy(ctx: &mut Ctx, t: &DeTable, span: Range<usize>) -> Option<Policy> {
    let (line, _) = line_col(ctx.text, span.start);
    let mut name = None;
    let mut priority = 0;
    let mut dry_run = false;
    let mut knobs = Knobs::default();
    let mut cpu = CpuKnobs::default();
    let (mut names, mut flavors, mut projects, mut tags) = (vec![], vec![], vec![], vec![]);
    let mut sel_span = span.clone();
    let errors_before = ctx
        .diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    for (k, v) in t.iter() {
        let e: Entry = (k, v);
        match e.0.get_ref().as_ref() {
            "name" => name = string(ctx, "name", v),
            "priority" => priority = integer(ctx, "priority", v).unwrap_or(0),
            "dry_run" => dry_run = boolean(ctx, "dry_run", v).unwrap_or(false),
            "match" => match v.get_ref() {
                DeValue::Table(m) => {
                    sel_span = v.span();
                    for (mk, mv) in m.iter() {
                        let key = mk.get_ref().as_ref();
                        let list = strings(ctx, key, mv).unwrap_or_default();
                        match key {
                            "names" | "name" => {
                                for n in &list {
                                    if let Err(e) = globset::Glob::new(n) {
                                        ctx.err(
                                            mv.span(),
                                            format!("bad name glob {n:?}: {}", e.kind()),
                                        );
                                    }
                                }
                                names = list
                            }
                            "flavors" | "flavor" => flavors = list,
                            "projects" | "project" => projects = list,
                            "tags" | "tag" => tags = list,
                            _ => unknown(
                                ctx,
                                mk,
                                "[policy.match]",
                                &["names", "flavors", "projects", "tags"],
                            ),
                        }
                    }
                }
                other => ctx.err(
                    v.span(),
                    format!("match: expected a table, found {}", other.type_str()),
                ),
            },
            "memory" => match v.get_ref() {
                DeValue::Table(m) => knobs = parse_knobs(ctx, m, v.span()),
                other => ctx.err(
                    v.span(),
                    format!("memory: expected a table, found {}", other.type_str()),
                ),
            },
            "cpu" => match v.get_ref() {
                DeValue::Table(m) => cpu = parse_cpu(ctx, m),
                other => ctx.err(
                    v.span(),
                    format!("cpu: expected a table, found {}", other.type_str()),
                ),
            },
            _ => unknown(
                ctx,
                k,
                "[[policy]]",
                &["name", "priority", "dry_run", "match", "memory", "cpu"],
            ),
        }
    }
    let Some(name) = name else {
        ctx.err(span, "policy has no name");
        return None;
    };
    if name.trim().is_empty() {
        ctx.err(span, "policy name is empty");
        return None;
    }
    let errors_after = ctx
        .diags
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    if errors_after > errors_before {
        return None;
    }
    let selector = match Selector::new(names, flavors, projects, tags) {
        Ok(s) => s,
        Err(e) => {
            ctx.err(sel_span, e);
            return None;
        }
    };
    Some(Policy {
        name,
        priority,
        dry_run,
        selector,
        knobs,
        cpu,
        origin: format!("{}:{}", ctx.path, line),
    })
}

const CPU_KNOBS: &[&str] = &[
    "enabled",
    "grow_at",
    "shrink_at",
    "window",
    "cooldown",
    "max_delay",
    "min",
    "max",
];

fn parse_cpu(ctx: &mut Ctx, t: &DeTable) -> CpuKnobs {
    let mut c = CpuKnobs::default();
    let mut spans = std::collections::HashMap::new();
    for (key, v) in t.iter() {
        let name = key.get_ref().as_ref();
        spans.insert(name, v.span());
        let p =
            |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Percent::parse, (Percent(lo), Percent(hi)));
        let d =
            |ctx: &mut Ctx, lo, hi| unit(ctx, name, v, Dur::parse, (Dur::secs(lo), Dur::secs(hi)));
        let count = |ctx: &mut Ctx| match integer(ctx, name, v) {
            Some(n) if (1..=4096).contains(&n) => Some(n as u32),
            Some(n) => {
                ctx.err(
                    v.span(),
                    format!("{name}: {n} is out of range 1 to 4096 vCPUs"),
                );
                None
            }
            None => None,
        };
        match name {
            "enabled" => c.enabled = boolean(ctx, name, v).unwrap_or(c.enabled),
            "grow_at" => c.grow_at = p(ctx, 0.05, 1.0).unwrap_or(c.grow_at),
            "shrink_at" => c.shrink_at = p(ctx, 0.0, 0.95).unwrap_or(c.shrink_at),
            "window" => c.window = d(ctx, 2, 86400).unwrap_or(c.window),
            "cooldown" => c.cooldown = d(ctx, 0, 86400).unwrap_or(c.cooldown),
            "max_delay" => c.max_delay = p(ctx, 0.0, 1.0).unwrap_or(c.max_delay),
            "min" => c.min = count(ctx).or(c.min),
            "max" => c.max = count(ctx).or(c.max),
            _ => unknown(ctx, key, "[policy.cpu]", CPU_KNOBS),
        }
    }
    if c.shrink_at.0 >= c.grow_at.0 {
        let span = spans
            .get("shrink_at")
            .or(spans.get("grow_at"))
            .cloned()
            .unwrap_or(0..0);
        ctx.err(
            span,
            format!(
                "cpu: shrink_at ({}) must be below grow_at ({}), or the vCPU count would swing",
                c.shrink_at, c.grow_at
            ),
        );
    }
    if let (Some(lo), Some(hi)) = (c.min, c.max)
        && lo > hi
    {
        ctx.err(
            spans.get("min").cloned().unwrap_or(0..0),
            format!("cpu: min ({lo}) is above max ({hi})"),
        );
    }
    c
}

/// Parse one file. Returns the policies that parsed cleanly and every problem found.
pub fn parse_policy_text(path: &str, text: &str) -> (Vec<Policy>, Vec<Diag>) {
    let mut ctx = Ctx {
        path,
        text,
        diags: Vec::new(),
    };
    let (doc, errors) = DeTable::parse_recoverable(text);
    for e in &errors {
        let span = e.span().unwrap_or(0..0);
        let msg = e
            .message()
            .lines()
            .next()
            .unwrap_or("syntax error")
            .to_string();
        ctx.err(span, format!("syntax: {msg}"));
    }
    let mut out = Vec::new();
    if !errors.is_empty() {
        return (out, ctx.diags);
    }
    for (k, v) in doc.get_ref().iter() {
        if k.get_ref().as_ref() != "policy" {
            unknown(
                &mut ctx,
                k,
                "the file (only [[policy]] tables belong here)",
                &["policy"],
            );
            continue;
        }
        match v.get_ref() {
            DeValue::Array(a) => {
                for p in a.iter() {
                    match p.get_ref() {
                        DeValue::Table(t) => {
                            if let Some(pol) = parse_policy(&mut ctx, t, p.span()) {
                                out.push(pol);
                            }
                        }
                        other => ctx.err(
                            p.span(),
                            format!("policy: expected a table, found {}", other.type_str()),
                        ),
                    }
                }
            }
            DeValue::Table(t) => {
                ctx.err(
                    k.span(),
                    "write [[policy]] (an array of tables), not [policy]",
                );
                let _ = t;
            }
            other => ctx.err(
                v.span(),
                format!(
                    "policy: expected [[policy]] tables, found {}",
                    other.type_str()
                ),
            ),
        }
    }
    (out, ctx.diags)
}

/// Load and validate a set of files as a whole. `Ok` only when there is no error (warnings
/// are returned either way).
pub fn load_files(paths: &[PathBuf], generation: u64) -> (Option<PolicySet>, Vec<Diag>) {
    let mut all = Vec::new();
    let mut diags = Vec::new();
    for p in paths {
        let shown = p.display().to_string();
        match std::fs::read_to_string(p) {
            Ok(text) => {
                let (pols, d) = parse_policy_text(&shown, &text);
                diags.extend(d);
                all.extend(pols.into_iter().map(|x| (x, text.clone())));
            }
            Err(e) => diags.push(Diag {
                path: shown,
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    // Whole-set rules: unique names, and no two policies that may match the same guest at the
    // same priority (the winner would depend on a name's spelling).
    for i in 0..all.len() {
        for j in 0..i {
            let (a, b) = (&all[j].0, &all[i].0);
            let (path, line) = b.origin.rsplit_once(':').unwrap_or((&b.origin, "1"));
            let mk = |message: String| Diag {
                path: path.to_string(),
                line: line.parse().unwrap_or(1),
                col: 1,
                severity: Severity::Error,
                message,
            };
            if a.name == b.name {
                diags.push(mk(format!(
                    "policy {:?} is defined twice (first at {})",
                    b.name, a.origin
                )));
            } else if a.priority == b.priority && a.selector.may_overlap(&b.selector) {
                diags.push(mk(format!(
                    "policies {:?} and {:?} (at {}) may match the same guests at the same priority {}: give one a higher priority or narrow its match",
                    b.name, a.name, a.origin, b.priority
                )));
            }
        }
    }
    let ok = !diags.iter().any(|d| d.severity == Severity::Error);
    let set = ok.then(|| {
        PolicySet::new(
            all.into_iter().map(|(p, _)| p).collect(),
            paths.to_vec(),
            generation,
        )
    });
    (set, diags)
}

/// The `*.toml` files of a directory, sorted, and their validated set.
pub fn load_dir(dir: &Path, generation: u64) -> (Option<PolicySet>, Vec<Diag>) {
    match policy_files(dir) {
        Ok(files) => load_files(&files, generation),
        Err(e) => (
            None,
            vec![Diag {
                path: dir.display().to_string(),
                line: 1,
                col: 1,
                severity: Severity::Error,
                message: format!("cannot read policy directory: {e}"),
            }],
        ),
    }
}

pub fn policy_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_policy() {
        let text = r#"
[[policy]]
name = "db"
priority = 10
[policy.match]
names = ["db-*"]
[policy.memory]
headroom = "512MiB"
shrink_rate = "32MiB/s"
methods = ["balloon"]
"#;
        let (p, d) = parse_policy_text("x.toml", text);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(p[0].knobs.headroom, Bytes::from_mib(512));
        assert_eq!(p[0].knobs.methods, vec![Method::Balloon]);
        assert_eq!(p[0].origin, "x.toml:2");
    }

    #[test]
    fn every_error_at_once_with_places() {
        let text = "[[policy]]\nname = \"a\"\n[policy.memory]\nheadrom = \"1GiB\"\nmin_free = \"64\"\ngrow_at = \"90%\"\nshrink_at = \"80%\"\n";
        let (p, d) = parse_policy_text("bad.toml", text);
        assert!(p.is_empty());
        let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            shown[0].starts_with("bad.toml:4:1: error: unknown key \"headrom\""),
            "{shown:?}"
        );
        assert!(shown[0].contains("did you mean \"headroom\""));
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("bad.toml:5:12: error: min_free: missing unit")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("bad.toml:7:13: error: shrink threshold")),
            "{shown:?}"
        );
    }

    #[test]
    fn cpu_policy_parses_and_its_mistakes_are_named() {
        let text = "[[policy]]\nname = \"c\"\n[policy.cpu]\nenabled = true\ngrow_at = \"70%\"\nwindow = \"20s\"\nmax = 8\n";
        let (p, d) = parse_policy_text("c.toml", text);
        assert!(d.is_empty(), "{d:?}");
        assert!(p[0].cpu.enabled);
        assert_eq!(p[0].cpu.grow_at, Percent(0.70));
        assert_eq!(p[0].cpu.window, Dur::secs(20));
        assert_eq!(p[0].cpu.max, Some(8));
        assert!(!Policy::builtin().cpu.enabled, "off by default");
        let text = "[[policy]]\nname = \"c\"\n[policy.cpu]\nenabeld = true\nshrink_at = \"90%\"\nmin = 0\n";
        let (p, d) = parse_policy_text("c.toml", text);
        assert!(p.is_empty());
        let shown: Vec<String> = d.iter().map(|d| d.to_string()).collect();
        assert!(
            shown[0].starts_with("c.toml:4:1: error: unknown key \"enabeld\" in [policy.cpu]")
                && shown[0].contains("did you mean \"enabled\""),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("min: 0 is out of range 1 to 4096 vCPUs")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|s| s.starts_with(
                "c.toml:5:13: error: cpu: shrink_at (90%) must be below grow_at (80%)"
            )),
            "{shown:?}"
        );
    }

    #[test]
    fn overlap_at_same_priority_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        std::fs::write(&a, "[[policy]]\nname=\"a\"\n[policy.match]\nnames=[\"web-*\"]\n[[policy]]\nname=\"b\"\n[policy.match]\nnames=[\"web-1\"]\n").unwrap();
        let (set, d) = load_dir(dir.path(), 1);
        assert!(set.is_none());
        assert!(
            d[0].to_string().contains("may match the same guests"),
            "{d:?}"
        );
        assert_eq!(d[0].line, 5);
    }

    #[test]
    fn syntax_errors_have_places() {
        let (_, d) = parse_policy_text("s.toml", "[[policy]]\nname = \"x\ncolor=1\n");
        assert_eq!(d[0].line, 2, "{d:?}");
        assert!(d[0].message.starts_with("syntax"));
    }
}
