//! An OIP inference request — the JSON header and, with the binary tensor extension,
//! the raw tensor bytes after it — turned into checked rows for the forward pass, or
//! into an [`ApiError`] that names the problem.
//!
//! Nothing here allocates more than the body it is given: the shape is checked
//! against `max_batch` before any buffer is sized, and a declared
//! `binary_data_size` must equal `rows × features × element size` and the bytes
//! actually present before any byte is read.
//!
//! Every value becomes the `f32` the model computes in: FP32 values as sent, FP64
//! values (and JSON numbers) rounded to the nearest `f32`, exactly what `/predict` does
//! with a JSON number, so the same rows give the same predictions on both protocols.

use abgate_common::{ApiError, ErrorKind};
use serde_json::{Map, Value};

use crate::validation::parse_json;

/// The model's one input tensor.
pub const INPUT: &str = "features";
/// The model's one output tensor.
pub const OUTPUT: &str = "quality";

/// Element types accepted for [`INPUT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    /// IEEE 754 single precision, the model's own type.
    Fp32,
    /// IEEE 754 double precision, rounded to `f32` on arrival.
    Fp64,
}

impl Datatype {
    /// Parses the protocol's datatype name.
    pub fn parse(name: &str) -> Option<Datatype> {
        match name {
            "FP32" => Some(Datatype::Fp32),
            "FP64" => Some(Datatype::Fp64),
            _ => None,
        }
    }

    /// Bytes per element in the binary tensor extension.
    pub const fn size(self) -> usize {
        match self {
            Datatype::Fp32 => 4,
            Datatype::Fp64 => 8,
        }
    }

    /// The protocol's name for the type.
    pub const fn as_str(self) -> &'static str {
        match self {
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
        }
    }
}

/// A checked inference request.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    /// The client's `id`, echoed in the response.
    pub id: Option<String>,
    /// `rows × features` values, row after row, in model order.
    pub values: Vec<f32>,
    /// Number of rows (`N` of the `[N, features]` shape).
    pub rows: usize,
    /// Whether [`OUTPUT`] goes back as binary data after the JSON header.
    pub binary_output: bool,
}

/// At most this many bytes of a client-supplied string are quoted in a message.
const QUOTED: usize = 64;

fn invalid(message: String) -> ApiError {
    ApiError::new(ErrorKind::InvalidInput, message)
}

/// At most [`QUOTED`] bytes of `s`, cut at a character boundary.
fn quote(s: &str) -> &str {
    let mut end = s.len().min(QUOTED);
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

/// Splits a body into its JSON header and the binary section after it, as the
/// `Inference-Header-Content-Length` header (`None` when absent) says.
pub fn split_body<'b>(
    body: &'b [u8],
    header_length: Option<&str>,
) -> Result<(&'b [u8], &'b [u8]), ApiError> {
    let Some(raw) = header_length else {
        return Ok((body, &[]));
    };
    let Ok(n) = raw.trim().parse::<usize>() else {
        return Err(invalid(format!(
            "`Inference-Header-Content-Length` must be the byte length of the JSON header, got {:?}",
            quote(raw)
        )));
    };
    if n > body.len() {
        return Err(invalid(format!(
            "`Inference-Header-Content-Length` is {n} but the body has only {} bytes",
            body.len()
        )));
    }
    Ok(body.split_at(n))
}

