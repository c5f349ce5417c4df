//! The problems found in a policy file, each with its place: `PATH:LINE:COL: severity: message`,
//! and the "did you mean" hint for an unknown key.

use serde::Serialize;
use std::fmt;
use std::ops::Range;
use toml::Spanned;

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

pub(super) struct Ctx<'a> {
    pub(super) path: &'a str,
    pub(super) text: &'a str,
    pub(super) diags: Vec<Diag>,
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
    pub(super) fn err(&mut self, span: Range<usize>, message: impl Into<String>) {
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

pub(super) fn unknown(
    ctx: &mut Ctx,
    k: &Spanned<std::borrow::Cow<str>>,
    table: &str,
    known: &[&str],
) {
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
