//! The closed set of feedback types (`feedback_total{feedback_type}`).

use serde::{Deserialize, Serialize};

/// What a client says about a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackType {
    /// A 1–5 star rating (the `rating` field is required).
    Rating,
    /// The prediction was right.
    Accurate,
    /// The prediction was too high.
    TooHigh,
    /// The prediction was too low.
    TooLow,
}

impl FeedbackType {
    /// Every feedback type, in a stable order.
    pub const ALL: [FeedbackType; 4] = [
        FeedbackType::Rating,
        FeedbackType::Accurate,
        FeedbackType::TooHigh,
        FeedbackType::TooLow,
    ];

    /// The label value and JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            FeedbackType::Rating => "rating",
            FeedbackType::Accurate => "accurate",
            FeedbackType::TooHigh => "too_high",
            FeedbackType::TooLow => "too_low",
        }
    }

    /// Parses the JSON spelling; unknown strings give `None`.
    pub fn parse(s: &str) -> Option<FeedbackType> {
        FeedbackType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Hex digits of a prediction id's random part: 128 bits.
pub const PREDICTION_ID_HEX: usize = 32;

/// The prediction id for arm `arm` and 128 random bits: `<arm>-<32 lowercase hex
/// digits>`. The bits must come from a CSPRNG so ids cannot be guessed; the arm prefix
/// lets a router send feedback back to the arm that made the prediction.
pub fn prediction_id(arm: &str, random: u128) -> String {
    format!("{arm}-{random:032x}")
}

/// Splits a prediction id into its arm and its random bits; `None` unless it is
/// `<arm>-<32 lowercase hex digits>` with a non-empty arm.
pub fn parse_prediction_id(prediction_id: &str) -> Option<(&str, u128)> {
    let split = prediction_id.len().checked_sub(PREDICTION_ID_HEX + 1)?;
    let (owner, rest) = prediction_id.split_at_checked(split)?;
    let hex = rest.strip_prefix('-')?;
    if owner.is_empty() || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    Some((owner, u128::from_str_radix(hex, 16).ok()?))
}

/// The arm that issued a prediction id (`<arm>-<32 hex digits>`, see
/// [`prediction_id`]); `None` for anything else.
pub fn prediction_owner(prediction_id: &str) -> Option<&str> {
    parse_prediction_id(prediction_id).map(|(owner, _)| owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_arm_and_32_hex_digits_and_parse_back() {
        let bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        let id = prediction_id("best_model", bits);
        assert_eq!(id, "best_model-0123456789abcdeffedcba9876543210");
        assert_eq!(parse_prediction_id(&id), Some(("best_model", bits)));
        assert_eq!(prediction_owner(&id), Some("best_model"));
        let small = prediction_id("a", 1);
        assert_eq!(small.len(), "a-".len() + PREDICTION_ID_HEX);
        assert_eq!(parse_prediction_id(&small), Some(("a", 1)));
    }

    #[test]
    fn anything_but_an_arm_and_32_lowercase_hex_digits_has_no_owner() {
        let hex = "0123456789abcdeffedcba9876543210";
        for bad in [
            String::new(),
            "nonsense".to_string(),
            format!("-{hex}"),
            format!("a{hex}"),
            format!("a-{}", &hex[1..]),
            format!("a-{hex}0"),
            format!("a-{}", hex.to_uppercase()),
            format!("a-{}g", &hex[1..]),
            format!("a-{}+", &hex[1..]),
            // The sequence-number ids of earlier versions.
            "best_model-00000000-1".to_string(),
            "best_model-1-2".to_string(),
            format!("a-{}é", &hex[2..]),
        ] {
            assert_eq!(prediction_owner(&bad), None, "{bad:?}");
        }
    }
}