/// Parses an inference request for a model whose input columns are `features`, with
/// at most `max_batch` rows. `header_length` is the `Inference-Header-Content-Length`
/// header's value, if any.
pub fn parse_infer(
    body: &[u8],
    header_length: Option<&str>,
    features: &[String],
    max_batch: usize,
) -> Result<InferRequest, ApiError> {
    let (json, binary) = split_body(body, header_length)?;
    let map = parse_json(
        json,
        r#"{"inputs": [{"name": "features", "shape": [1, 11], "datatype": "FP32", "data": [...]}]}"#,
    )?;
    let mut id = None;
    let mut parameters = None;
    let mut inputs = None;
    let mut outputs = None;
    for (key, value) in &map {
        match key.as_str() {
            "id" => match value {
                Value::String(s) => id = Some(s.clone()),
                other => {
                    return Err(invalid(format!(
                        "`id` must be a string, got {}",
                        type_name(other)
                    )))
                }
            },
            "parameters" => parameters = object(value, "parameters")?,
            "inputs" => inputs = Some(value),
            "outputs" => outputs = Some(value),
            // The KServe SDK repeats the path's model in the body; the path decides.
            "model_name" | "model_version" => {}
            other => {
                return Err(invalid(format!(
                    "unknown field `{}`; an inference request has `id`, `parameters`, `inputs` and `outputs`",
                    quote(other)
                )))
            }
        }
    }
    let binary_data_output = match parameters.and_then(|p| p.get("binary_data_output")) {
        None => false,
        Some(v) => flag(v, "parameters.binary_data_output")?,
    };
    let input = find_input(inputs)?;
    let (values, rows) = read_input(input, binary, features, max_batch)?;
    let binary_output = requested_output(outputs)?.unwrap_or(binary_data_output);
    Ok(InferRequest {
        id,
        values,
        rows,
        binary_output,
    })
}

/// `Some(map)` for an object, `None` for null, else an error naming `at`.
fn object<'v>(value: &'v Value, at: &str) -> Result<Option<&'v Map<String, Value>>, ApiError> {
    match value {
        Value::Object(map) => Ok(Some(map)),
        Value::Null => Ok(None),
        other => Err(invalid(format!(
            "`{at}` must be an object, got {}",
            type_name(other)
        ))),
    }
}

fn flag(value: &Value, at: &str) -> Result<bool, ApiError> {
    value.as_bool().ok_or_else(|| {
        invalid(format!(
            "`{at}` must be true or false, got {}",
            type_name(value)
        ))
    })
}

/// The one input tensor, [`INPUT`].
fn find_input(inputs: Option<&Value>) -> Result<&Map<String, Value>, ApiError> {
    let items = match inputs {
        None => {
            return Err(invalid(format!(
                "missing `inputs`; send one tensor `{INPUT}`"
            )))
        }
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "`inputs` must be an array of tensors, got {}",
                type_name(other)
            )))
        }
    };
    let mut found = None;
    for (i, item) in items.iter().enumerate() {
        let Value::Object(tensor) = item else {
            return Err(invalid(format!(
                "`inputs[{i}]` must be an object, got {}",
                type_name(item)
            )));
        };
        match tensor.get("name") {
            Some(Value::String(name)) if name == INPUT => {
                if found.is_some() {
                    return Err(invalid(format!("input `{INPUT}` is given twice")));
                }
                found = Some(tensor);
            }
            Some(Value::String(name)) => {
                return Err(invalid(format!(
                    "unknown input `{}`; the model's only input is `{INPUT}`",
                    quote(name)
                )))
            }
            Some(other) => {
                return Err(invalid(format!(
                    "`inputs[{i}].name` must be a string, got {}",
                    type_name(other)
                )))
            }
            None => return Err(invalid(format!("`inputs[{i}]` has no `name`"))),
        }
    }
    found.ok_or_else(|| invalid(format!("`inputs` is empty; send one tensor `{INPUT}`")))
}

/// The shape as written, for messages (at most 8 dimensions shown).
fn show_shape(dims: &[Value]) -> String {
    let shown: Vec<String> = dims.iter().take(8).map(Value::to_string).collect();
    let more = if dims.len() > 8 { ", …" } else { "" };
    format!("[{}{more}]", shown.join(", "))
}

