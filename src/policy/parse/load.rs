//! Loading policy files: a directory's `*.toml` files, parsed and validated as one set (unique
//! names, no two policies that may match a guest at the same priority).

use super::{Diag, Severity, parse_policy_text};
use crate::policy::PolicySet;
use std::path::{Path, PathBuf};

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
