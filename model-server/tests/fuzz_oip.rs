//! Property-based fuzzing of the Open Inference Protocol request parser
//! (`oip::request::parse_infer`): arbitrary bytes with arbitrary
//! `Inference-Header-Content-Length` values, near-valid tensors (any shape, datatype,
//! data nesting, declared and actual binary sizes) and valid binary requests. It must
//! never panic, every error must be a 400 kind with a bounded message, what it accepts
//! must have exactly `rows × 11` values, and valid tensors must come back as sent.

use abgate_common::{ApiError, ErrorKind};
use abgate_model_server::oip::request::parse_infer;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{json, Value};

const WIDTH: usize = 11;
const MAX_BATCH: usize = 8;
const MESSAGE_LIMIT: usize = 1024;

fn features() -> Vec<String> {
    (0..WIDTH).map(|i| format!("f{i}")).collect()
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

fn check_error(err: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(
            err.kind,
            ErrorKind::InvalidJson | ErrorKind::InvalidInput | ErrorKind::InvalidBatch
        ),
        "{err}"
    );
    prop_assert!(err.message.len() < MESSAGE_LIMIT, "{}", err.message.len());
    Ok(())
}

fn check(body: &[u8], header: Option<&str>) -> Result<(), TestCaseError> {
    match parse_infer(body, header, &features(), MAX_BATCH) {
        Ok(r) => {
            prop_assert!((1..=MAX_BATCH).contains(&r.rows));
            prop_assert_eq!(r.values.len(), r.rows * WIDTH);
            prop_assert!(r.values.iter().all(|x| x.is_finite()));
        }
        Err(e) => check_error(&e)?,
    }
    Ok(())
}

fn dim() -> impl Strategy<Value = Value> {
    prop_oneof![
        select(vec![0i64, 1, 2, 3, 8, 9, 11, 12, -1, i64::MAX]).prop_map(|d| json!(d)),
        Just(json!(u64::MAX)),
        Just(json!(1.5)),
        Just(json!("11")),
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        (-1e3f64..1e3).prop_map(|x| json!(x)),
        select(vec![0.0f64, -0.0, 1e300, -1e39, 3.4e38, f64::MIN_POSITIVE]).prop_map(|x| json!(x)),
        Just(json!(u64::MAX)),
        Just(json!("1")),
        Just(Value::Null),
    ]
}

/// `data`: flat, nested by rows, or nested deeper, of any length.
fn data() -> impl Strategy<Value = Value> {
    prop_oneof![
        vec(number(), 0..40).prop_map(Value::Array),
        vec(vec(number(), 0..13).prop_map(Value::Array), 0..5).prop_map(Value::Array),
        vec(number(), 0..4).prop_map(|v| json!([[v]])),
        number(),
    ]
}

prop_compose! {
    fn near_valid()(
        dims in vec(dim(), 0..4),
        datatype in select(vec!["FP32", "FP64", "INT64", "BYTES", "fp32"]),
        data in proptest::option::of(data()),
        declared in proptest::option::of(prop_oneof![0u64..400, Just(4_294_967_296u64), Just(u64::MAX)]),
        binary_len in 0usize..400,
        header_delta in -2i64..3,
        send_header in any::<bool>(),
        outputs in proptest::option::of(select(vec![
            json!([]),
            json!([{"name": "quality"}]),
            json!([{"name": "quality", "parameters": {"binary_data": true}}]),
            json!([{"name": "other"}]),
            json!({"name": "quality"}),
        ])),
        byte in any::<u8>(),
    ) -> (Vec<u8>, Option<String>) {
        let mut tensor = json!({"name": "features", "shape": dims, "datatype": datatype});
        if let Some(d) = data {
            tensor["data"] = d;
        }
        if let Some(n) = declared {
            tensor["parameters"] = json!({"binary_data_size": n});
        }
        let mut request = json!({"inputs": [tensor]});
        if let Some(o) = outputs {
            request["outputs"] = o;
        }
        let header = request.to_string();
        let length = header.len() as i64 + header_delta;
        let mut body = header.into_bytes();
        body.extend(std::iter::repeat_n(byte, binary_len));
        (body, send_header.then(|| length.to_string()))
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_and_header_lengths_never_panic(
        body in vec(any::<u8>(), 0..300),
        header in proptest::option::of(prop_oneof![
            (0usize..320).prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_string()),
            Just("-1".to_string()),
            "[ 0-9a-z]{0,8}",
        ]),
    ) {
        check(&body, header.as_deref())?;
    }

    #[test]
    fn near_valid_tensors_never_panic_and_accepted_ones_have_rows_times_width_values(
        (body, header) in near_valid()
    ) {
        check(&body, header.as_deref())?;
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn valid_binary_tensors_come_back_as_sent(
        values in (1usize..=MAX_BATCH).prop_flat_map(|rows| vec(-1e6f64..1e6, rows * WIDTH)),
        fp64 in any::<bool>(),
    ) {
        let rows = values.len() / WIDTH;
        let (datatype, raw): (&str, Vec<u8>) = if fp64 {
            ("FP64", values.iter().flat_map(|x| x.to_le_bytes()).collect())
        } else {
            ("FP32", values.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
        };
        let header = json!({"inputs": [{"name": "features", "shape": [rows, WIDTH], "datatype": datatype, "parameters": {"binary_data_size": raw.len()}}]}).to_string();
        let length = header.len().to_string();
        let mut body = header.into_bytes();
        body.extend_from_slice(&raw);
        let parsed = parse_infer(&body, Some(&length), &features(), MAX_BATCH);
        let parsed = parsed.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let expected: Vec<f32> = values.iter().map(|x| *x as f32).collect();
        prop_assert_eq!(parsed.rows, rows);
        prop_assert_eq!(parsed.values, expected);
    }
}
