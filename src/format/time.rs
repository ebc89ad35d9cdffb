//! Times and durations as people type them on the command line.

use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};

/// A point in time: RFC 3339 (`2027-01-31T00:00:00Z`) or relative to `now` (`+30d`,
/// `+90s`, or `-7d` for the past).
pub fn parse_instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    if let Some(rel) = text.strip_prefix('-') {
        let duration = parse_duration(rel)?;
        return now
            .checked_sub_signed(duration)
            .map(whole_seconds)
            .ok_or_else(|| format!("'{text}' is too far in the past"));
    }
    if let Some(rel) = text.strip_prefix('+') {
        let duration = parse_duration(rel)?;
        return now
            .checked_add_signed(duration)
            .map(whole_seconds)
            .ok_or_else(|| format!("'{text}' is too far in the future"));
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| whole_seconds(t.with_timezone(&Utc)))
        .map_err(|e| {
            format!("'{text}' is neither RFC 3339 (2027-01-31T00:00:00Z) nor relative (+30d, +12h, +90s): {e}")
        })
}

/// A duration: `90s`, `15m`, `12h`, `30d`, `1h 30m`, or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let std = humantime::parse_duration(text.trim())
        .map_err(|e| format!("'{text}' is not a duration like 90s, 15m, 12h or 30d: {e}"))?;
    Duration::from_std(std).map_err(|_| format!("'{text}' is too long a duration"))
}

/// Drop sub-second precision: documents carry whole seconds.
pub fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_opt(t.timestamp(), 0)
        .single()
        .expect("a timestamp that exists stays valid without its fraction")
}

/// RFC 3339 with a `Z`, whole seconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A duration for humans: `29d 23h`, `4m 10s`, `12s`.
pub fn human_duration(d: Duration) -> String {
    let total = d.num_seconds().max(0);
    let (days, hours, minutes, seconds) = (
        total / 86_400,
        (total % 86_400) / 3600,
        (total % 3600) / 60,
        total % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m {seconds}s"),
        (0, _, _) => format!("{hours}h {minutes}m"),
        _ => format!("{days}d {hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_instants() {
        let now = Utc.with_ymd_and_hms(2026, 11, 27, 6, 0, 0).unwrap();
        assert_eq!(
            parse_instant("+30d", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 12, 27, 6, 0, 0).unwrap()
        );
        assert_eq!(
            parse_instant("+90s", now).unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 27, 6, 1, 30).unwrap()
        );
        assert_eq!(
            parse_instant("2027-01-31T00:00:00Z", now).unwrap(),
            Utc.with_ymd_and_hms(2027, 1, 31, 0, 0, 0).unwrap()
        );
        assert!(parse_instant("tomorrow", now).is_err());
        assert_eq!(parse_duration("0s").unwrap(), Duration::zero());
        assert_eq!(
            human_duration(Duration::seconds(86_400 * 3 + 7200)),
            "3d 2h"
        );
    }
}
