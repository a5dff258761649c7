//! Durations as users write them: `30s`, `500ms`, `2m`, `1h`, or a bare
//! number of seconds (OpenFaaS's `exec_timeout` accepts both).

use std::time::Duration;

const MAX_SECONDS: f64 = 366.0 * 86_400.0;

/// `"128Mi"` → `("128", "Mi")`: the leading number and what follows it.
pub(crate) fn number_and_unit(text: &str) -> (&str, &str) {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    t.split_at(split)
}

pub fn parse(text: &str) -> Result<Duration, String> {
    let (num, unit) = number_and_unit(text);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (use e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?} (use ms, s, m, h or d)"
            ))
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{text:?} is not a valid duration"));
    }
    if secs > MAX_SECONDS {
        return Err(format!("{text:?} is longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse("ten").unwrap_err().contains("not a duration"));
        assert_eq!(parse("2d").unwrap(), Duration::from_secs(2 * 86_400));
        assert!(parse("5w").unwrap_err().contains("unknown unit"));
        assert!(parse("99999999999999999999999")
            .unwrap_err()
            .contains("longer than a year"));
    }
}
