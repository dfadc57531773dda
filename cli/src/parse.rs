//! Value parsers for arguments clap cannot parse by itself. Each returns a
//! message clap shows as a usage error; none of them panics.

use std::net::IpAddr;
use std::time::Duration;

use api::resources::AddressRange;
use chrono::{DateTime, Utc};

/// `90s`, `30m`, `24h`, `7d`, `2w`, or a sum such as `1h30m`.
pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration; use e.g. 30m, 24h or 7d".into());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(format!("unknown unit `{c}` in `{s}`; use s, m, h, d or w")),
        };
        if digits.is_empty() {
            return Err(format!("`{s}`: a number must come before `{c}`"));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{digits}` is too large"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{s}` is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!(
            "`{s}` needs a unit after {digits}: s, m, h, d or w"
        ));
    }
    Ok(Duration::from_secs(total))
}

/// An RFC 3339 timestamp, e.g. `2026-01-31T00:00:00Z`.
pub fn timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time like 2026-01-31T00:00:00Z ({e})"))
}

/// `START-END`, inclusive, e.g. `10.0.0.100-10.0.0.200` (or a single address).
pub fn address_range(s: &str) -> Result<AddressRange, String> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let start: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not an IP address"))?;
    let end: IpAddr = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not an IP address"))?;
    if start.is_ipv4() != end.is_ipv4() {
        return Err(format!("`{s}` mixes IPv4 and IPv6"));
    }
    if start > end {
        return Err(format!("`{s}`: start is after end"));
    }
    Ok(AddressRange { start, end })
}

/// `ADDRESS/PREFIX`, e.g. `10.10.0.0/24`. Kept as text: the API type parses it.
pub fn cidr(s: &str) -> Result<String, String> {
    let bad = || format!("`{s}` is not a CIDR like 10.10.0.0/24 or fd00::/64");
    let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(format!("`{s}`: prefix length must be at most {max}"));
    }
    Ok(format!("{addr}/{prefix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(duration("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration(" 0s "), Ok(Duration::from_secs(0)));
    }

    #[test]
    fn bad_durations_are_errors_not_panics() {
        for bad in [
            "",
            "24",
            "h",
            "5x",
            "-1h",
            "1.5h",
            "99999999999999999999h",
            "18446744073709551615w",
        ] {
            assert!(duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(duration("24").unwrap_err().contains("needs a unit"));
    }

    #[test]
    fn timestamps() {
        let t = timestamp("2026-01-31T12:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-01-31T11:00:00+00:00");
        assert!(timestamp("yesterday").is_err());
    }

    #[test]
    fn ranges_and_cidrs() {
        let r = address_range("10.0.0.10-10.0.0.20").unwrap();
        assert_eq!(r.start.to_string(), "10.0.0.10");
        assert_eq!(r.end.to_string(), "10.0.0.20");
        let single = address_range("fd00::5").unwrap();
        assert_eq!(single.start, single.end);
        assert!(address_range("10.0.0.20-10.0.0.10").is_err());
        assert!(address_range("10.0.0.1-fd00::1").is_err());
        assert!(address_range("a-b").is_err());
        assert_eq!(cidr("10.10.0.0/24").unwrap(), "10.10.0.0/24");
        assert_eq!(cidr("fd00:10::/64").unwrap(), "fd00:10::/64");
        assert!(cidr("10.10.0.0").is_err());
        assert!(cidr("10.10.0.0/33").is_err());
        assert!(cidr("10.10.0.0/x").is_err());
    }
}
