//! Slurm's time formats, as `--checkpoint` / `SLURM_CHECKPOINT` took them.
//!
//! The six accepted forms (as Slurm's removed `--checkpoint` option documented them) are:
//!
//! | form | example | seconds |
//! |---|---|---|
//! | `minutes` | `90` | 5400 |
//! | `minutes:seconds` | `5:30` | 330 |
//! | `hours:minutes:seconds` | `1:02:03` | 3723 |
//! | `days-hours` | `2-12` | 216000 |
//! | `days-hours:minutes` | `1-02:03` | 93780 |
//! | `days-hours:minutes:seconds` | `1-02:03:04` | 93784 |
//!
//! The leading field of each form is unbounded (`90` minutes is fine, as in Slurm); every later field
//! must be below its natural limit (hours < 24 after a day count, minutes and seconds < 60). Surrounding
//! white space is ignored. Anything else is an [`ErrorKind::InvalidArgument`](crate::ErrorKind) error
//! that quotes the string and lists the accepted forms.

use std::time::Duration;

use crate::error::{Error, Result};

/// The accepted forms, quoted in every parse error.
pub const ACCEPTED_FORMS: &str = "minutes, minutes:seconds, hours:minutes:seconds, days-hours, \
                                  days-hours:minutes, days-hours:minutes:seconds";

/// Parses one of Slurm's six time formats into a duration.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(ckpt_core::parse_slurm_time("1-02:03:04").unwrap(), Duration::from_secs(93784));
/// assert_eq!(ckpt_core::parse_slurm_time("30").unwrap(), Duration::from_secs(1800));
/// assert!(ckpt_core::parse_slurm_time("1:2:3:4").is_err());
/// ```
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) for text in none of the six forms, or a field out
/// of range (`1:75` minutes and seconds), naming the text and listing the accepted forms.
pub fn parse_slurm_time(text: &str) -> Result<Duration> {
    parse_inner(text.trim())
        .map(Duration::from_secs)
        .map_err(|why| Error::invalid(format!("invalid time {text:?}: {why}; accepted forms are {ACCEPTED_FORMS}")))
}

/// Parses a time setting of ckpt's own (`CKPT_INTERVAL`, `CKPT_MARGIN`, `CKPT_MTBF`): numbers with units
/// (`30s`, `2m`, `1.5h`, `1d`, `1h30m`; units `s`, `m`/`min`, `h`, `d`), or one of Slurm's six forms (where
/// a bare number is minutes). `SLURM_CHECKPOINT` keeps Slurm's forms only ([`parse_slurm_time`]).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(ckpt_core::parse_time_with_units("30s").unwrap(), Duration::from_secs(30));
/// assert_eq!(ckpt_core::parse_time_with_units("1h30m").unwrap(), Duration::from_secs(5400));
/// assert_eq!(ckpt_core::parse_time_with_units("2").unwrap(), Duration::from_secs(120));
/// ```
///
/// # Errors
///
/// [`ErrorKind::InvalidArgument`](crate::ErrorKind::InvalidArgument) for an unknown unit, a number without a unit after
/// one with a unit, or text in none of Slurm's forms, naming the text and listing the accepted forms.
pub fn parse_time_with_units(text: &str) -> Result<Duration> {
    let t = text.trim();
    if !t.contains(|c: char| c.is_ascii_alphabetic()) {
        return parse_slurm_time(text);
    }
    parse_units(t).map_err(|why| {
        Error::invalid(format!(
            "invalid time {text:?}: {why}; accepted forms are numbers with units (30s, 2m, 1h, 1d, 1h30m), \
             {ACCEPTED_FORMS}"
        ))
    })
}

fn parse_units(s: &str) -> std::result::Result<Duration, String> {
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..end].parse().map_err(|_| format!("expected a number at {rest:?}"))?;
        let after = &rest[end..];
        let unit_end = after.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(after.len());
        let scale = match after[..unit_end].to_ascii_lowercase().as_str() {
            "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "" => return Err(format!("{:?} has no unit", &rest[..end])),
            other => return Err(format!("unknown unit {other:?} (s, m, h, d)")),
        };
        total += value * scale;
        rest = after[unit_end..].trim_start();
    }
    if !(0.0..1e15).contains(&total) {
        return Err("out of range".into());
    }
    Ok(Duration::from_secs_f64(total))
}

