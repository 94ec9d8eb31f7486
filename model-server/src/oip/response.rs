//! OIP response bodies: server and model metadata, readiness, errors, and the
//! inference response in JSON or with its output as binary data after the JSON.

use serde::Serialize;

use super::request::{INPUT, OUTPUT};

/// Protocol extensions this server implements, as `GET /v2` lists them.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// `GET /v2`.
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    /// Server name.
    pub name: &'static str,
    /// Server version.
    pub version: &'static str,
    /// Supported protocol extensions.
    pub extensions: &'static [&'static str],
}

/// The `parameters` of the model metadata and of its input: the column order.
#[derive(Debug, Serialize)]
pub struct FeatureOrder<'a> {
    /// Feature names, in the order of the input's columns.
    pub features: &'a [String],
}

/// One tensor in the model metadata.
#[derive(Debug, Serialize)]
pub struct TensorMetadata<'a> {
    /// Tensor name.
    pub name: &'static str,
    /// Element type.
    pub datatype: &'static str,
    /// Shape, `-1` for the variable batch dimension.
    pub shape: Vec<i64>,
    /// Column order, on the input.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<FeatureOrder<'a>>,
}

/// `GET /v2/models/{model}`.
#[derive(Debug, Serialize)]
pub struct ModelMetadata<'a> {
    /// The logical model name.
    pub name: &'a str,
    /// Versions served (this arm's model version).
    pub versions: [&'a str; 1],
    /// What runs the model.
    pub platform: &'static str,
    /// The input tensor.
    pub inputs: [TensorMetadata<'a>; 1],
    /// The output tensor.
    pub outputs: [TensorMetadata<'a>; 1],
    /// Column order of the input.
    pub parameters: FeatureOrder<'a>,
}

impl<'a> ModelMetadata<'a> {
    /// The metadata of model `name` at `version` over `features`.
    pub fn new(name: &'a str, version: &'a str, features: &'a [String]) -> Self {
        ModelMetadata {
            name,
            versions: [version],
            platform: "candle",
            inputs: [TensorMetadata {
                name: INPUT,
                datatype: "FP32",
                shape: vec![-1, i64::try_from(features.len()).unwrap_or(i64::MAX)],
                parameters: Some(FeatureOrder { features }),
            }],
            outputs: [TensorMetadata {
                name: OUTPUT,
                datatype: "FP32",
                shape: vec![-1],
                parameters: None,
            }],
            parameters: FeatureOrder { features },
        }
    }
}

/// `GET /v2/health/live`.
#[derive(Debug, Serialize)]
pub struct Live {
    /// Always true when answered.
    pub live: bool,
}

/// `GET /v2/health/ready`.
#[derive(Debug, Serialize)]
pub struct Ready {
    /// Always true when answered: the model is loaded before the server listens.
    pub ready: bool,
}

/// `GET /v2/models/{model}/ready`.
#[derive(Debug, Serialize)]
pub struct ModelReady<'a> {
    /// The logical model name.
    pub name: &'a str,
    /// Always true when answered.
    pub ready: bool,
}

/// What an inference response carries besides the output.
#[derive(Debug, Clone, Copy)]
pub struct InferContext<'a> {
    /// The logical model name.
    pub model_name: &'a str,
    /// The arm's model version.
    pub model_version: &'a str,
    /// The request's `id`, echoed.
    pub id: Option<&'a str>,
    /// One prediction id per row, for `/feedback`.
    pub prediction_ids: &'a [String],
}

#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    parameters: ResponseParameters<'a>,
    outputs: [OutputTensor<'a>; 1],
}

#[derive(Serialize)]
struct ResponseParameters<'a> {
    prediction_ids: &'a [String],
}

#[derive(Serialize)]
struct OutputTensor<'a> {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<BinarySize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a [f32]>,
}

#[derive(Serialize)]
struct BinarySize {
    binary_data_size: usize,
}

