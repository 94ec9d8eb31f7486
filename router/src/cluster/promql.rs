//! The Prometheus HTTP API as the cluster's shared store: instant queries
//! (`GET /api/v1/query`) answered as vectors of labelled samples. Only what the
//! cluster source needs — no range queries, no remote write.

use abgate_common::client::HttpClient;
use serde_json::Value;
use std::collections::BTreeMap;

/// One sample of an instant vector: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series' labels (after any aggregation in the query).
    pub labels: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
    /// The sample's Unix time as Prometheus evaluated it.
    pub at: f64,
}

/// Why Prometheus gave no usable answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// The request failed (refused, timed out, reset).
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable {
        /// The base URL.
        url: String,
        /// What the client saw.
        reason: String,
    },
    /// Prometheus answered, but not with a successful vector.
    #[error("Prometheus answered {status}: {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// Its `error`, or what was wrong with the answer.
        reason: String,
    },
}

/// Runs the instant query `query` against the Prometheus at `base` (e.g.
/// `http://prometheus:9090`).
pub async fn query(
    client: &HttpClient,
    base: &str,
    query: &str,
) -> Result<Vec<Sample>, QueryError> {
    let url = format!(
        "{}/api/v1/query?query={}",
        base.trim_end_matches('/'),
        percent_encode(query)
    );
    let reply = client
        .get(&url)
        .await
        .map_err(|reason| QueryError::Unreachable {
            url: base.to_string(),
            // The client names the whole query URL; the base is enough for a person.
            reason: reason
                .strip_prefix(&format!("{url}: "))
                .unwrap_or(&reason)
                .to_string(),
        })?;
    let body = reply.json();
    if reply.status != 200 || body["status"] != "success" {
        let reason = body["error"]
            .as_str()
            .map_or_else(|| "not a Prometheus answer".to_string(), str::to_string);
        return Err(QueryError::Refused {
            status: reply.status.as_u16(),
            reason,
        });
    }
    parse_vector(&body).map_err(|reason| QueryError::Refused {
        status: reply.status.as_u16(),
        reason,
    })
}

/// The samples of a successful instant-query answer whose result is a vector (or a
/// scalar, as one sample without labels).
pub fn parse_vector(body: &Value) -> Result<Vec<Sample>, String> {
    let data = &body["data"];
    let point = |v: &Value| -> Result<(f64, f64), String> {
        let at = v[0].as_f64().ok_or("a sample without a time")?;
        let value = v[1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .ok_or("a sample without a numeric value")?;
        Ok((at, value))
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .ok_or_else(|| "a vector without results".to_string())?
            .iter()
            .map(|r| {
                let (at, value) = point(&r["value"])?;
                let labels = r["metric"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                Ok(Sample { labels, value, at })
            })
            .collect(),
        Some("scalar") => {
            let (at, value) = point(&data["result"])?;
            Ok(vec![Sample {
                labels: BTreeMap::new(),
                value,
                at,
            }])
        }
        other => Err(format!("an answer of type {other:?}, not a vector")),
    }
}

/// `text` for a URL query: unreserved characters as they are, every other byte
/// `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"sum by (variant) (x{phase_id="ab"})"#),
            "sum%20by%20%28variant%29%20%28x%7Bphase_id%3D%22ab%22%7D%29"
        );
    }

    #[test]
    fn vectors_and_scalars_parse_and_anything_else_is_refused() {
        let body = serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": [
                {"metric": {"variant": "best_model", "bucket": "7"}, "value": [1700000000.5, "12.25"]},
                {"metric": {}, "value": [1700000000.5, "NaN"]}
            ]}
        });
        let samples = parse_vector(&body).unwrap_or_default();
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].labels["variant"], "best_model");
        assert_eq!(samples[0].value, 12.25);
        assert_eq!(samples[0].at, 1_700_000_000.5);
        assert!(samples[1].value.is_nan());
        let scalar = serde_json::json!({
            "status": "success",
            "data": {"resultType": "scalar", "result": [1.0, "3"]}
        });
        assert_eq!(parse_vector(&scalar).map(|s| s[0].value), Ok(3.0));
        let matrix = serde_json::json!({"data": {"resultType": "matrix", "result": []}});
        assert!(parse_vector(&matrix).is_err());
        let broken =
            serde_json::json!({"data": {"resultType": "vector", "result": [{"value": [1.0]}]}});
        assert!(parse_vector(&broken).is_err());
    }
}
