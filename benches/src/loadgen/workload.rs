//! What is sent: which user a request belongs to, whether it is a prediction or a
//! feedback, and the pre-serialized bodies (real rows of the red-wine data set).

use bytes::Bytes;
use serde::Serialize;

/// Feature names in the model's order.
pub const FEATURES: [&str; 11] = [
    "fixed_acidity",
    "volatile_acidity",
    "citric_acid",
    "residual_sugar",
    "chlorides",
    "free_sulfur_dioxide",
    "total_sulfur_dioxide",
    "density",
    "ph",
    "sulphates",
    "alcohol",
];

/// The first eight rows of `data/winequality-red.csv` (features only).
const ROWS: [[f64; 11]; 8] = [
    [
        7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4,
    ],
    [
        7.8, 0.88, 0.0, 2.6, 0.098, 25.0, 67.0, 0.9968, 3.2, 0.68, 9.8,
    ],
    [
        7.8, 0.76, 0.04, 2.3, 0.092, 15.0, 54.0, 0.997, 3.26, 0.65, 9.8,
    ],
    [
        11.2, 0.28, 0.56, 1.9, 0.075, 17.0, 60.0, 0.998, 3.16, 0.58, 9.8,
    ],
    [
        7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4,
    ],
    [
        7.4, 0.66, 0.0, 1.8, 0.075, 13.0, 40.0, 0.9978, 3.51, 0.56, 9.4,
    ],
    [
        7.9, 0.6, 0.06, 1.6, 0.069, 15.0, 59.0, 0.9964, 3.3, 0.46, 9.4,
    ],
    [
        7.3, 0.65, 0.0, 1.2, 0.065, 15.0, 21.0, 0.9946, 3.39, 0.47, 10.0,
    ],
];

/// Feedback types, cycled in this order.
pub const FEEDBACK_TYPES: [&str; 4] = ["accurate", "too_high", "too_low", "rating"];

/// Pre-built request material shared by all connections.
#[derive(Debug, Clone)]
pub struct Workload {
    users: u32,
    feedback_ratio: f64,
    bodies: Vec<Bytes>,
}

/// The body of a `POST /feedback`.
#[derive(Debug, Serialize)]
struct FeedbackBody<'a> {
    prediction_id: &'a str,
    feedback_type: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rating: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actual: Option<f64>,
}

impl Workload {
    /// A workload over `users` users sending `feedback_ratio` of requests as feedback.
    pub fn new(users: u32, feedback_ratio: f64) -> Result<Self, serde_json::Error> {
        let bodies = ROWS
            .iter()
            .map(|row| {
                let features: serde_json::Map<String, serde_json::Value> = FEATURES
                    .iter()
                    .zip(row)
                    .map(|(name, v)| ((*name).to_string(), serde_json::Value::from(*v)))
                    .collect();
                serde_json::to_vec(&serde_json::json!({ "features": features })).map(Bytes::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Workload {
            users: users.max(1),
            feedback_ratio,
            bodies,
        })
    }

    /// Whether feedback is part of the mix at all.
    pub fn has_feedback(&self) -> bool {
        self.feedback_ratio > 0.0
    }

    /// User of prediction request `k`: the pool is cycled uniformly over the
    /// predictions (the `n`-th prediction, counting from 0, goes to user
    /// `n mod users`), so feedback slots never starve a fixed subset of users.
    pub fn user_of(&self, k: u64) -> u32 {
        // Feedback requests among 0..k: floor(k * ratio) (see `is_feedback`).
        let ordinal = k - (k as f64 * self.feedback_ratio).floor() as u64;
        (ordinal % u64::from(self.users)) as u32
    }

    /// Whether request `k` is a feedback: exactly `floor(n * ratio)` of the first
    /// `n` requests are, spread evenly.
    pub fn is_feedback(&self, k: u64) -> bool {
        let r = self.feedback_ratio;
        ((k + 1) as f64 * r).floor() > (k as f64 * r).floor()
    }

    /// Prediction body for request `k` (cycles over the embedded rows).
    pub fn predict_body(&self, k: u64) -> Bytes {
        let i = (k % self.bodies.len() as u64) as usize;
        self.bodies.get(i).cloned().unwrap_or_default()
    }

    /// Body of the `n`-th feedback of a connection for `prediction_id`: the type
    /// cycles accurate, too_high, too_low, rating (1..5); every third carries an
    /// `actual` quality.
    pub fn feedback_body(&self, prediction_id: &str, n: u64) -> Result<Bytes, serde_json::Error> {
        let feedback_type = FEEDBACK_TYPES[(n % FEEDBACK_TYPES.len() as u64) as usize];
        let rating = (feedback_type == "rating").then_some((n / 4 % 5) as u8 + 1);
        let actual = (n % 3 == 0).then_some(3.0 + (n % 6) as f64);
        serde_json::to_vec(&FeedbackBody {
            prediction_id,
            feedback_type,
            rating,
            actual,
        })
        .map(Bytes::from)
    }
}

/// The `X-User-Id` value of user `u`.
pub fn user_id(u: u32) -> String {
    format!("user-{u}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(ratio: f64) -> Workload {
        Workload::new(10, ratio).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn feedback_share_is_exact_and_spread() {
        let w = workload(0.1);
        let picked: Vec<u64> = (0..100).filter(|&k| w.is_feedback(k)).collect();
        assert_eq!(picked.len(), 10);
        assert_eq!(picked[0], 9);
        assert_eq!(picked[1], 19);
        assert!(!(0..1000).any(|k| workload(0.0).is_feedback(k)));
        assert!((0..1000).all(|k| workload(1.0).is_feedback(k)));
    }

    #[test]
    fn predictions_cycle_every_user_despite_feedback() {
        // 10 users, every 5th request a feedback: predictions still reach all
        // users equally (a plain `k mod users` would starve users 4 and 9).
        let w = workload(0.2);
        let mut per_user = [0u32; 10];
        for k in (0..1000).filter(|&k| !w.is_feedback(k)) {
            per_user[w.user_of(k) as usize] += 1;
        }
        assert_eq!(per_user, [80; 10]);
    }

    #[test]
    fn bodies_are_wine_features() {
        let w = workload(0.0);
        let v: serde_json::Value =
            serde_json::from_slice(&w.predict_body(0)).unwrap_or_else(|e| panic!("{e}"));
        let f = v["features"].as_object().unwrap_or_else(|| panic!("{v}"));
        assert_eq!(f.len(), 11);
        assert_eq!(f["alcohol"], 9.4);
        assert_eq!(w.user_of(13), 3);
        assert_eq!(user_id(3), "user-3");
    }

    #[test]
    fn feedback_bodies_cycle_types() {
        let w = workload(0.5);
        let types: Vec<String> = (0..8)
            .map(|n| {
                let b = w
                    .feedback_body("best_model-1-2", n)
                    .unwrap_or_else(|e| panic!("{e}"));
                let v: serde_json::Value =
                    serde_json::from_slice(&b).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(v["prediction_id"], "best_model-1-2");
                if v["feedback_type"] == "rating" {
                    let r = v["rating"].as_u64().unwrap_or(0);
                    assert!((1..=5).contains(&r));
                } else {
                    assert!(v.get("rating").is_none());
                }
                v["feedback_type"].as_str().unwrap_or("").to_string()
            })
            .collect();
        assert_eq!(
            types,
            [
                "accurate", "too_high", "too_low", "rating", "accurate", "too_high", "too_low",
                "rating"
            ]
        );
    }
}
