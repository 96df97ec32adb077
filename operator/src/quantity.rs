//! Kubernetes quantities (`10Gi`, `500M`, `1.5Gi`, `1e9`) as whole bytes, to
//! compare a storage request with another. Pure. The API server accepts the
//! same grammar (apimachinery's `resource.Quantity`); like it, a fractional
//! byte count rounds up.

/// Bytes of a quantity such as `10Gi`, rounded up to a whole byte. `None`
/// when `text` is not a quantity, is negative, or does not fit in `u128`.
#[must_use]
pub fn bytes(text: &str) -> Option<u128> {
    let text = text.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    // The number as integer / 10^scale.
    let mut digits: u128 = 0;
    for c in whole.chars().chain(fraction.chars()) {
        digits = digits
            .checked_mul(10)?
            .checked_add(u128::from(c.to_digit(10)?))?;
    }
    let scale = u32::try_from(fraction.len()).ok()?;
    let (numerator, exponent) = multiplier(suffix)?;
    // value = digits * numerator * 10^exponent / 10^scale
    let decimal = i64::from(exponent) - i64::from(scale);
    let mut value = digits.checked_mul(numerator)?;
    if decimal >= 0 {
        value = value.checked_mul(10u128.checked_pow(u32::try_from(decimal).ok()?)?)?;
        Some(value)
    } else {
        let divisor = 10u128.checked_pow(u32::try_from(-decimal).ok()?)?;
        Some(value.div_ceil(divisor))
    }
}

/// A suffix as (binary numerator, decimal exponent).
fn multiplier(suffix: &str) -> Option<(u128, i32)> {
    let binary = |power: u32| Some((1u128 << power, 0));
    match suffix {
        "" => Some((1, 0)),
        "Ki" => binary(10),
        "Mi" => binary(20),
        "Gi" => binary(30),
        "Ti" => binary(40),
        "Pi" => binary(50),
        "Ei" => binary(60),
        "m" => Some((1, -3)),
        "k" => Some((1, 3)),
        "M" => Some((1, 6)),
        "G" => Some((1, 9)),
        "T" => Some((1, 12)),
        "P" => Some((1, 15)),
        "E" => Some((1, 18)),
        // A decimal exponent: 1e9, 5E-3.
        _ => {
            let exponent = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            if exponent.is_empty() {
                return None;
            }
            Some((1, exponent.parse::<i32>().ok()?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(bytes("1Gi"), Some(1 << 30));
        assert_eq!(bytes("1024Mi"), Some(1 << 30));
        assert_eq!(bytes("2Ki"), Some(2048));
        assert_eq!(bytes("5G"), Some(5_000_000_000));
        assert_eq!(bytes("1k"), Some(1000));
        assert_eq!(bytes("12345"), Some(12345));
        assert_eq!(bytes("+3Ti"), Some(3 << 40));
    }

    #[test]
    fn fractions_and_exponents_round_up_to_whole_bytes() {
        assert_eq!(bytes("1.5Gi"), Some(3 << 29));
        assert_eq!(bytes("0.5"), Some(1));
        assert_eq!(bytes("1500m"), Some(2));
        assert_eq!(bytes("1e9"), Some(1_000_000_000));
        assert_eq!(bytes("2E3"), Some(2000));
        assert_eq!(bytes(".5k"), Some(500));
        assert_eq!(bytes("1e-3"), Some(1));
    }

    #[test]
    fn what_is_not_a_quantity_is_refused() {
        for bad in [
            "", "Gi", "abc", "-1Gi", "1.2.3Gi", "10GB", "1e", "1Gib", "1 Gi", ".",
        ] {
            assert_eq!(bytes(bad), None, "{bad:?}");
        }
        // Too large for u128.
        assert_eq!(bytes("999999999999999999999999999999999999999Ei"), None);
    }

    #[test]
    fn equal_sizes_compare_equal_whatever_the_spelling() {
        assert_eq!(bytes("1Gi"), bytes("1073741824"));
        assert!(bytes("2Gi") > bytes("2G"));
    }
}
