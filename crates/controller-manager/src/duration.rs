//! Go-style durations (`10s`, `1m30s`, `500ms`, `5m`, `1.5h`) for flags, so the sidecars' flag
//! values carry over unchanged.

use std::time::Duration;

/// Parses a Go duration string (`time.ParseDuration`), without the sign.
pub fn parse(input: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {input:?} (examples: 10s, 1m30s, 500ms)");
    if input == "0" {
        return Ok(Duration::ZERO);
    }
    if input.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = input;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_go_parses() {
        let cases = [
            ("10s", Some(10_000)),
            ("1m30s", Some(90_000)),
            ("500ms", Some(500)),
            ("5m", Some(300_000)),
            ("1.5h", Some(5_400_000)),
            ("0", Some(0)),
            ("2h45m", Some(9_900_000)),
            ("10", None),
            ("", None),
            ("s", None),
            ("10x", None),
            ("-5s", None),
        ];
        for (input, want) in cases {
            let got = parse(input).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{input}");
        }
    }
}