/// Reads [`INPUT`]'s rows from its JSON `data` or from the binary section.
fn read_input(
    tensor: &Map<String, Value>,
    binary: &[u8],
    features: &[String],
    max_batch: usize,
) -> Result<(Vec<f32>, usize), ApiError> {
    let width = features.len();
    let mut shape = None;
    let mut datatype = None;
    let mut parameters = None;
    let mut data = None;
    for (key, value) in tensor {
        match key.as_str() {
            "name" => {}
            "shape" => shape = Some(value),
            "datatype" => datatype = Some(value),
            "parameters" => parameters = object(value, "inputs[features].parameters")?,
            "data" => data = Some(value),
            other => {
                return Err(invalid(format!(
                    "unknown field `{}` in input `{INPUT}`; a tensor has `name`, `shape`, `datatype`, `parameters` and `data`",
                    quote(other)
                )))
            }
        }
    }
    let datatype = match datatype {
        None => return Err(invalid(format!("input `{INPUT}` has no `datatype`"))),
        Some(Value::String(name)) => Datatype::parse(name).ok_or_else(|| {
            invalid(format!(
                "input `{INPUT}` has datatype {:?}; send FP32 or FP64",
                quote(name)
            ))
        })?,
        Some(other) => {
            return Err(invalid(format!(
                "`datatype` of input `{INPUT}` must be a string, got {}",
                type_name(other)
            )))
        }
    };
    let rows = rows_of(shape, width, max_batch)?;
    let expected = rows * width;
    let mut binary_size = None;
    if let Some(params) = parameters {
        if params.contains_key("shared_memory_region") {
            return Err(invalid(format!(
                "input `{INPUT}` names a shared memory region; this server takes tensors in the request body only"
            )));
        }
        if let Some(v) = params.get("binary_data_size") {
            binary_size = Some(v.as_u64().ok_or_else(|| {
                invalid(format!(
                    "`parameters.binary_data_size` of input `{INPUT}` must be a byte count, got {v}"
                ))
            })?);
        }
    }
    let mut values = Vec::with_capacity(expected);
    match (binary_size, data) {
        (Some(_), Some(_)) => {
            return Err(invalid(format!(
                "input `{INPUT}` has both `data` and `parameters.binary_data_size`; send one"
            )))
        }
        (None, None) => {
            return Err(invalid(format!(
                "input `{INPUT}` has no `data` (and no `parameters.binary_data_size`)"
            )))
        }
        (Some(declared), None) => {
            let bytes = expected * datatype.size();
            if declared != bytes as u64 {
                return Err(invalid(format!(
                    "input `{INPUT}` declares `binary_data_size` {declared}, but {rows}×{width} {} values take {bytes} bytes",
                    datatype.as_str()
                )));
            }
            if binary.len() != bytes {
                return Err(invalid(if binary.is_empty() {
                    format!(
                        "input `{INPUT}` declares {bytes} bytes of binary data but the body has none after its JSON; send the JSON's length in `Inference-Header-Content-Length`"
                    )
                } else {
                    format!(
                        "input `{INPUT}` declares {bytes} bytes of binary data but {} follow the JSON header",
                        binary.len()
                    )
                }));
            }
            decode_binary(binary, datatype, features, &mut values)?;
        }
        (None, Some(data)) => {
            if !binary.is_empty() {
                return Err(invalid(format!(
                    "{} bytes follow the JSON header but no input declares `binary_data_size`",
                    binary.len()
                )));
            }
            flatten(data, datatype, features, expected, &mut values)?;
            if values.len() != expected {
                return Err(invalid(format!(
                    "input `{INPUT}` has {} values in `data`; shape [{rows}, {width}] needs {expected}",
                    values.len()
                )));
            }
        }
    }
    Ok((values, rows))
}

/// `N` of a `[N, width]` shape with `1 ≤ N ≤ max_batch`.
fn rows_of(shape: Option<&Value>, width: usize, max_batch: usize) -> Result<usize, ApiError> {
    let dims = match shape {
        None => return Err(invalid(format!("input `{INPUT}` has no `shape`"))),
        Some(Value::Array(dims)) => dims,
        Some(other) => {
            return Err(invalid(format!(
                "`shape` of input `{INPUT}` must be an array of integers, got {}",
                type_name(other)
            )))
        }
    };
    let n = match dims.as_slice() {
        [n, w] if w.as_u64() == Some(width as u64) => n.as_u64(),
        _ => None,
    };
    let Some(n) = n else {
        return Err(invalid(format!(
            "input `{INPUT}` has shape {}; the model takes [N, {width}]: N rows of the {width} features listed in the model metadata's `parameters.features`",
            show_shape(dims)
        )));
    };
    if n == 0 {
        return Err(ApiError::new(
            ErrorKind::InvalidBatch,
            format!("input `{INPUT}` has 0 rows"),
        ));
    }
    if n > max_batch as u64 {
        return Err(ApiError::new(
            ErrorKind::InvalidBatch,
            format!("input `{INPUT}` has {n} rows; the limit is {max_batch}"),
        ));
    }
    // n ≤ max_batch, a usize.
    Ok(n as usize)
}

