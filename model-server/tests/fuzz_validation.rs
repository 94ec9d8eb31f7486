//! Property-based fuzzing of the request validators: arbitrary bytes, arbitrary JSON
//! structures, mutated JSON text and near-valid bodies go into
//! `FeatureSchema::parse_predict` and `validation::parse_feedback`. They must never
//! panic, every error must be a 400-class kind from the closed set with a bounded
//! message, and valid bodies must parse back to exactly the values sent.
//!
//! This uses proptest rather than cargo-fuzz: cargo-fuzz needs a nightly toolchain,
//! which the build machine does not have, and proptest runs in every `cargo test`.

use abgate_common::{ApiError, ErrorKind, FeedbackType};
use abgate_model_server::validation::{parse_feedback, FeatureSchema, Feedback, Rows};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use serde_json::{json, Map, Number, Value};

const FEATURES: [&str; 11] = [
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

/// Largest batch the fuzzed schema accepts (small, so the limit is reached).
const MAX_BATCH: usize = 8;
/// Error messages must stay below this many bytes whatever the input.
const MESSAGE_LIMIT: usize = 2048;

const PREDICT_KINDS: [ErrorKind; 5] = [
    ErrorKind::InvalidJson,
    ErrorKind::InvalidInput,
    ErrorKind::MissingFeature,
    ErrorKind::UnknownFeature,
    ErrorKind::InvalidBatch,
];
const FEEDBACK_KINDS: [ErrorKind; 2] = [ErrorKind::InvalidJson, ErrorKind::InvalidInput];

fn schema() -> FeatureSchema {
    FeatureSchema::new(&FEATURES.map(String::from))
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Keys the validators know, so generated objects reach past the first check.
fn key() -> impl Strategy<Value = String> {
    let known: Vec<&'static str> = FEATURES
        .iter()
        .copied()
        .chain([
            "features",
            "instances",
            "user_id",
            "prediction_id",
            "feedback_type",
            "rating",
            "actual",
            "variant",
            "",
        ])
        .collect();
    prop_oneof![
        4 => select(known).prop_map(str::to_string),
        1 => "\\PC{0,12}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (1u8..=5).prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        // Finite in f64, outside f32.
        (3.5e38f64..1e300).prop_map(Value::from),
        (-1e300f64..-3.5e38).prop_map(Value::from),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        3 => number(),
        2 => prop_oneof![
            select(vec!["rating", "accurate", "too_high", "too_low", "best_model-00000000-1"])
                .prop_map(str::to_string),
            key(),
        ]
        .prop_map(Value::String),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 12, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..12).prop_map(Value::Array),
            btree_map(key(), inner, 0..14).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A row close to valid: each model feature kept with high probability, mostly with
/// an in-range number, plus now and then an extra key.
fn row() -> impl Strategy<Value = Value> {
    let value = prop_oneof![
        12 => (-1e6f64..1e6).prop_map(Value::from),
        2 => number(),
        1 => leaf(),
    ];
    (
        vec((proptest::bool::weighted(0.97), value), FEATURES.len()),
        btree_map(key(), leaf(), 0..2),
        proptest::bool::weighted(0.7),
    )
        .prop_map(|(features, extras, clean)| {
            let mut row = Map::new();
            for (name, (keep, v)) in FEATURES.iter().zip(features) {
                if keep {
                    row.insert((*name).to_string(), v);
                }
            }
            if !clean {
                row.extend(extras);
            }
            Value::Object(row)
        })
}

fn near_valid_predict() -> impl Strategy<Value = Value> {
    prop_oneof![
        row().prop_map(|r| json!({ "features": r })),
        vec(row(), 0..(MAX_BATCH + 3)).prop_map(|rs| json!({ "instances": rs })),
        (row(), leaf()).prop_map(|(r, u)| json!({ "features": r, "user_id": u })),
    ]
}

fn near_valid_feedback() -> impl Strategy<Value = Value> {
    btree_map(
        select(vec![
            "prediction_id",
            "feedback_type",
            "rating",
            "actual",
            "variant",
            "user_id",
            "note",
        ]),
        leaf(),
        0..7,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

/// Serialized JSON, then cut, overwritten or extended at a random place.
fn mutated(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (value, any::<Index>(), any::<u8>(), 0..4u8).prop_map(|(v, at, byte, op)| {
        let mut text = serde_json::to_vec(&v).unwrap_or_default();
        if text.is_empty() {
            return text;
        }
        let i = at.index(text.len());
        match op {
            0 => text.truncate(i),
            1 => text[i] = byte,
            2 => text.insert(i, byte),
            _ => {
                let _ = text.remove(i);
            }
        }
        text
    })
}

fn check_error(err: &ApiError, allowed: &[ErrorKind]) -> Result<(), TestCaseError> {
    prop_assert!(
        allowed.contains(&err.kind),
        "unexpected kind {:?}",
        err.kind
    );
    prop_assert!(err.kind.status().is_client_error(), "{:?}", err.kind);
    prop_assert!(!err.message.is_empty());
    prop_assert!(
        err.message.len() < MESSAGE_LIMIT,
        "message of {} bytes: {:.300}",
        err.message.len(),
        err.message
    );
    Ok(())
}

fn check_predict(body: &[u8]) -> Result<(), TestCaseError> {
    match schema().parse_predict(body, MAX_BATCH) {
        Err(e) => check_error(&e, &PREDICT_KINDS),
        Ok(rows) => {
            prop_assert!(rows.count >= 1 && rows.count <= MAX_BATCH);
            prop_assert_eq!(rows.values.len(), rows.count * FEATURES.len());
            prop_assert!(rows.values.iter().all(|v| v.is_finite()));
            prop_assert!(rows.batch || rows.count == 1);
            Ok(())
        }
    }
}

fn check_feedback(body: &[u8]) -> Result<(), TestCaseError> {
    match parse_feedback(body) {
        Err(e) => check_error(&e, &FEEDBACK_KINDS),
        Ok(fb) => {
            prop_assert!(!fb.prediction_id.is_empty() && fb.prediction_id.len() <= 128);
            prop_assert_eq!(
                fb.rating.is_some(),
                fb.feedback_type == FeedbackType::Rating
            );
            prop_assert!(fb.rating.is_none_or(|r| (1..=5).contains(&r)));
            prop_assert!(fb.actual.is_none_or(f64::is_finite));
            Ok(())
        }
    }
}

proptest! {
    #![proptest_config(config(16384))]

    #[test]
    fn arbitrary_bytes_never_panic_and_are_refused_with_a_400_kind(
        body in vec(any::<u8>(), 0..512)
    ) {
        check_predict(&body)?;
        check_feedback(&body)?;
    }
}

proptest! {
    #![proptest_config(config(8192))]

    #[test]
    fn arbitrary_json_structures_never_panic_and_errors_are_400_kinds(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap_or_default();
        check_predict(&body)?;
        check_feedback(&body)?;
    }

    #[test]
    fn mutated_json_text_never_panics_and_errors_are_400_kinds(
        body in mutated(prop_oneof![json_value(), near_valid_predict(), near_valid_feedback()])
    ) {
        check_predict(&body)?;
        check_feedback(&body)?;
    }

    #[test]
    fn near_valid_predict_bodies_are_accepted_only_when_complete(value in near_valid_predict()) {
        let body = serde_json::to_vec(&value).unwrap_or_default();
        check_predict(&body)?;
        // Accepted exactly when every row names the model's features, each a number
        // inside f32, and nothing else.
        let rows: Vec<&Value> = match (&value["features"], &value["instances"]) {
            (Value::Object(_), _) => vec![&value["features"]],
            (_, Value::Array(rs)) => rs.iter().collect(),
            _ => Vec::new(),
        };
        let row_ok = |r: &Value| {
            r.as_object().is_some_and(|m| {
                m.len() == FEATURES.len()
                    && FEATURES.iter().all(|f| {
                        m.get(*f)
                            .and_then(Value::as_f64)
                            .is_some_and(|x| (x as f32).is_finite())
                    })
            })
        };
        let user_ok = value.get("user_id").is_none_or(|u| u.is_string() || u.is_number());
        let expect_ok =
            !rows.is_empty() && rows.len() <= MAX_BATCH && rows.iter().all(|r| row_ok(r)) && user_ok;
        let got = schema().parse_predict(&body, MAX_BATCH);
        prop_assert_eq!(got.is_ok(), expect_ok, "{} -> {:?}", value, got);
    }

    #[test]
    fn near_valid_feedback_bodies_never_panic_and_errors_are_400_kinds(
        value in near_valid_feedback()
    ) {
        check_feedback(&serde_json::to_vec(&value).unwrap_or_default())?;
    }

}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn unknown_feature_names_of_any_length_and_script_keep_messages_bounded(
        names in vec(prop_oneof!["\\PC{1,100}", "\\PC{60,100}", "[\u{10000}-\u{10ffff}]{60,70}"], 1..40),
        keep_known in any::<bool>(),
    ) {
        let mut row = Map::new();
        if keep_known {
            for f in FEATURES {
                row.insert(f.to_string(), json!(1.0));
            }
        }
        for n in names {
            row.insert(n, json!(1.0));
        }
        let body = serde_json::to_vec(&json!({ "features": row })).unwrap_or_default();
        check_predict(&body)?;
        let body = serde_json::to_vec(&json!({ "instances": [row] })).unwrap_or_default();
        check_predict(&body)?;
        // A long non-ASCII top-level key, for the "unknown field" message.
        let mut top = Map::new();
        top.insert("\u{10348}".repeat(100), json!(1));
        top.insert("features".into(), Value::Object(row));
        check_predict(&serde_json::to_vec(&top).unwrap_or_default())?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack(
        depth in 0usize..20_000,
        opener in select(vec!["[", "{\"features\":", "{\"instances\":["]),
    ) {
        let body = opener.repeat(depth);
        check_predict(body.as_bytes())?;
        check_feedback(body.as_bytes())?;
    }
}

#[test]
fn the_longest_unknown_feature_names_keep_the_message_under_2_kib() {
    // Twenty names of 100 four-byte characters, with and without the known features.
    let long: Vec<String> = (0..20)
        .map(|i| format!("{}{i}", "\u{10348}".repeat(100)))
        .collect();
    for keep_known in [false, true] {
        let mut row = Map::new();
        if keep_known {
            for f in FEATURES {
                row.insert(f.to_string(), json!(1.0));
            }
        }
        for n in &long {
            row.insert(n.clone(), json!(1.0));
        }
        let body = serde_json::to_vec(&json!({ "features": row })).unwrap_or_default();
        match schema().parse_predict(&body, MAX_BATCH) {
            Ok(rows) => panic!("accepted: {rows:?}"),
            Err(e) => assert!(
                e.message.len() < MESSAGE_LIMIT,
                "{} bytes: {}",
                e.message.len(),
                e.message
            ),
        }
    }
}

/// Finite f32 values, with the edges overweighted.
fn feature_value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => any::<f32>().prop_filter("finite", |x| x.is_finite()),
        1 => select(vec![0.0f32, -0.0, f32::MAX, f32::MIN, f32::MIN_POSITIVE, 1e-45, -1e-45]),
        2 => (-20i32..400).prop_map(|i| i as f32),
    ]
}

/// One row as JSON text, its keys in `order`.
fn row_text(values: &[f32], order: &[usize]) -> String {
    let fields: Vec<String> = order
        .iter()
        .map(|&i| {
            let x = f64::from(values[i]);
            // Integers are sometimes sent without a fraction, as clients do (but not
            // -0.0, which JSON can only carry as a float).
            let number = if x.fract() == 0.0 && x.abs() < 1e15 && i % 2 == 0 && x.is_sign_positive()
            {
                format!("{}", x as i64)
            } else {
                serde_json::to_string(&x).unwrap_or_default()
            };
            format!("\"{}\": {number}", FEATURES[i])
        })
        .collect();
    format!("{{{}}}", fields.join(", "))
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn valid_rows_parse_back_to_exactly_the_values_sent(
        rows in vec(vec(feature_value(), FEATURES.len()), 1..=MAX_BATCH),
        order in Just((0..FEATURES.len()).collect::<Vec<_>>()).prop_shuffle(),
        batch in any::<bool>(),
        user in proptest::option::of("[a-z0-9-]{1,20}"),
    ) {
        let rows = if batch { rows } else { rows[..1].to_vec() };
        let texts: Vec<String> = rows.iter().map(|r| row_text(r, &order)).collect();
        let user_id = user.as_ref().map(|u| u.clone().into_bytes());
        let user = user.map(|u| format!(", \"user_id\": \"{u}\"")).unwrap_or_default();
        let body = if batch {
            format!("{{\"instances\": [{}]{user}}}", texts.join(", "))
        } else {
            format!("{{\"features\": {}{user}}}", texts[0])
        };
        let parsed = schema().parse_predict(body.as_bytes(), MAX_BATCH);
        let expected = Rows {
            values: rows.concat(),
            count: rows.len(),
            batch,
            user_id,
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{body}: {e}"))),
        };
        prop_assert_eq!(parsed.count, expected.count);
        prop_assert_eq!(parsed.batch, expected.batch);
        prop_assert_eq!(&parsed.user_id, &expected.user_id);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&parsed.values), bits(&expected.values), "{}", body);
    }

    #[test]
    fn valid_feedback_parses_back_to_exactly_the_fields_sent(
        prediction_id in "[A-Za-z0-9_-]{1,128}",
        feedback_type in select(FeedbackType::ALL.to_vec()),
        rating in 1u8..=5,
        actual in proptest::option::of(any::<f64>().prop_filter("finite", |x| x.is_finite())),
        variant in proptest::option::of("[a-z_]{1,12}"),
    ) {
        let mut body = json!({
            "prediction_id": prediction_id,
            "feedback_type": feedback_type.as_str(),
        });
        let rating = (feedback_type == FeedbackType::Rating).then_some(rating);
        if let Some(r) = rating {
            body["rating"] = json!(r);
        }
        if let Some(a) = actual {
            body["actual"] = json!(a);
        }
        if let Some(v) = variant {
            body["variant"] = json!(v);
        }
        let expected = Feedback {
            prediction_id,
            feedback_type,
            rating,
            actual,
            user_id: None,
        };
        let parsed = match parse_feedback(&serde_json::to_vec(&body).unwrap_or_default()) {
            Ok(p) => p,
            Err(e) => return Err(TestCaseError::fail(format!("{body}: {e}"))),
        };
        // Without its `float_roundtrip` feature (off here) serde_json parses floats
        // on a fast path that can land a few ulps off; `actual` is a quality score,
        // so 1e-14 relative is exact enough. Features are f32 and come back exact.
        let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => a == b || (a - b).abs() <= 1e-14 * a.abs().max(b.abs()),
            (a, b) => a == b,
        };
        prop_assert!(close(parsed.actual, expected.actual), "{:?} vs {:?}", parsed.actual, expected.actual);
        prop_assert_eq!(
            Feedback { actual: expected.actual, ..parsed },
            expected,
            "{}",
            body
        );
    }
}
