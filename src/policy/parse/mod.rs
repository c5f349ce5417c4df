//! Reading policy files: a walk over the spanned TOML document that reports every problem at
//! once as `PATH:LINE:COL: message`, instead of stopping at the first like serde would.
//!
//! The walk over a file's `[[policy]]` tables lives here; `knobs` reads the `memory` and `cpu`
//! tables, `value` the typed and unit-bearing values, `diag` places and words the problems,
//! and `load` validates a set of files as a whole.

mod diag;
mod knobs;
mod load;
mod value;

pub use diag::{Diag, Severity, line_col};
pub use load::{load_dir, load_files, policy_files};

use super::{CpuKnobs, Knobs, Policy, Selector};
use diag::{Ctx, unknown};
use knobs::{parse_cpu, parse_knobs};
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use value::{boolean, integer, string, strings};

type Entry<'a, 'i> = (
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
);

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

#[cfg(test)]
mod tests;