/// Where flat element `i` sits, for messages: ``features[r][c] (`name`)``.
fn position(i: usize, features: &[String]) -> String {
    let width = features.len().max(1);
    let column = features.get(i % width).map_or("", String::as_str);
    format!("`{INPUT}[{}][{}]` (`{column}`)", i / width, i % width)
}

/// Pushes one value, rounded to the model's `f32`, refusing what is not finite there.
fn push(
    x: f64,
    datatype: Datatype,
    features: &[String],
    out: &mut Vec<f32>,
) -> Result<(), ApiError> {
    let at = || position(out.len(), features);
    if x.is_nan() {
        return Err(invalid(format!("{} is NaN", at())));
    }
    if x.is_infinite() {
        return Err(invalid(format!("{} is infinite", at())));
    }
    let x32 = x as f32;
    if !x32.is_finite() {
        return Err(invalid(format!(
            "{} = {x:e} is outside the range the model accepts ({} values must fit in FP32)",
            at(),
            datatype.as_str()
        )));
    }
    out.push(x32);
    Ok(())
}

/// Decodes little-endian `datatype` values (`bytes.len()` is already checked).
fn decode_binary(
    bytes: &[u8],
    datatype: Datatype,
    features: &[String],
    out: &mut Vec<f32>,
) -> Result<(), ApiError> {
    match datatype {
        Datatype::Fp32 => {
            for chunk in bytes.chunks_exact(4) {
                let mut b = [0u8; 4];
                b.copy_from_slice(chunk);
                push(f64::from(f32::from_le_bytes(b)), datatype, features, out)?;
            }
        }
        Datatype::Fp64 => {
            for chunk in bytes.chunks_exact(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                push(f64::from_le_bytes(b), datatype, features, out)?;
            }
        }
    }
    Ok(())
}

/// Collects the numbers of `data`, flat or nested to any depth, in row-major order;
/// stops with an error past `expected` values.
fn flatten(
    data: &Value,
    datatype: Datatype,
    features: &[String],
    expected: usize,
    out: &mut Vec<f32>,
) -> Result<(), ApiError> {
    match data {
        Value::Array(items) => {
            for item in items {
                flatten(item, datatype, features, expected, out)?;
            }
            Ok(())
        }
        Value::Number(n) => {
            if out.len() == expected {
                return Err(invalid(format!(
                    "input `{INPUT}` has more values in `data` than its shape holds ({expected})"
                )));
            }
            push(n.as_f64().unwrap_or(f64::NAN), datatype, features, out)
        }
        other => Err(invalid(format!(
            "{} in `data` is {}; expected a number",
            position(out.len(), features),
            type_name(other)
        ))),
    }
}

