//! Unit-bearing values: memory sizes in bytes, durations and percentages, parsed from the
//! strings operators write (`"512MiB"`, `"30s"`, `"15%"`) and printed back the same way.
//!
//! All memory arithmetic in memscale is done in [`Bytes`] (a `u64` count of bytes) with
//! saturating or checked operations; conversion to KiB/MiB happens only at the edges.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
pub const TIB: u64 = 1024 * GIB;

/// A number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Bytes(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("empty value")]
    Empty,
    #[error("missing unit in {0:?}: write it like \"512MiB\" (B, KiB, MiB, GiB, TiB)")]
    MissingSizeUnit(String),
    #[error("unknown size unit {unit:?} in {value:?}: use B, KiB, MiB, GiB or TiB")]
    BadSizeUnit { value: String, unit: String },
    #[error("missing unit in {0:?}: write it like \"30s\" (ms, s, m, h)")]
    MissingDurationUnit(String),
    #[error("unknown duration unit {unit:?} in {value:?}: use ms, s, m or h")]
    BadDurationUnit { value: String, unit: String },
    #[error("missing unit in {0:?}: write it like \"64MiB/s\"")]
    MissingRateUnit(String),
    #[error("{0:?} is not a percentage: write it like \"15%\"")]
    NotPercent(String),
    #[error("{0:?} is not a number")]
    NotNumber(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_digit() || *c == '.' || *c == '-' || *c == '+'))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    (s[..end].trim(), s[end..].trim())
}

fn parse_nonneg(num: &str, whole: &str) -> Result<f64, UnitError> {
    let v: f64 = num
        .parse()
        .map_err(|_| UnitError::NotNumber(whole.to_string()))?;
    if !v.is_finite() {
        return Err(UnitError::NotNumber(whole.to_string()));
    }
    if v < 0.0 {
        return Err(UnitError::Negative(whole.to_string()));
    }
    Ok(v)
}

impl Bytes {
    pub const ZERO: Bytes = Bytes(0);

