//! The pure half of shadow traffic: which users are mirrored (a sticky hash of their
//! key, independent of assignment) and how two answers compare (`prediction`, or each
//! of `predictions`, element-wise).

use serde_json::Value;

/// Seed of the sampling hash: independent of the assignment's salted position.
pub const SAMPLE_SEED: u64 = 2;

/// Whether the user `key` is in a shadow's sample: `XXH3_64(seed 2, key) <
/// sample * 2^64`. Sticky: the same key is always in or always out.
pub fn sampled(key: impl AsRef<[u8]>, sample: f64) -> bool {
    if sample >= 1.0 {
        return true;
    }
    if sample <= 0.0 {
        return false;
    }
    let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key.as_ref(), SAMPLE_SEED);
    // 2^64 * sample < 2^64: the cast cannot saturate.
    let threshold = (sample * 18_446_744_073_709_551_616.0) as u64;
    hash < threshold
}

/// The predictions of a model server's `/predict` answer: `[prediction]` for one row,
/// `predictions` for a batch; `None` when neither is a number / an array of numbers.
pub fn predictions(body: &[u8]) -> Option<Vec<f64>> {
    let value: Value = serde_json::from_slice(body).ok()?;
    if let Some(p) = value.get("prediction") {
        return p.as_f64().map(|p| vec![p]);
    }
    value
        .get("predictions")?
        .as_array()?
        .iter()
        .map(Value::as_f64)
        .collect::<Option<Vec<f64>>>()
        .filter(|v| !v.is_empty())
}

/// The absolute differences, element-wise, between the primary's and the shadow's
/// predictions; `None` when either answer has none or their lengths differ.
pub fn differences(primary: &[u8], shadow: &[u8]) -> Option<Vec<f64>> {
    let (a, b) = (predictions(primary)?, predictions(shadow)?);
    if a.len() != b.len() {
        return None;
    }
    let diffs: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
    diffs.iter().all(|d| d.is_finite()).then_some(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_is_sticky_and_takes_about_the_configured_share() {
        let n = 20_000;
        let inside = (0..n).filter(|i| sampled(format!("user-{i}"), 0.3)).count();
        let share = inside as f64 / f64::from(n);
        assert!((share - 0.3).abs() < 0.02, "{share}");
        assert_eq!(sampled("user-7", 0.3), sampled("user-7", 0.3));
        assert!(sampled("anyone", 1.0) && !sampled("anyone", 0.0));
    }

    #[test]
    fn a_larger_sample_keeps_every_user_of_a_smaller_one() {
        for i in 0..2_000 {
            let key = format!("u{i}");
            assert!(!sampled(&key, 0.1) || sampled(&key, 0.5), "{key}");
        }
    }

    #[test]
    fn single_and_batch_answers_compare_element_wise() {
        let d = differences(br#"{"prediction": 5.5}"#, br#"{"prediction": 5.25}"#);
        assert_eq!(d, Some(vec![0.25]));
        let d = differences(
            br#"{"predictions": [1.0, 2.0, 3.0]}"#,
            br#"{"predictions": [1.5, 2.0, 2.0]}"#,
        );
        assert_eq!(d, Some(vec![0.5, 0.0, 1.0]));
    }

    #[test]
    fn garbage_or_mismatched_answers_do_not_compare() {
        for shadow in [
            &b"not json"[..],
            br#"{"prediction": "five"}"#,
            br#"{"predictions": [1.0, "x"]}"#,
            br#"{"predictions": [1.0]}"#,
            br#"{"predictions": []}"#,
            br#"{"error": {"type": "internal"}}"#,
        ] {
            assert_eq!(
                differences(br#"{"predictions": [1.0, 2.0]}"#, shadow),
                None,
                "{}",
                String::from_utf8_lossy(shadow)
            );
        }
    }
}