fn parse_inner(s: &str) -> std::result::Result<u64, String> {
    if s.is_empty() {
        return Err("empty string".into());
    }
    let (days, rest) = match s.split_once('-') {
        Some((d, rest)) => (Some(number(d, "days")?), rest),
        None => (None, s),
    };
    let fields: Vec<&str> = rest.split(':').collect();
    let secs = match (days, fields.as_slice()) {
        (None, [m]) => mul(number(m, "minutes")?, 60)?,
        (None, [m, sec]) => add(mul(number(m, "minutes")?, 60)?, bounded(sec, "seconds", 60)?)?,
        (None, [h, m, sec]) => {
            let hours = mul(number(h, "hours")?, 3600)?;
            add(add(hours, bounded(m, "minutes", 60)? * 60)?, bounded(sec, "seconds", 60)?)?
        }
        (Some(d), parts @ ([_] | [_, _] | [_, _, _])) => {
            let mut total = add(mul(d, 86_400)?, bounded(parts[0], "hours", 24)? * 3600)?;
            if let Some(m) = parts.get(1) {
                total = add(total, bounded(m, "minutes", 60)? * 60)?;
            }
            if let Some(sec) = parts.get(2) {
                total = add(total, bounded(sec, "seconds", 60)?)?;
            }
            total
        }
        _ => return Err("wrong number of fields".into()),
    };
    Ok(secs)
}

fn number(field: &str, what: &str) -> std::result::Result<u64, String> {
    if field.is_empty() || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} field {field:?} is not a non-negative integer"));
    }
    field.parse::<u64>().map_err(|_| format!("{what} field {field:?} is too large"))
}

fn bounded(field: &str, what: &str, limit: u64) -> std::result::Result<u64, String> {
    let value = number(field, what)?;
    if value >= limit {
        return Err(format!("{what} field {field:?} must be below {limit}"));
    }
    Ok(value)
}

fn mul(a: u64, b: u64) -> std::result::Result<u64, String> {
    a.checked_mul(b).ok_or_else(|| "value too large".to_string())
}

fn add(a: u64, b: u64) -> std::result::Result<u64, String> {
    a.checked_add(b).ok_or_else(|| "value too large".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn secs(s: &str) -> u64 {
        parse_slurm_time(s).unwrap().as_secs()
    }

    #[test]
    fn the_six_formats() {
        assert_eq!(secs("90"), 5400); // minutes
        assert_eq!(secs("5:30"), 330); // minutes:seconds
        assert_eq!(secs("1:02:03"), 3723); // hours:minutes:seconds
        assert_eq!(secs("2-12"), 2 * 86_400 + 12 * 3600); // days-hours
        assert_eq!(secs("1-02:03"), 86_400 + 2 * 3600 + 3 * 60); // days-hours:minutes
        assert_eq!(secs("1-02:03:04"), 93_784); // days-hours:minutes:seconds
    }

    #[test]
    fn units() {
        let u = |s: &str| parse_time_with_units(s).unwrap();
        let secs = Duration::from_secs;
        assert_eq!(u("30s"), secs(30));
        assert_eq!(u("2m"), secs(120));
        assert_eq!(u("2min"), secs(120));
        assert_eq!(u("1h"), secs(3600));
        assert_eq!(u("1.5h"), secs(5400));
        assert_eq!(u("1d"), secs(86_400));
        assert_eq!(u("1h30m"), secs(5400));
        assert_eq!(u(" 1h 30m 15s "), secs(5415));
        assert_eq!(u("2"), secs(120)); // Slurm's minutes
        assert_eq!(u("1:30"), secs(90));
        for bad in ["30x", "s", "1h30", "h1", "1..5h", "-5s"] {
            let e = parse_time_with_units(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}");
            assert!(e.to_string().contains("30s, 2m"), "{e}");
        }
        assert!(parse_slurm_time("30s").is_err(), "Slurm's forms have no units");
    }

    #[test]
    fn edge_values() {
        assert_eq!(secs("0"), 0);
        assert_eq!(secs(" 15 "), 900);
        assert_eq!(secs("0:59"), 59);
        assert_eq!(secs("100:00"), 6000);
        assert_eq!(secs("48:00:00"), 48 * 3600);
        assert_eq!(secs("0-23:59:59"), 86_399);
        assert_eq!(secs("007"), 420);
    }

    #[test]
    fn errors_quote_the_string_and_the_forms() {
        for bad in [
            "",
            " ",
            "abc",
            "1:2:3:4",
            "1-2:3:4:5",
            "-5",
            "5-",
            "1--2",
            "1:60",
            "1:60:00",
            "1-24",
            "1-1:60",
            "1-1:1:60",
            "1.5",
            "+5",
            "1h",
            "1:",
            ":1",
            "1-",
            "99999999999999999999",
            "1-2-3",
        ] {
            let err = parse_slurm_time(bad).expect_err(bad);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{bad}");
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains(ACCEPTED_FORMS), "{msg}");
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let big = format!("{}", u64::MAX / 60 + 1);
        assert!(parse_slurm_time(&big).is_err());
        let big_days = format!("{}-0", u64::MAX / 86_400 + 1);
        assert!(parse_slurm_time(&big_days).is_err());
    }
}