/// Whether the requested outputs (if any) want [`OUTPUT`] as binary data: `None` when
/// the request leaves it to `parameters.binary_data_output`.
fn requested_output(outputs: Option<&Value>) -> Result<Option<bool>, ApiError> {
    let items = match outputs {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "`outputs` must be an array, got {}",
                type_name(other)
            )))
        }
    };
    let mut seen = false;
    let mut binary = None;
    for (i, item) in items.iter().enumerate() {
        let Value::Object(output) = item else {
            return Err(invalid(format!(
                "`outputs[{i}]` must be an object, got {}",
                type_name(item)
            )));
        };
        match output.get("name") {
            Some(Value::String(name)) if name == OUTPUT => {}
            Some(Value::String(name)) => {
                return Err(invalid(format!(
                    "unknown output `{}`; the model's only output is `{OUTPUT}`",
                    quote(name)
                )))
            }
            _ => return Err(invalid(format!("`outputs[{i}]` needs a string `name`"))),
        }
        if seen {
            return Err(invalid(format!("output `{OUTPUT}` is requested twice")));
        }
        seen = true;
        if let Some(params) = output
            .get("parameters")
            .map(|p| object(p, "outputs[quality].parameters"))
            .transpose()?
            .flatten()
        {
            if params.contains_key("shared_memory_region") {
                return Err(invalid(format!(
                    "output `{OUTPUT}` names a shared memory region; this server answers in the response body only"
                )));
            }
            if params
                .get("classification")
                .is_some_and(|c| c.as_u64() != Some(0))
            {
                return Err(invalid(format!(
                    "output `{OUTPUT}` asks for classification; the model is a regression"
                )));
            }
            if let Some(v) = params.get("binary_data") {
                binary = Some(flag(v, "outputs[quality].parameters.binary_data")?);
            }
        }
    }
    Ok(binary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    fn parse(body: &[u8], header: Option<&str>) -> Result<InferRequest, ApiError> {
        parse_infer(body, header, &features(), 4)
    }

    fn ok(body: &str) -> InferRequest {
        parse(body.as_bytes(), None).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    fn binary(header: &str, values: &[u8]) -> (Vec<u8>, String) {
        let mut body = header.as_bytes().to_vec();
        body.extend_from_slice(values);
        (body, header.len().to_string())
    }

    #[test]
    fn json_data_flat_or_nested_becomes_rows() {
        let flat = ok(
            r#"{"id": "r1", "inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6.5]}]}"#,
        );
        assert_eq!(
            flat,
            InferRequest {
                id: Some("r1".into()),
                values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.5],
                rows: 2,
                binary_output: false
            }
        );
        let nested = ok(
            r#"{"inputs": [{"name": "features", "shape": [2, 3], "datatype": "FP64", "data": [[1, 2, 3], [4, 5, 6.5]]}]}"#,
        );
        assert_eq!(nested.values, flat.values);
        assert_eq!(nested.id, None);
    }

    #[test]
    fn fp64_values_round_to_the_f32_that_predict_would_use() {
        let r = ok(
            r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "data": [0.9978, 7.4, 0.1]}]}"#,
        );
        let expected: Vec<f32> = [0.9978f64, 7.4, 0.1].iter().map(|x| *x as f32).collect();
        assert_eq!(r.values, expected);
    }

    #[test]
    fn binary_inputs_in_both_widths_decode_little_endian() {
        let header = r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}"#;
        let raw: Vec<u8> = [1.5f32, -2.0, 0.25]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (body, len) = binary(header, &raw);
        let r = parse(&body, Some(&len)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.values, vec![1.5, -2.0, 0.25]);
        let header = r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": 24}}], "outputs": [{"name": "quality", "parameters": {"binary_data": true}}]}"#;
        let raw: Vec<u8> = [7.4f64, 0.9978, 1e-3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (body, len) = binary(header, &raw);
        let r = parse(&body, Some(&len)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.values,
            vec![7.4f64 as f32, 0.9978f64 as f32, 1e-3f64 as f32]
        );
        assert!(r.binary_output);
    }

    #[test]
    fn binary_output_follows_the_output_then_the_request_parameter() {
        let body = |params: &str, outputs: &str| {
            format!(
                r#"{{"parameters": {params}, {outputs} "inputs": [{{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}}]}}"#
            )
        };
        let cases = [
            ("{}", "", false),
            (r#"{"binary_data_output": true}"#, "", true),
            (
                r#"{"binary_data_output": true, "priority": 3}"#,
                r#""outputs": [],"#,
                true,
            ),
            (
                r#"{"binary_data_output": true}"#,
                r#""outputs": [{"name": "quality"}],"#,
                true,
            ),
            (
                r#"{"binary_data_output": true}"#,
                r#""outputs": [{"name": "quality", "parameters": {"binary_data": false}}],"#,
                false,
            ),
            (
                "{}",
                r#""outputs": [{"name": "quality", "parameters": {"binary_data": true}}],"#,
                true,
            ),
        ];
        for (params, outputs, expected) in cases {
            let b = body(params, outputs);
            assert_eq!(ok(&b).binary_output, expected, "{b}");
        }
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let r = |extra: &str, rest: &str| {
            format!(r#"{{"inputs": [{{"name": "features", "datatype": "FP32", {extra}}}]{rest}}}"#)
        };
        let t = |extra: &str| r(extra, "");
        let one = r#""shape": [1, 3], "data": [1, 2, 3]"#;
        let cases: Vec<(String, ErrorKind, &str)> = vec![
            (String::new(), ErrorKind::InvalidJson, "empty"),
            ("{".into(), ErrorKind::InvalidJson, "not valid JSON"),
            ("[]".into(), ErrorKind::InvalidInput, "JSON object"),
            ("{}".into(), ErrorKind::InvalidInput, "missing `inputs`"),
            (r#"{"inputs": []}"#.into(), ErrorKind::InvalidInput, "`inputs` is empty"),
            (r#"{"inputs": {}}"#.into(), ErrorKind::InvalidInput, "must be an array"),
            (r#"{"inputs": [1]}"#.into(), ErrorKind::InvalidInput, "`inputs[0]` must be an object"),
            (r#"{"inputs": [{}]}"#.into(), ErrorKind::InvalidInput, "has no `name`"),
            (r#"{"inputs": [{"name": "x"}]}"#.into(), ErrorKind::InvalidInput, "unknown input `x`"),
            (r#"{"inputs": [], "input": 1}"#.into(), ErrorKind::InvalidInput, "unknown field `input`"),
            (r#"{"id": 5, "inputs": []}"#.into(), ErrorKind::InvalidInput, "`id` must be a string"),
            (r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}, {"name": "features"}]}"#.into(), ErrorKind::InvalidInput, "given twice"),
            (t(r#""shape": [3], "data": [1, 2, 3]"#), ErrorKind::InvalidInput, "shape [3]; the model takes [N, 3]"),
            (t(r#""shape": [1, 4], "data": [1, 2, 3, 4]"#), ErrorKind::InvalidInput, "shape [1, 4]"),
            (t(r#""shape": [-1, 3], "data": [1, 2, 3]"#), ErrorKind::InvalidInput, "shape [-1, 3]"),
            (t(r#""shape": [1, 3, 1], "data": [1, 2, 3]"#), ErrorKind::InvalidInput, "shape [1, 3, 1]"),
            (t(r#""shape": "1,3", "data": [1, 2, 3]"#), ErrorKind::InvalidInput, "must be an array of integers"),
            (t(r#""data": [1, 2, 3]"#), ErrorKind::InvalidInput, "has no `shape`"),
            (t(r#""shape": [0, 3], "data": []"#), ErrorKind::InvalidBatch, "0 rows"),
            (t(r#""shape": [5, 3], "data": []"#), ErrorKind::InvalidBatch, "5 rows; the limit is 4"),
            (t(r#""shape": [18446744073709551615, 3], "data": []"#), ErrorKind::InvalidBatch, "the limit is 4"),
            (t(r#""shape": [1, 3]"#), ErrorKind::InvalidInput, "has no `data`"),
            (t(r#""shape": [1, 3], "data": [1, 2]"#), ErrorKind::InvalidInput, "has 2 values in `data`; shape [1, 3] needs 3"),
            (t(r#""shape": [1, 3], "data": [1, 2, 3, 4]"#), ErrorKind::InvalidInput, "more values in `data`"),
            (t(r#""shape": [1, 3], "data": [1, "2", 3]"#), ErrorKind::InvalidInput, "`features[0][1]` (`b`) in `data` is a string"),
            (t(r#""shape": [1, 3], "data": [1, 2, null]"#), ErrorKind::InvalidInput, "(`c`) in `data` is null"),
            (t(r#""shape": [1, 3], "data": [1, 2, 1e300]"#), ErrorKind::InvalidInput, "`features[0][2]` (`c`) = 1e300 is outside"),
            (t(r#""shape": [1, 3], "data": [1, 2, 3], "parameters": {"binary_data_size": 12}"#), ErrorKind::InvalidInput, "both `data` and"),
            (t(r#""shape": [1, 3], "parameters": {"binary_data_size": -1}"#), ErrorKind::InvalidInput, "must be a byte count"),
            (t(r#""shape": [1, 3], "parameters": {"shared_memory_region": "r"}"#), ErrorKind::InvalidInput, "shared memory"),
            (t(r#""shape": [1, 3], "parameters": {"binary_data_size": 12}"#), ErrorKind::InvalidInput, "has none after its JSON"),
            (t(r#""shape": [1, 3], "parameters": {"binary_data_size": 4294967296}"#), ErrorKind::InvalidInput, "declares `binary_data_size` 4294967296, but 1×3 FP32 values take 12 bytes"),
            (t(r#""shape": [1, 3], "data": [1, 2, 3], "contents": {}"#), ErrorKind::InvalidInput, "unknown field `contents`"),
            (r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]}]}"#.into(), ErrorKind::InvalidInput, "datatype \"INT64\"; send FP32 or FP64"),
            (r#"{"inputs": [{"name": "features", "shape": [1, 3], "data": [1, 2, 3]}]}"#.into(), ErrorKind::InvalidInput, "has no `datatype`"),
            (r(one, r#", "outputs": [{"name": "score"}]"#), ErrorKind::InvalidInput, "unknown output `score`"),
            (r(one, r#", "outputs": [{"name": "quality"}, {"name": "quality"}]"#), ErrorKind::InvalidInput, "requested twice"),
            (r(one, r#", "outputs": [{"name": "quality", "parameters": {"classification": 2}}]"#), ErrorKind::InvalidInput, "classification"),
            (r(one, r#", "outputs": [{"name": "quality", "parameters": {"binary_data": "yes"}}]"#), ErrorKind::InvalidInput, "must be true or false"),
            (r(one, r#", "x": []"#), ErrorKind::InvalidInput, "unknown field `x`"),
            (r(one, r#", "parameters": {"binary_data_output": 1}"#), ErrorKind::InvalidInput, "`parameters.binary_data_output` must be true or false"),
        ];
        for (body, kind, needle) in cases {
            let err = parse(body.as_bytes(), None).unwrap_err();
            assert_eq!(err.kind, kind, "{body}: {}", err.message);
            assert!(err.message.contains(needle), "{body}: {}", err.message);
        }
    }

    #[test]
    fn bad_binary_sections_are_refused_before_reading_them() {
        let header = r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}"#;
        let cases: Vec<(Vec<u8>, String, &str)> = vec![
            (
                binary(header, &[0; 8]).0,
                header.len().to_string(),
                "but 8 follow",
            ),
            (
                binary(header, &[0; 16]).0,
                header.len().to_string(),
                "but 16 follow",
            ),
            (
                binary(header, &[0; 12]).0,
                "4294967296".into(),
                "is 4294967296 but the body has only",
            ),
            (
                binary(header, &[0; 12]).0,
                "ten".into(),
                "must be the byte length",
            ),
            (
                binary(header, &[0; 12]).0,
                "-1".into(),
                "must be the byte length",
            ),
            (
                binary(header, &f32::NAN.to_le_bytes().repeat(3)).0,
                header.len().to_string(),
                "`features[0][0]` (`a`) is NaN",
            ),
            (
                binary(
                    header,
                    &[1f32, 2.0, f32::INFINITY]
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect::<Vec<_>>(),
                )
                .0,
                header.len().to_string(),
                "`features[0][2]` (`c`) is infinite",
            ),
            (
                binary(header, &[0; 12]).0,
                (header.len() - 1).to_string(),
                "not valid JSON",
            ),
        ];
        for (body, len, needle) in cases {
            let err = parse(&body, Some(&len)).unwrap_err();
            assert!(err.message.contains(needle), "{len}: {}", err.message);
        }
        let json = r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}"#;
        let (body, len) = binary(json, &[0; 4]);
        let err = parse(&body, Some(&len)).unwrap_err();
        assert!(
            err.message
                .contains("4 bytes follow the JSON header but no input"),
            "{}",
            err.message
        );
        let header64 = r#"{"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP64", "parameters": {"binary_data_size": 24}}]}"#;
        let raw: Vec<u8> = [1f64, 2.0, 1e300]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (body, len) = binary(header64, &raw);
        let err = parse(&body, Some(&len)).unwrap_err();
        assert!(
            err.message.contains("= 1e300 is outside the range"),
            "{}",
            err.message
        );
    }

    #[test]
    fn quoted_client_strings_are_bounded() {
        let name = "é".repeat(1000);
        let body = format!(r#"{{"inputs": [{{"name": "{name}"}}]}}"#);
        let err = parse(body.as_bytes(), None).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message);
    }
}