/// An encoded inference response.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedInfer {
    /// The whole body.
    pub body: Vec<u8>,
    /// With binary output: the JSON header's length (`Inference-Header-Content-Length`).
    pub header_length: Option<usize>,
}

/// Encodes the response for `predictions`, as JSON `data` or, when `binary`, as
/// little-endian FP32 bytes after the JSON header.
pub fn encode_infer(
    ctx: InferContext<'_>,
    predictions: &[f32],
    binary: bool,
) -> Result<EncodedInfer, serde_json::Error> {
    let bytes = std::mem::size_of_val(predictions);
    let response = InferResponse {
        model_name: ctx.model_name,
        model_version: ctx.model_version,
        id: ctx.id,
        parameters: ResponseParameters {
            prediction_ids: ctx.prediction_ids,
        },
        outputs: [OutputTensor {
            name: OUTPUT,
            datatype: "FP32",
            shape: [predictions.len()],
            parameters: binary.then_some(BinarySize {
                binary_data_size: bytes,
            }),
            data: (!binary).then_some(predictions),
        }],
    };
    let mut body = serde_json::to_vec(&response)?;
    if !binary {
        return Ok(EncodedInfer {
            body,
            header_length: None,
        });
    }
    let header_length = body.len();
    body.reserve_exact(bytes);
    for p in predictions {
        body.extend_from_slice(&p.to_le_bytes());
    }
    Ok(EncodedInfer {
        body,
        header_length: Some(header_length),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx<'a>(ids: &'a [String]) -> InferContext<'a> {
        InferContext {
            model_name: "wine-quality",
            model_version: "1.0.0",
            id: Some("r1"),
            prediction_ids: ids,
        }
    }

    #[test]
    fn json_output_carries_the_data_and_round_trips_f32_exactly() {
        let ids = vec!["a-1".to_string(), "a-2".to_string()];
        let p = [5.123_456_7f32, 6.1];
        let out = encode_infer(ctx(&ids), &p, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.header_length, None);
        let v: serde_json::Value = serde_json::from_slice(&out.body).unwrap_or_default();
        assert_eq!(v["model_name"], "wine-quality");
        assert_eq!(v["model_version"], "1.0.0");
        assert_eq!(v["id"], "r1");
        assert_eq!(v["parameters"]["prediction_ids"][1], "a-2");
        let o = &v["outputs"][0];
        assert_eq!(
            (o["name"].as_str(), o["datatype"].as_str()),
            (Some("quality"), Some("FP32"))
        );
        assert_eq!(o["shape"], serde_json::json!([2]));
        let back: Vec<f32> = o["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|x| x as f32)
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(back, p);
    }

    #[test]
    fn binary_output_follows_the_json_header() {
        let ids = vec!["a-1".to_string(), "a-2".to_string()];
        let p = [5.5f32, -0.25];
        let out = encode_infer(
            InferContext {
                id: None,
                ..ctx(&ids)
            },
            &p,
            true,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let n = out.header_length.unwrap_or(usize::MAX);
        assert_eq!(out.body.len(), n + 8);
        let v: serde_json::Value = serde_json::from_slice(&out.body[..n]).unwrap_or_default();
        assert!(v.get("id").is_none());
        assert_eq!(v["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(v["outputs"][0].get("data").is_none());
        assert_eq!(&out.body[n..n + 4], &5.5f32.to_le_bytes());
        assert_eq!(&out.body[n + 4..], &(-0.25f32).to_le_bytes());
    }

    #[test]
    fn metadata_lists_the_tensors_and_the_feature_order() {
        let features = vec!["a".to_string(), "b".to_string()];
        let v =
            serde_json::to_value(ModelMetadata::new("m", "2.0.0", &features)).unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({
                "name": "m",
                "versions": ["2.0.0"],
                "platform": "candle",
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 2], "parameters": {"features": ["a", "b"]}}],
                "outputs": [{"name": "quality", "datatype": "FP32", "shape": [-1]}],
                "parameters": {"features": ["a", "b"]}
            })
        );
    }
}