    pub const fn from_kib(k: u64) -> Bytes {
        Bytes(k.saturating_mul(KIB))
    }
    pub const fn from_mib(m: u64) -> Bytes {
        Bytes(m.saturating_mul(MIB))
    }
    pub const fn from_gib(g: u64) -> Bytes {
        Bytes(g.saturating_mul(GIB))
    }
    pub const fn kib(self) -> u64 {
        self.0 / KIB
    }
    pub const fn mib(self) -> u64 {
        self.0 / MIB
    }
    pub fn mib_f64(self) -> f64 {
        self.0 as f64 / MIB as f64
    }
    pub const fn saturating_sub(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(o.0))
    }
    pub const fn saturating_add(self, o: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(o.0))
    }
    pub fn checked_add(self, o: Bytes) -> Option<Bytes> {
        self.0.checked_add(o.0).map(Bytes)
    }
    pub fn checked_sub(self, o: Bytes) -> Option<Bytes> {
        self.0.checked_sub(o.0).map(Bytes)
    }
    /// `self` scaled by a non-negative factor, saturating.
    pub fn scale(self, f: f64) -> Bytes {
        if !f.is_finite() || f <= 0.0 {
            return Bytes(0);
        }
        let v = self.0 as f64 * f;
        if v >= u64::MAX as f64 {
            Bytes(u64::MAX)
        } else {
            Bytes(v as u64)
        }
    }
    /// Round down to a multiple of `g` (a zero granularity leaves the value as it is).
    pub fn align_down(self, g: Bytes) -> Bytes {
        if g.0 == 0 {
            self
        } else {
            Bytes(self.0 - self.0 % g.0)
        }
    }
    /// Round up to a multiple of `g`, saturating at the largest multiple that fits.
    pub fn align_up(self, g: Bytes) -> Bytes {
        if g.0 == 0 {
            return self;
        }
        let down = self.align_down(g);
        if down == self {
            self
        } else {
            down.checked_add(g).unwrap_or(down)
        }
    }
    pub fn min(self, o: Bytes) -> Bytes {
        if self <= o { self } else { o }
    }
    pub fn max(self, o: Bytes) -> Bytes {
        if self >= o { self } else { o }
    }
    /// Signed difference `self - o` in bytes, as i128 so it never overflows.
    pub fn delta(self, o: Bytes) -> i128 {
        self.0 as i128 - o.0 as i128
    }

    pub fn parse(s: &str) -> Result<Bytes, UnitError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(UnitError::Empty);
        }
        let (num, unit) = split_number(t);
        if num.is_empty() {
            return Err(UnitError::NotNumber(t.to_string()));
        }
        let mult = match unit {
            "" => {
                // A bare zero needs no unit; anything else does, so that "512" is never
                // silently taken as bytes when the operator meant MiB.
                if parse_nonneg(num, t)? == 0.0 {
                    return Ok(Bytes(0));
                }
                return Err(UnitError::MissingSizeUnit(t.to_string()));
            }
            "B" => 1,
            "KiB" | "K" | "k" => KIB,
            "MiB" | "M" => MIB,
            "GiB" | "G" => GIB,
            "TiB" | "T" => TIB,
            other => {
                return Err(UnitError::BadSizeUnit {
                    value: t.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        let v = parse_nonneg(num, t)? * mult as f64;
        if v >= u64::MAX as f64 {
            return Err(UnitError::TooLarge(t.to_string()));
        }
        Ok(Bytes(v.round() as u64))
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if b >= m {
                if b.is_multiple_of(m) {
                    return write!(f, "{}{}", b / m, unit);
                }
                if m >= MIB {
                    return write!(f, "{:.1}{}", b as f64 / m as f64, unit);
                }
            }
        }
        write!(f, "{}B", b)
    }
}

impl std::ops::Add for Bytes {
    type Output = Bytes;
    fn add(self, o: Bytes) -> Bytes {
        self.saturating_add(o)
    }
}

impl std::iter::Sum for Bytes {
    fn sum<I: Iterator<Item = Bytes>>(iter: I) -> Bytes {
        iter.fold(Bytes(0), |a, b| a + b)
    }
}

/// In JSON (API, audit) sizes are exact byte counts; people write them with units in files.
impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum StrOrNum {
    S(String),
    N(i64),
    F(f64),
}

/// Values written with a unit in files: serialised as their text, read from a string, or from
/// a bare number only when it is zero (so `window = 30` is an error, not thirty of something).
macro_rules! text_with_unit {
    ($ty:ty, $missing:ident, $zero:expr, serialize_text: $ser:tt) => {
        text_with_unit!(@ser $ty, $ser);
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                match StrOrNum::deserialize(d)? {
                    StrOrNum::S(s) => <$ty>::parse(&s).map_err(serde::de::Error::custom),
                    StrOrNum::N(0) if $zero.is_some() => Ok($zero.unwrap_or_default()),
                    StrOrNum::N(n) => Err(serde::de::Error::custom(UnitError::$missing(n.to_string()))),
                    StrOrNum::F(f) => Err(serde::de::Error::custom(UnitError::$missing(f.to_string()))),
                }
            }
        }
    };
    (@ser $ty:ty, true) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
    };
    (@ser $ty:ty, false) => {};
}

text_with_unit!(Bytes, MissingSizeUnit, Some(Bytes(0)), serialize_text: false);
text_with_unit!(Dur, MissingDurationUnit, Some(Dur(Duration::ZERO)), serialize_text: true);
text_with_unit!(Rate, MissingRateUnit, Some(Rate(Bytes(0))), serialize_text: true);
text_with_unit!(Percent, NotPercent, None::<Percent>, serialize_text: true);

