//! The values of a policy file, typed: strings, integers, booleans, lists of strings and
//! unit-bearing values (`"512MiB"`, `"30s"`, `"15%"`), each range-checked where asked and
//! reported at its place when wrong.

use super::diag::Ctx;
use std::fmt;
use toml::Spanned;
use toml::de::DeValue;

pub(super) fn string(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<String> {
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

pub(super) fn integer(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<i64> {
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

pub(super) fn boolean(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<bool> {
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

pub(super) fn strings(ctx: &mut Ctx, key: &str, v: &Spanned<DeValue>) -> Option<Vec<String>> {
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
pub(super) fn unit<T: PartialOrd + fmt::Display + Copy>(
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
