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

/// The arm that issued a prediction id. Ids are `<variant>-<epoch>-<sequence>`; arm
/// names hold no `-`, so the owner is everything before the first one.
pub fn prediction_owner(prediction_id: &str) -> Option<&str> {
    prediction_id
        .split_once('-')
        .map(|(owner, _)| owner)
        .filter(|o| !o.is_empty())
}
