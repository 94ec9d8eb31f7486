//! Turns `/predict` and `/feedback` bodies into checked values, or into an
//! [`ApiError`] whose message names the offending field.
//!
//! Parsing is done on a `serde_json::Value` (bounded by the body limit and serde's
//! recursion limit) so every wrong field can be named precisely.

use abgate_common::{ApiError, ErrorKind, FeedbackType};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// At most this many names are listed in one error message.
const MAX_LISTED: usize = 10;

/// The model's features, by position.
#[derive(Debug, Clone)]
pub struct FeatureSchema {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

/// Rows ready for the forward pass: `rows * width` raw feature values.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Feature values, row after row, in model order.
    pub values: Vec<f32>,
    /// Number of rows.
    pub count: usize,
    /// Whether the request was a batch (`instances`) rather than one row.
    pub batch: bool,
    /// The body's `user_id` as the router keys it ([`body_user_key`]).
    pub user_id: Option<Vec<u8>>,
}

/// A checked feedback.
#[derive(Debug, Clone, PartialEq)]
pub struct Feedback {
    /// The prediction this feedback is about.
    pub prediction_id: String,
    /// The kind of feedback.
    pub feedback_type: FeedbackType,
    /// 1–5, present exactly when `feedback_type` is `rating`.
    pub rating: Option<u8>,
    /// The true quality, when the client knows it (finite; the model's label range
    /// is checked by [`check_actual`]).
    pub actual: Option<f64>,
    /// The body's `user_id` as the router keys it ([`body_user_key`]).
    pub user_id: Option<Vec<u8>>,
}

/// The user key of a body's `user_id`, as the router reads it when a request has no
/// `X-User-Id`: a non-empty string's bytes, or a number's decimal text; else none.
pub fn body_user_key(value: Option<&Value>) -> Option<Vec<u8>> {
    match value? {
        Value::String(s) if !s.is_empty() => Some(s.clone().into_bytes()),
        Value::Number(n) => Some(n.to_string().into_bytes()),
        _ => None,
    }
}

/// Refuses an `actual` outside the model's label range `[min, max]` (ends included).
pub fn check_actual(actual: f64, range: [f64; 2]) -> Result<(), ApiError> {
    let [low, high] = range;
    if (low..=high).contains(&actual) {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorKind::InvalidInput,
        format!("`actual` = {actual:?} is outside the model's label range [{low}, {high}]"),
    ))
}

fn list(names: &[&str]) -> String {
    let shown: Vec<String> = names
        .iter()
        .take(MAX_LISTED)
        .map(|n| format!("`{}`", truncate(n, 64)))
        .collect();
    let more = names.len().saturating_sub(MAX_LISTED);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// At most `max` bytes of `s`, cut at a character boundary (a limit in characters
/// would let four-byte characters quadruple a message).
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses a JSON body, rejecting empty bodies and syntax errors as `invalid_json`.
pub fn parse_json(body: &[u8], expected: &str) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorKind::InvalidJson,
            format!("request body is empty; expected {expected}"),
        ));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::new(
            ErrorKind::InvalidInput,
            format!(
                "request body must be a JSON object, got {}",
                type_name(&other)
            ),
        )),
        Err(e) => Err(ApiError::new(
            ErrorKind::InvalidJson,
            format!("request body is not valid JSON: {e}"),
        )),
    }
}

impl FeatureSchema {
    /// A schema over `names`, in model order.
    pub fn new(names: &[String]) -> Self {
        FeatureSchema {
            names: names.to_vec(),
            index: names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect(),
        }
    }

