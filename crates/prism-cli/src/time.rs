//! Moments given on the command line: what a Consul, etcd or `date` user types.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::CliError;

/// A moment, not in the future: `now`; RFC 3339 with `Z` or an offset
/// (`2026-12-06T02:00:00+01:00`); a date (`2026-12-06`, midnight UTC); epoch seconds
/// (`1796550000`, or with a fraction); or an age: `10m`, `1h 30m`, `"2h ago"`, `-5m`.
pub fn parse_time(text: &str) -> Result<SystemTime, CliError> {
    let now = SystemTime::now();
    let time = read(text.trim(), now).ok_or_else(|| {
        CliError::Usage(format!(
            "cannot read time {text:?}: use RFC 3339 (2026-11-25T10:00:00Z or \
             2026-11-25T11:00:00+01:00), a date (2026-11-25), epoch seconds, now, or an age \
             such as 10m, -10m or \"1h ago\""
        ))
    })?;
    // A second of slack for clocks read a moment apart.
    if time > now + Duration::from_secs(1) {
        return Err(CliError::Usage(format!(
            "time {text:?} is in the future ({}); the trail holds only the past",
            humantime::format_rfc3339_seconds(time)
        )));
    }
    Ok(time)
}

fn read(text: &str, now: SystemTime) -> Option<SystemTime> {
    if text.eq_ignore_ascii_case("now") {
        return Some(now);
    }
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    if let Ok(time) = time::OffsetDateTime::parse(text, rfc3339) {
        return Some(SystemTime::from(time));
    }
    if let Ok(time) = humantime::parse_rfc3339_weak(text) {
        return Some(time);
    }
    if text.len() == 10 && text.as_bytes().get(4) == Some(&b'-') {
        if let Ok(time) = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")) {
            return Some(time);
        }
    }
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 && !text.starts_with(['+', '-']) {
            return Some(UNIX_EPOCH + Duration::from_secs_f64(seconds));
        }
    }
    let age = text
        .strip_prefix('-')
        .unwrap_or(text)
        .trim_end_matches("ago")
        .trim();
    humantime::parse_duration(age)
        .ok()
        .and_then(|age| now.checked_sub(age))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        parse_time(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    fn epoch(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn rfc3339_with_an_offset_a_date_and_epoch_seconds_name_the_same_moments() {
        // 2026-01-02T03:04:05Z
        let moment = epoch(1_767_323_045);
        assert_eq!(at("2026-01-02T03:04:05Z"), moment);
        assert_eq!(at("2026-01-02T04:04:05+01:00"), moment);
        assert_eq!(at("2026-01-01T22:04:05-05:00"), moment);
        assert_eq!(at("1767323045"), moment);
        assert_eq!(at("1767323045.5"), moment + Duration::from_millis(500));
        assert_eq!(at("2026-01-02"), epoch(1_767_312_000));
    }

    #[test]
    fn ages_count_back_from_now_with_or_without_a_sign_or_ago() {
        for text in ["5m", "-5m", "5m ago", "5 min ago"] {
            let age = SystemTime::now().duration_since(at(text)).unwrap();
            assert!(
                age >= Duration::from_secs(299) && age <= Duration::from_secs(301),
                "{text:?}: {age:?}"
            );
        }
        let now = SystemTime::now()
            .duration_since(at("now"))
            .unwrap_or_default();
        assert!(now < Duration::from_secs(1));
    }

    #[test]
    fn a_future_time_and_nonsense_are_usage_errors_that_say_why() {
        let future =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(3600));
        let err = parse_time(&future.to_string()).unwrap_err().to_string();
        assert!(err.contains("is in the future"), "{err}");
        let err = parse_time("the day before").unwrap_err().to_string();
        assert!(
            err.contains("cannot read time") && err.contains("epoch seconds"),
            "{err}"
        );
        // A negative number is neither epoch seconds nor an age with a unit.
        assert!(parse_time("-1767323045").is_err());
    }
}
