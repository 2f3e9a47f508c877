//! Timestamps as JavaScript writes them (`Date.prototype.toISOString`, what `JSON.stringify`
//! makes of a `Date`): `2000-06-13T00:00:00.000Z`, milliseconds, UTC. For peers that speak
//! Socket.IO's own tools: the relay turns an emitter's `Date` argument into one, the gateway's
//! admin UI stamps its events with one.

/// `secs` + `nanos` since the Unix epoch; `None` outside years 0..=9999 or with `nanos` of a
/// second or more.
pub fn from_unix(secs: i64, nanos: u32) -> Option<String> {
    if nanos >= 1_000_000_000 {
        return None;
    }
    let days = secs.div_euclid(86_400);
    let rest = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if !(0..=9999).contains(&year) {
        return None;
    }
    Some(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60,
        nanos / 1_000_000
    ))
}

/// Now, from the system clock.
pub fn now() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since.as_secs()).unwrap_or(i64::MAX);
    from_unix(secs, since.subsec_nanos()).unwrap_or_else(|| "1970-01-01T00:00:00.000Z".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_read_as_javascript_writes_them() {
        assert_eq!(from_unix(0, 0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(
            from_unix(960_854_400, 0).as_deref(),
            Some("2000-06-13T00:00:00.000Z")
        );
        assert_eq!(
            from_unix(951_782_400 + 3_723, 456_000_000).as_deref(),
            Some("2000-02-29T01:02:03.456Z")
        );
        assert_eq!(
            from_unix(-1, 0).as_deref(),
            Some("1969-12-31T23:59:59.000Z")
        );
        assert_eq!(from_unix(0, 1_000_000_000), None);
        assert_eq!(from_unix(i64::MAX, 0), None);
        assert!(now().ends_with('Z'));
    }
}