    /// Number of features per row.
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// Parses a `/predict` body: `{"features": {...}}` or `{"instances": [{...}, ...]}`,
    /// optionally with `user_id` (which the router may have used for assignment).
    pub fn parse_predict(&self, body: &[u8], max_batch: usize) -> Result<Rows, ApiError> {
        let map = parse_json(body, r#"{"features": {"alcohol": 9.4, ...}}"#)?;
        let mut features = None;
        let mut instances = None;
        let user_id = body_user_key(map.get("user_id"));
        for (key, value) in &map {
            match key.as_str() {
                "features" => features = Some(value),
                "instances" => instances = Some(value),
                "user_id" => {
                    if !(value.is_string() || value.is_number()) {
                        return Err(ApiError::new(
                            ErrorKind::InvalidInput,
                            format!("`user_id` must be a string or a number, got {}", type_name(value)),
                        ));
                    }
                }
                other => {
                    return Err(ApiError::new(
                        ErrorKind::InvalidInput,
                        format!(
                            "unknown field `{}`; expected `features` (one row) or `instances` (a batch), and optionally `user_id`",
                            truncate(other, 64)
                        ),
                    ))
                }
            }
        }
        match (features, instances) {
            (Some(_), Some(_)) => Err(ApiError::new(
                ErrorKind::InvalidInput,
                "send either `features` (one row) or `instances` (a batch), not both",
            )),
            (None, None) => Err(ApiError::new(
                ErrorKind::InvalidInput,
                "missing `features` (one row) or `instances` (a batch)",
            )),
            (Some(row), None) => {
                let mut values = Vec::with_capacity(self.width());
                self.parse_row(row, "features", &mut values)?;
                Ok(Rows {
                    values,
                    count: 1,
                    batch: false,
                    user_id,
                })
            }
            (None, Some(Value::Array(items))) => {
                if items.is_empty() {
                    return Err(ApiError::new(
                        ErrorKind::InvalidBatch,
                        "`instances` is empty",
                    ));
                }
                if items.len() > max_batch {
                    return Err(ApiError::new(
                        ErrorKind::InvalidBatch,
                        format!(
                            "`instances` has {} rows; the limit is {max_batch}",
                            items.len()
                        ),
                    ));
                }
                let mut values = Vec::with_capacity(items.len() * self.width());
                for (i, item) in items.iter().enumerate() {
                    self.parse_row(item, &format!("instances[{i}]"), &mut values)?;
                }
                Ok(Rows {
                    values,
                    count: items.len(),
                    batch: true,
                    user_id,
                })
            }
            (None, Some(other)) => Err(ApiError::new(
                ErrorKind::InvalidInput,
                format!(
                    "`instances` must be an array of objects, got {}",
                    type_name(other)
                ),
            )),
        }
    }

    fn parse_row(&self, row: &Value, at: &str, out: &mut Vec<f32>) -> Result<(), ApiError> {
        let Value::Object(row) = row else {
            return Err(ApiError::new(
                ErrorKind::InvalidInput,
                format!(
                    "`{at}` must be an object of feature name to number, got {}",
                    type_name(row)
                ),
            ));
        };
        let start = out.len();
        out.resize(start + self.width(), f32::NAN);
        let mut seen = vec![false; self.width()];
        let mut unknown = Vec::new();
        for (name, value) in row {
            let Some(&i) = self.index.get(name) else {
                unknown.push(name.as_str());
                continue;
            };
            let x = match value {
                Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
                other => {
                    return Err(ApiError::new(
                        ErrorKind::InvalidInput,
                        format!("`{at}.{name}` must be a number, got {}", type_name(other)),
                    ))
                }
            };
            // Finite in f64 is not enough: the model computes in f32.
            let x32 = x as f32;
            if !x32.is_finite() {
                return Err(ApiError::new(
                    ErrorKind::InvalidInput,
                    format!("`{at}.{name}` = {x:e} is outside the range the model accepts"),
                ));
            }
            out[start + i] = x32;
            seen[i] = true;
        }
        let missing: Vec<&str> = self
            .names
            .iter()
            .zip(&seen)
            .filter(|(_, s)| !**s)
            .map(|(n, _)| n.as_str())
            .collect();
        if !missing.is_empty() {
            let mut msg = format!("`{at}` is missing features: {}", list(&missing));
            if !unknown.is_empty() {
                msg.push_str(&format!("; unknown features: {}", list(&unknown)));
            }
            return Err(ApiError::new(ErrorKind::MissingFeature, msg));
        }
        if !unknown.is_empty() {
            return Err(ApiError::new(
                ErrorKind::UnknownFeature,
                format!(
                    "`{at}` has unknown features: {}; the model's features are {}",
                    list(&unknown),
                    list(&self.names.iter().map(String::as_str).collect::<Vec<_>>())
                ),
            ));
        }
        Ok(())
    }
}

/// Parses a `/feedback` body.
pub fn parse_feedback(body: &[u8]) -> Result<Feedback, ApiError> {
    let map = parse_json(
        body,
        r#"{"prediction_id": "...", "feedback_type": "accurate"}"#,
    )?;
    let invalid = |msg: String| ApiError::new(ErrorKind::InvalidInput, msg);
    let mut prediction_id = None;
    let mut feedback_type = None;
    let mut rating = None;
    let mut actual = None;
    for (key, value) in &map {
        match key.as_str() {
            "prediction_id" => match value {
                Value::String(s) if !s.is_empty() && s.len() <= 128 => {
                    prediction_id = Some(s.clone())
                }
                Value::String(_) => {
                    return Err(invalid("`prediction_id` must be 1-128 characters".into()))
                }
                other => {
                    return Err(invalid(format!(
                        "`prediction_id` must be a string, got {}",
                        type_name(other)
                    )))
                }
            },
            "feedback_type" => {
                let parsed = value.as_str().and_then(FeedbackType::parse);
                if parsed.is_none() {
                    return Err(invalid(
                        "`feedback_type` must be one of \"rating\", \"accurate\", \"too_high\", \"too_low\"".into(),
                    ));
                }
                feedback_type = parsed;
            }
            "rating" => match value.as_u64() {
                Some(r @ 1..=5) => rating = Some(r as u8),
                _ => return Err(invalid("`rating` must be an integer from 1 to 5".into())),
            },
            "actual" => match value.as_f64() {
                Some(a) if a.is_finite() => actual = Some(a),
                _ => {
                    return Err(invalid(format!(
                        "`actual` must be a finite number, got {}",
                        type_name(value)
                    )))
                }
            },
            // Routing hints the router may leave in the body.
            "variant" | "user_id" => {}
            other => {
                return Err(invalid(format!(
                "unknown field `{}`; expected `prediction_id`, `feedback_type`, `rating`, `actual`",
                truncate(other, 64)
            )))
            }
        }
    }
    let prediction_id = prediction_id.ok_or_else(|| invalid("missing `prediction_id`".into()))?;
    let feedback_type = feedback_type.ok_or_else(|| invalid("missing `feedback_type`".into()))?;
    match (feedback_type, rating) {
        (FeedbackType::Rating, None) => {
            return Err(invalid(
                "`rating` (1-5) is required when `feedback_type` is \"rating\"".into(),
            ))
        }
        (t, Some(_)) if t != FeedbackType::Rating => {
            return Err(invalid(format!(
                "`rating` is only allowed when `feedback_type` is \"rating\", not {:?}",
                t.as_str()
            )))
        }
        _ => {}
    }
    Ok(Feedback {
        prediction_id,
        feedback_type,
        rating,
        actual,
        user_id: body_user_key(map.get("user_id")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> FeatureSchema {
        FeatureSchema::new(&["alcohol".to_string(), "ph".to_string()])
    }

    #[test]
    fn good_payloads_become_rows_in_model_order() {
        let s = schema();
        let cases: [(&str, Rows); 4] = [
            (
                r#"{"features": {"ph": 3.5, "alcohol": 9.4}}"#,
                Rows {
                    values: vec![9.4, 3.5],
                    count: 1,
                    batch: false,
                    user_id: None,
                },
            ),
            (
                r#"{"features": {"alcohol": 10, "ph": 3}, "user_id": "u1"}"#,
                Rows {
                    values: vec![10.0, 3.0],
                    count: 1,
                    batch: false,
                    user_id: Some(b"u1".to_vec()),
                },
            ),
            (
                r#"{"features": {"alcohol": -1e3, "ph": 0}, "user_id": 7}"#,
                Rows {
                    values: vec![-1000.0, 0.0],
                    count: 1,
                    batch: false,
                    user_id: Some(b"7".to_vec()),
                },
            ),
            (
                r#"{"instances": [{"alcohol": 1, "ph": 2}, {"alcohol": 3, "ph": 4}]}"#,
                Rows {
                    values: vec![1.0, 2.0, 3.0, 4.0],
                    count: 2,
                    batch: true,
                    user_id: None,
                },
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(s.parse_predict(body.as_bytes(), 10), Ok(expected), "{body}");
        }
    }

    #[test]
    fn bad_payloads_name_the_problem() {
        let s = schema();
        let many: String = format!(
            "{{\"instances\": [{}]}}",
            [r#"{"alcohol":1,"ph":2}"#; 11].join(",")
        );
        let cases: Vec<(&str, ErrorKind, &str)> = vec![
            ("", ErrorKind::InvalidJson, "empty"),
            ("{\"features\": {", ErrorKind::InvalidJson, "not valid JSON"),
            (
                r#"{"features": {"alcohol": NaN, "ph": 1}}"#,
                ErrorKind::InvalidJson,
                "not valid JSON",
            ),
            (
                r#"{"features": {"alcohol": 1e400, "ph": 1}}"#,
                ErrorKind::InvalidJson,
                "not valid JSON",
            ),
            (
                r#"{"features": {"alcohol": 1e300, "ph": 1}}"#,
                ErrorKind::InvalidInput,
                "`features.alcohol` = 1e300",
            ),
            ("[1, 2]", ErrorKind::InvalidInput, "must be a JSON object"),
            (
                r#"{"features": {"alcohol": "9.4", "ph": 1}}"#,
                ErrorKind::InvalidInput,
                "`features.alcohol` must be a number, got a string",
            ),
            (
                r#"{"features": {"alcohol": null, "ph": 1}}"#,
                ErrorKind::InvalidInput,
                "got null",
            ),
            (
                r#"{"features": [9.4, 3.5]}"#,
                ErrorKind::InvalidInput,
                "`features` must be an object",
            ),
            (
                r#"{"features": {"alcohol": 9.4}}"#,
                ErrorKind::MissingFeature,
                "missing features: `ph`",
            ),
            (
                r#"{"features": {}}"#,
                ErrorKind::MissingFeature,
                "`alcohol`, `ph`",
            ),
            (
                r#"{"features": {"alcohol": 9.4, "ph": 3, "colour": 1}}"#,
                ErrorKind::UnknownFeature,
                "unknown features: `colour`",
            ),
            (
                r#"{"features": {"alcohol": 9.4, "colour": 1}}"#,
                ErrorKind::MissingFeature,
                "unknown features: `colour`",
            ),
            (r#"{"instances": []}"#, ErrorKind::InvalidBatch, "empty"),
            (&many, ErrorKind::InvalidBatch, "11 rows; the limit is 10"),
            (
                r#"{"instances": {"alcohol": 1}}"#,
                ErrorKind::InvalidInput,
                "must be an array",
            ),
            (
                r#"{"instances": [{"alcohol": 1, "ph": 2}, {"alcohol": 1}]}"#,
                ErrorKind::MissingFeature,
                "`instances[1]`",
            ),
            (
                r#"{"instances": [3]}"#,
                ErrorKind::InvalidInput,
                "`instances[0]` must be an object",
            ),
            (
                r#"{"features": {"alcohol": 1, "ph": 2}, "instances": []}"#,
                ErrorKind::InvalidInput,
                "not both",
            ),
            (
                r#"{"user_id": "u"}"#,
                ErrorKind::InvalidInput,
                "missing `features`",
            ),
            (
                r#"{"features": {"alcohol": 1, "ph": 2}, "extra": 1}"#,
                ErrorKind::InvalidInput,
                "unknown field `extra`",
            ),
            (
                r#"{"features": {"alcohol": 1, "ph": 2}, "user_id": [1]}"#,
                ErrorKind::InvalidInput,
                "`user_id` must be",
            ),
        ];
        for (body, kind, needle) in cases {
            let err = s.parse_predict(body.as_bytes(), 10).unwrap_err();
            assert_eq!(err.kind, kind, "{body}: {}", err.message);
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
    }

    #[test]
    fn huge_unknown_lists_are_truncated_in_the_message() {
        let fields: Vec<String> = (0..10_000).map(|i| format!("\"f{i}\": 1")).collect();
        let body = format!(
            "{{\"features\": {{\"alcohol\": 1, \"ph\": 2, {}}}}}",
            fields.join(",")
        );
        let err = schema().parse_predict(body.as_bytes(), 10).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnknownFeature);
        assert!(err.message.contains("and 9990 more"), "{}", err.message);
        assert!(err.message.len() < 1000);
    }

    #[test]
    fn an_actual_must_lie_in_the_label_range_ends_included() {
        for ok in [2.0, 5.5, 9.0] {
            assert_eq!(check_actual(ok, [2.0, 9.0]), Ok(()), "{ok}");
        }
        for bad in [1.999, 9.001, -1.0, 1e30, -1e300, f64::NAN, f64::INFINITY] {
            let err = check_actual(bad, [2.0, 9.0]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput);
            assert!(err.message.contains("[2, 9]"), "{}", err.message);
        }
    }

    #[test]
    fn feedback_is_checked_field_by_field() {
        let ok = parse_feedback(
            br#"{"prediction_id": "a-1", "feedback_type": "rating", "rating": 4, "actual": 6}"#,
        );
        assert_eq!(
            ok,
            Ok(Feedback {
                prediction_id: "a-1".into(),
                feedback_type: FeedbackType::Rating,
                rating: Some(4),
                actual: Some(6.0),
                user_id: None,
            })
        );
        let keyed = |user: &str| {
            parse_feedback(
                format!(
                    r#"{{"prediction_id": "a-1", "feedback_type": "accurate", "user_id": {user}}}"#
                )
                .as_bytes(),
            )
            .map(|f| f.user_id)
        };
        // The router's rule: a non-empty string, or a number's decimal text.
        assert_eq!(keyed("\"u1\""), Ok(Some(b"u1".to_vec())));
        assert_eq!(keyed("42"), Ok(Some(b"42".to_vec())));
        assert_eq!(keyed("4.5"), Ok(Some(b"4.5".to_vec())));
        assert_eq!(keyed("\"\""), Ok(None));
        assert_eq!(keyed("null"), Ok(None));
        assert_eq!(keyed("[1]"), Ok(None));
        let cases = [
            (
                r#"{"feedback_type": "accurate"}"#,
                "missing `prediction_id`",
            ),
            (r#"{"prediction_id": "a-1"}"#, "missing `feedback_type`"),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "great"}"#,
                "`feedback_type` must be one of",
            ),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "rating"}"#,
                "is required",
            ),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "rating", "rating": 6}"#,
                "from 1 to 5",
            ),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "rating", "rating": 2.5}"#,
                "from 1 to 5",
            ),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "accurate", "rating": 3}"#,
                "only allowed",
            ),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "accurate", "actual": "6"}"#,
                "`actual` must be a finite number",
            ),
            (
                r#"{"prediction_id": 5, "feedback_type": "accurate"}"#,
                "`prediction_id` must be a string",
            ),
            (
                r#"{"prediction_id": "a-1", "feedback_type": "accurate", "note": 1}"#,
                "unknown field `note`",
            ),
        ];
        for (body, needle) in cases {
            let err = parse_feedback(body.as_bytes()).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidInput, "{body}");
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
    }
}