/// A duration written with a unit: `"500ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }
    pub fn millis(ms: u64) -> Dur {
        Dur(Duration::from_millis(ms))
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
    pub fn parse(s: &str) -> Result<Dur, UnitError> {
        let t = s.trim();
        if t.is_empty() {
            return Err(UnitError::Empty);
        }
        let (num, unit) = split_number(t);
        if num.is_empty() {
            return Err(UnitError::NotNumber(t.to_string()));
        }
        let secs = match unit {
            "" => {
                if parse_nonneg(num, t)? == 0.0 {
                    return Ok(Dur(Duration::ZERO));
                }
                return Err(UnitError::MissingDurationUnit(t.to_string()));
            }
            "ms" => 0.001,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            other => {
                return Err(UnitError::BadDurationUnit {
                    value: t.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        let v = parse_nonneg(num, t)? * secs;
        if v > 1.0e12 {
            return Err(UnitError::TooLarge(t.to_string()));
        }
        Ok(Dur(Duration::from_secs_f64(v)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{}ms", ms)
        } else {
            let s = ms / 1000;
            if s != 0 && s.is_multiple_of(3600) {
                write!(f, "{}h", s / 3600)
            } else if s != 0 && s.is_multiple_of(60) {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{}s", s)
            }
        }
    }
}

/// A percentage written `"15%"`, kept as a fraction (0.15).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Percent(pub f64);

impl Percent {
    pub fn parse(s: &str) -> Result<Percent, UnitError> {
        let t = s.trim();
        let Some(num) = t.strip_suffix('%') else {
            return Err(UnitError::NotPercent(t.to_string()));
        };
        let v = parse_nonneg(num.trim(), t)?;
        Ok(Percent(v / 100.0))
    }
    pub fn fraction(self) -> f64 {
        self.0
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0 * 100.0;
        if (v - v.round()).abs() < 1e-9 {
            write!(f, "{}%", v.round() as i64)
        } else {
            write!(f, "{}%", v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(Bytes::parse("512MiB").unwrap(), Bytes::from_mib(512));
        assert_eq!(Bytes::parse("1.5GiB").unwrap(), Bytes(3 * GIB / 2));
        assert_eq!(Bytes::parse(" 4 KiB ").unwrap(), Bytes(4096));
        assert_eq!(Bytes::parse("0").unwrap(), Bytes(0));
        assert!(matches!(
            Bytes::parse("512"),
            Err(UnitError::MissingSizeUnit(_))
        ));
        assert!(matches!(
            Bytes::parse("512MB"),
            Err(UnitError::BadSizeUnit { .. })
        ));
        assert!(matches!(Bytes::parse("-1MiB"), Err(UnitError::Negative(_))));
        assert_eq!(Bytes::from_mib(512).to_string(), "512MiB");
        assert_eq!(Bytes::from_gib(2).to_string(), "2GiB");
        assert_eq!(Bytes(100).to_string(), "100B");
    }

    #[test]
    fn durations_and_percent() {
        assert_eq!(Dur::parse("30s").unwrap(), Dur::secs(30));
        assert_eq!(Dur::parse("500ms").unwrap(), Dur::millis(500));
        assert_eq!(Dur::parse("2m").unwrap(), Dur::secs(120));
        assert!(matches!(
            Dur::parse("30"),
            Err(UnitError::MissingDurationUnit(_))
        ));
        assert_eq!(Dur::secs(120).to_string(), "2m");
        assert_eq!(Percent::parse("15%").unwrap(), Percent(0.15));
        assert!(Percent::parse("15").is_err());
        assert_eq!(Percent(0.15).to_string(), "15%");
    }

    #[test]
    fn alignment() {
        let g = Bytes::from_mib(2);
        assert_eq!(Bytes::from_mib(5).align_down(g), Bytes::from_mib(4));
        assert_eq!(Bytes::from_mib(5).align_up(g), Bytes::from_mib(6));
        assert_eq!(Bytes::from_mib(6).align_up(g), Bytes::from_mib(6));
        assert_eq!(Bytes(u64::MAX).align_up(g), Bytes(u64::MAX).align_down(g));
    }
}

/// A rate of memory movement written `"64MiB/s"`; zero means unlimited where a knob says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Rate(pub Bytes);

impl Rate {
    pub fn parse(s: &str) -> Result<Rate, UnitError> {
        let t = s.trim();
        if t == "0" {
            return Ok(Rate(Bytes(0)));
        }
        let Some(size) = t.strip_suffix("/s") else {
            return Err(UnitError::MissingRateUnit(t.to_string()));
        };
        Ok(Rate(Bytes::parse(size)?))
    }
    pub fn per_sec(self) -> Bytes {
        self.0
    }
    /// How much may move in `secs` seconds at this rate.
    pub fn over(self, secs: f64) -> Bytes {
        self.0.scale(secs.max(0.0))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.0)
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;
    #[test]
    fn rates() {
        assert_eq!(Rate::parse("64MiB/s").unwrap(), Rate(Bytes::from_mib(64)));
        assert!(matches!(
            Rate::parse("64MiB"),
            Err(UnitError::MissingRateUnit(_))
        ));
        assert_eq!(Rate(Bytes::from_mib(10)).over(2.5), Bytes::from_mib(25));
    }
}
