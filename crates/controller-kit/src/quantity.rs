//! Kubernetes resource quantities, as far as storage sizes need them: parsing a request into whole
//! bytes (rounded up, as `Quantity.Value()`), and printing bytes as a canonical BinarySI quantity
//! (`resource.NewQuantity(bytes, BinarySI).String()`).

/// Parses a quantity (`10Gi`, `1.5G`, `100M`, `1e3`, `500m`) to bytes, rounded up. `None` when it
/// is not a valid quantity or does not fit in `i64`.
pub fn parse_bytes(q: &str) -> Option<i64> {
    let q = q.trim();
    let (negative, q) = match q.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, q.strip_prefix('+').unwrap_or(q)),
    };
    let num_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    let mantissa: u128 = digits.parse().ok()?;
    // value = mantissa * 10^-frac * base^exp
    let mut num: u128 = mantissa;
    let mut den: u128 = 10u128.checked_pow(u32::try_from(frac_part.len()).ok()?)?;
    let (mul, div): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "n" => (1, 1_000_000_000),
        "u" => (1, 1_000_000),
        "m" => (1, 1_000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().ok()?;
            if exp >= 0 {
                (10u128.checked_pow(exp.unsigned_abs())?, 1)
            } else {
                (1, 10u128.checked_pow(exp.unsigned_abs())?)
            }
        }
        _ => return None,
    };
    num = num.checked_mul(mul)?;
    den = den.checked_mul(div)?;
    let bytes = num.div_ceil(den);
    let bytes = i64::try_from(bytes).ok()?;
    Some(if negative { -bytes } else { bytes })
}

/// Bytes as a canonical BinarySI quantity: `1Gi`, `1536`, `3Ki`.
pub fn format_binary_si(bytes: i64) -> String {
    if bytes == 0 {
        return "0".to_string();
    }
    // Go prints values strictly between -1024 and 1024 as DecimalSI; only ±1000 differs.
    if bytes.abs() < 1024 {
        return if bytes.abs() == 1000 {
            format!("{}k", bytes / 1000)
        } else {
            bytes.to_string()
        };
    }
    const SUFFIXES: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    let mut value = bytes;
    let mut suffix = "";
    for s in SUFFIXES {
        if value % 1024 != 0 {
            break;
        }
        value /= 1024;
        suffix = s;
    }
    format!("{value}{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("1Gi", Some(1 << 30))]
    #[case("10Mi", Some(10 << 20))]
    #[case("1G", Some(1_000_000_000))]
    #[case("1.5Gi", Some(3 << 29))]
    #[case("100", Some(100))]
    #[case("1e3", Some(1000))]
    #[case("1500m", Some(2))]
    #[case("1k", Some(1000))]
    #[case("0.1", Some(1))]
    #[case("", None)]
    #[case("1Xi", None)]
    #[case("abc", None)]
    fn parses_to_whole_bytes_rounding_up(#[case] q: &str, #[case] want: Option<i64>) {
        assert_eq!(parse_bytes(q), want);
    }

    #[rstest]
    #[case(1 << 30, "1Gi")]
    #[case(1536, "1536")]
    #[case(3072, "3Ki")]
    #[case(1_000_000_000, "1000000000")]
    #[case(0, "0")]
    #[case(1000, "1k")]
    #[case(512, "512")]
    #[case(5 << 40, "5Ti")]
    fn formats_binary_si(#[case] bytes: i64, #[case] want: &str) {
        assert_eq!(format_binary_si(bytes), want);
    }
}
