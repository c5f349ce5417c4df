//! The lexer: a Rust file's code with comments and literals blanked, cut into tokens, its
//! `#[cfg(test)]` items left out and each token tagged with the (inline) module it is in.

use crate::read::join;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tok {
    pub text: String,
    pub line: usize,
}

/// The code of a Rust file with comments blanked and each string or char literal replaced by
/// `""`, newlines kept (so lines still count).
fn strip(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    // Blank a range, keeping its newlines.
    let blank = |out: &mut String, from: usize, to: usize| {
        for &ch in &c[from..to.min(c.len())] {
            if ch == '\n' {
                out.push('\n');
            }
        }
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            let start = i;
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            blank(&mut out, start, i);
            out.push(' ');
        } else if ch == '/' && at(i + 1) == '*' {
            let start = i;
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            blank(&mut out, start, i);
            out.push(' ');
        } else if let Some(len) = raw_string_start(&c, i) {
            // r"..", r#".."#, br#".."#, cr".."; `len` covers the prefix up to the quote.
            let hashes = c[i..i + len].iter().filter(|&&h| h == '#').count();
            let start = i;
            i += len;
            loop {
                if i >= c.len() {
                    break;
                }
                if c[i] == '"' && (0..hashes).all(|k| at(i + 1 + k) == '#') {
                    i += 1 + hashes;
                    break;
                }
                i += 1;
            }
            blank(&mut out, start, i);
            out.push_str("\"\"");
        } else if ch == '"'
            || ((ch == 'b' || ch == 'c') && at(i + 1) == '"' && !ident_before(&c, i))
        {
            let start = i;
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            blank(&mut out, start, i);
            out.push_str("\"\"");
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'' && !ident_before(&c, i)) {
            let q = if ch == '\'' { i } else { i + 1 };
            // A char literal ('x', '\n', '\u{1F600}') or a lifetime ('a, 'static).
            let is_char = at(q + 1) == '\\' || (at(q + 1) != '\0' && at(q + 2) == '\'');
            if is_char {
                let start = i;
                i = q + 1;
                while i < c.len() && c[i] != '\'' {
                    if c[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
                blank(&mut out, start, i);
                out.push_str("\"\"");
            } else {
                out.push(ch);
                i += 1;
            }
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

fn ident_before(c: &[char], i: usize) -> bool {
    i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_')
}

/// The length of a raw string's opening (`r#"`, `br"`, ...) at `i`, if one starts there.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    if ident_before(c, i) {
        return None;
    }
    let mut j = i;
    if matches!(c.get(j), Some('b') | Some('c')) {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    j += 1;
    while c.get(j) == Some(&'#') {
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some(j + 1 - i)
}

/// Identifiers (raw ones without their `r#`), `::`, and single punctuation; numbers dropped.
fn tokens(code: &str) -> Vec<Tok> {
    let c: Vec<char> = code.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == 'r'
            && c.get(i + 1) == Some(&'#')
            && c.get(i + 2).is_some_and(|x| x.is_alphabetic() || *x == '_')
        {
            i += 2;
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok {
                text: c[s..i].iter().collect(),
                line,
            });
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok {
                text: c[s..i].iter().collect(),
                line,
            });
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Tok {
                text: ch.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

pub fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// One file's code, split into what it declares and the token stream of its non-test code,
/// each token tagged with the (possibly inline) module it is in.
pub struct Scanned {
    /// `(module, token)` for code outside `#[cfg(test)]` items.
    pub code: Vec<(String, Tok)>,
    /// Inline modules declared (outside tests).
    pub inline: Vec<String>,
    /// Child modules declared `#[cfg(test)] mod x;`: their files are tests.
    pub test_children: Vec<String>,
}

fn cfg_test_attr(t: &[Tok], i: usize) -> Option<usize> {
    // `#[cfg(...)]` with `test` and no `not` inside: returns the index after the `]`.
    if t.get(i)?.text != "#" || t.get(i + 1)?.text != "[" || t.get(i + 2)?.text != "cfg" {
        return None;
    }
    let end = matching(t, i + 1)?;
    let inner = &t[i + 3..end];
    (inner.iter().any(|x| x.text == "test") && !inner.iter().any(|x| x.text == "not"))
        .then_some(end + 1)
}

/// The index of the bracket closing the one at `i`.
fn matching(t: &[Tok], i: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (j, tok) in t.iter().enumerate().skip(i) {
        match tok.text.as_str() {
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => {
                depth -= 1;
                if depth == 0 {
                    return Some(j);
                }
            }
            _ => {}
        }
    }
    None
}

pub fn scan(module: &str, text: &str) -> Scanned {
    let t = tokens(&strip(text));
    let mut out = Scanned {
        code: Vec::new(),
        inline: Vec::new(),
        test_children: Vec::new(),
    };
    // Inline modules open: (module path, brace depth at which it closes).
    let mut stack: Vec<(String, i32)> = vec![(module.to_string(), -1)];
    let mut depth = 0i32;
    let mut i = 0;
    while i < t.len() {
        if let Some(mut j) = cfg_test_attr(&t, i) {
            // Skip any further attributes, then the item: to its `;` or through its block.
            while t.get(j).is_some_and(|x| x.text == "#") {
                j = matching(&t, j + 1).map_or(t.len(), |e| e + 1);
            }
            let item = j;
            let mut k = j;
            while k < t.len() {
                match t[k].text.as_str() {
                    ";" => break,
                    "{" => {
                        k = matching(&t, k).unwrap_or(t.len());
                        break;
                    }
                    "(" | "[" => k = matching(&t, k).unwrap_or(t.len()) + 1,
                    _ => k += 1,
                }
            }
            // `#[cfg(test)] mod name;` makes `name`'s file a test.
            let words: Vec<&str> = t[item..k.min(t.len())]
                .iter()
                .map(|x| x.text.as_str())
                .collect();
            if let Some(p) = words.iter().position(|w| *w == "mod")
                && t.get(k).is_some_and(|x| x.text == ";")
                && let Some(name) = words.get(p + 1)
            {
                let cur = &stack.last().expect("stack").0;
                out.test_children.push(join(cur, name));
            }
            i = k + 1;
            continue;
        }
        let cur = stack.last().expect("stack").0.clone();
        match t[i].text.as_str() {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if stack.last().is_some_and(|s| s.1 == depth) {
                    stack.pop();
                }
            }
            "mod"
                if t.get(i + 2).is_some_and(|x| x.text == "{")
                    && t.get(i + 1).is_some_and(|x| is_ident(&x.text)) =>
            {
                let m = join(&cur, &t[i + 1].text);
                out.inline.push(m.clone());
                stack.push((m, depth));
                depth += 1;
                i += 3;
                continue;
            }
            _ => {}
        }
        out.code.push((cur, t[i].clone()));
        i += 1;
    }
    out
}

/// One `use` tree flattened: each full path, and the name it binds (`None` for a glob or `_`).
pub fn use_paths(
    t: &[&str],
    mut i: usize,
    prefix: Vec<String>,
    out: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    let mut p = prefix;
    if t.get(i) == Some(&"::") {
        p.push("::".into());
        i += 1;
    }
    loop {
        match t.get(i).copied() {
            Some("{") => {
                i += 1;
                while t.get(i).is_some_and(|x| *x != "}") {
                    i = use_paths(t, i, p.clone(), out);
                    if t.get(i) == Some(&",") {
                        i += 1;
                    }
                }
                return i + 1;
            }
            Some("*") => {
                p.push("*".into());
                out.push((p, None));
                return i + 1;
            }
            Some(seg) if is_ident(seg) => {
                p.push(seg.to_string());
                i += 1;
                if t.get(i) == Some(&"::") {
                    i += 1;
                    continue;
                }
                let mut name = if seg == "self" {
                    p.iter().rev().nth(1).cloned()
                } else {
                    Some(seg.to_string())
                };
                if t.get(i) == Some(&"as") {
                    name = t.get(i + 1).filter(|a| **a != "_").map(|a| a.to_string());
                    i += 2;
                }
                out.push((p, name));
                return i;
            }
            _ => return i,
        }
    }
}
