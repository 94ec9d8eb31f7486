//! A model is a directory: `model.json` (what the network is and how to feed it) and
//! `model.safetensors` (its weights). This module loads and checks both, and runs the
//! candle forward pass on a batch of rows.

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::ModelServerError;

/// File name of the model description inside a model directory.
pub const SPEC_FILE: &str = "model.json";
/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The contents of `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Model name (usually the arm it was trained for).
    pub name: String,
    /// Model version, reported in every prediction and in `abgate_build_info`.
    pub version: String,
    /// Feature names in the order the network expects them.
    pub features: Vec<String>,
    /// Per-feature standardization learned on the training split.
    pub normalization: Normalization,
    /// How to turn the network's output back into a quality score.
    pub target: TargetScaling,
    /// `[min, max]`: the values a true label (feedback's `actual`) may take: the range
    /// the training data spans, widened by one point on each side (wine quality 3-8
    /// gives `[2, 9]`). Required: a model without it does not load.
    pub label_range: [f64; 2],
    /// Dense layers, input first.
    pub layers: Vec<LayerSpec>,
    /// How the model was trained.
    pub training: TrainingInfo,
    /// Held-out metrics.
    pub validation: ValidationInfo,
}

/// `x' = (x - mean) / std` per feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalization {
    /// Mean of each feature on the training split.
    pub mean: Vec<f32>,
    /// Standard deviation of each feature on the training split (all > 0).
    pub std: Vec<f32>,
}

/// `quality = output * std + mean`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetScaling {
    /// Mean quality on the training split.
    pub mean: f32,
    /// Standard deviation of quality on the training split.
    pub std: f32,
}

/// One dense layer: `activation(x · Wᵀ + b)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Input width.
    pub inputs: usize,
    /// Output width.
    pub outputs: usize,
    /// Activation applied to the output.
    pub activation: Activation,
}

/// Supported activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// tanh(x).
    Tanh,
    /// No activation (the output layer).
    Identity,
}

/// Training provenance recorded in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingInfo {
    /// Seed of the split, the weight initialization and the batch order.
    pub seed: u64,
    /// Passes over the training split.
    pub epochs: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Rows in the training split.
    pub train_rows: usize,
    /// Rows in the validation split.
    pub validation_rows: usize,
    /// Dataset the model was trained on.
    pub dataset: String,
}

/// Metrics on the validation split, next to the predict-the-mean baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationInfo {
    /// Root mean squared error of the model.
    pub rmse: f64,
    /// Mean absolute error of the model.
    pub mae: f64,
    /// RMSE of always predicting the training mean.
    pub baseline_rmse: f64,
    /// MAE of always predicting the training mean.
    pub baseline_mae: f64,
}

impl ModelSpec {
    /// Checks that the description is a consistent network over its features.
    pub fn validate(&self, path: &Path) -> Result<(), ModelServerError> {
        let bad = |key: &str, reason: String| ModelServerError::ModelSpec {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason,
        };
        let n = self.features.len();
        if n == 0 {
            return Err(bad("features", "must list at least one feature".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, f) in self.features.iter().enumerate() {
            if !seen.insert(f) {
                return Err(bad(
                    &format!("features[{i}]"),
                    format!("duplicate feature {f:?}"),
                ));
            }
        }
        if self.normalization.mean.len() != n {
            return Err(bad(
                "normalization.mean",
                format!(
                    "has {} values for {n} features",
                    self.normalization.mean.len()
                ),
            ));
        }
        if self.normalization.std.len() != n {
            return Err(bad(
                "normalization.std",
                format!(
                    "has {} values for {n} features",
                    self.normalization.std.len()
                ),
            ));
        }
        for (i, s) in self.normalization.std.iter().enumerate() {
            if !(s.is_finite() && *s > 0.0) {
                return Err(bad(
                    &format!("normalization.std[{i}]"),
                    format!("must be a positive number, got {s}"),
                ));
            }
        }
        if self.normalization.mean.iter().any(|m| !m.is_finite()) {
            return Err(bad("normalization.mean", "must be finite numbers".into()));
        }
        if !(self.target.std.is_finite() && self.target.std > 0.0 && self.target.mean.is_finite()) {
            return Err(bad("target", "std must be positive and mean finite".into()));
        }
        let [low, high] = self.label_range;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(bad(
                "label_range",
                format!("must be [min, max] with finite min < max, got [{low}, {high}]"),
            ));
        }
        if self.layers.is_empty() {
            return Err(bad("layers", "must list at least one layer".into()));
        }
        let mut width = n;
        for (i, layer) in self.layers.iter().enumerate() {
            if layer.inputs != width {
                return Err(bad(
                    &format!("layers[{i}].inputs"),
                    format!("is {} but the previous width is {width}", layer.inputs),
                ));
            }
            if layer.outputs == 0 {
                return Err(bad(
                    &format!("layers[{i}].outputs"),
                    "must be at least 1".into(),
                ));
            }
            width = layer.outputs;
        }
        if width != 1 {
            return Err(bad(
                &format!("layers[{}].outputs", self.layers.len() - 1),
                format!("the last layer must have 1 output, got {width}"),
            ));
        }
        Ok(())
    }

    /// Standardizes one row of raw features in place.
    pub fn normalize(&self, row: &mut [f32]) {
        for ((x, m), s) in row
            .iter_mut()
            .zip(&self.normalization.mean)
            .zip(&self.normalization.std)
        {
            *x = (*x - m) / s;
        }
    }
}

/// Name of a layer's weight tensor in `model.safetensors`.
pub fn weight_name(layer: usize) -> String {
    format!("layers.{layer}.weight")
}

/// Name of a layer's bias tensor in `model.safetensors`.
pub fn bias_name(layer: usize) -> String {
    format!("layers.{layer}.bias")
}

/// One dense layer, stored for the forward pass as one contiguous matrix `M` so the
/// layer is a single `x · M` matmul and its activation.
///
/// The bias is folded into `M` in homogeneous coordinates: when the layer's input
/// ends with a column of ones, `M = [Wᵀ; b]`. A layer whose activation keeps 1 as 1
/// (ReLU, identity) passes such a column on: `M` gets one more output column, of
/// zero weights and bias 1. Candle's broadcast bias add costs more than the matmul
/// itself at batch 64 (9 of 15 µs for the candidate), so folding is what makes
/// batching pay. A layer after a `tanh` gets no ones column and adds its bias; a
/// final single-output identity layer gets none either (an odd extra column on the
/// layer before would cost gemm more than it saves) and its bias becomes a shift.
#[derive(Debug)]
struct Dense {
    matrix: Tensor,
    /// The bias, when not folded into `matrix`.
    bias: Option<Tensor>,
    activation: Activation,
}

impl Dense {
    /// The layer for weight `w` (`[outputs, inputs]`) and bias `b`, folding the bias
    /// when the input carries a ones column and adding one to the output if asked.
    fn fold(
        w: &Tensor,
        b: Tensor,
        ones_in: bool,
        ones_out: bool,
        activation: Activation,
    ) -> candle_core::Result<Dense> {
        let (mut matrix, bias) = if ones_in {
            (Tensor::cat(&[&w.t()?, &b.unsqueeze(0)?], 0)?, None)
        } else {
            (w.t()?, Some(b))
        };
        if ones_out {
            let inputs = matrix.dims2()?.0;
            let mut column = vec![0f32; inputs];
            column[inputs - 1] = 1.0;
            let column = Tensor::from_vec(column, (inputs, 1), &Device::Cpu)?;
            matrix = Tensor::cat(&[&matrix, &column], 1)?;
        }
        Ok(Dense {
            matrix: matrix.contiguous()?,
            bias,
            activation,
        })
    }
}

/// A loaded, checked model ready to predict.
#[derive(Debug)]
pub struct Model {
    spec: ModelSpec,
    layers: Vec<Dense>,
    /// The bias of a final single-output identity layer, added with the target
    /// scaling instead of as a tensor op.
    output_bias: f32,
    dir: PathBuf,
}

impl Model {
    /// Loads `dir/model.json` and `dir/model.safetensors`, checking that every tensor
    /// exists with the shape the description implies and that no tensor is extra.
    pub fn load(dir: &Path) -> Result<Model, ModelServerError> {
        if !dir.is_dir() {
            return Err(ModelServerError::ModelFile {
                path: dir.to_path_buf(),
                reason: "model directory does not exist".into(),
            });
        }
        let spec_path = dir.join(SPEC_FILE);
        let text =
            std::fs::read_to_string(&spec_path).map_err(|e| ModelServerError::ModelFile {
                path: spec_path.clone(),
                reason: format!("cannot read: {e}"),
            })?;
        let spec: ModelSpec =
            serde_json::from_str(&text).map_err(|e| ModelServerError::ModelFile {
                path: spec_path.clone(),
                reason: format!("not a valid model description: {e}"),
            })?;
        spec.validate(&spec_path)?;

        let weights_path = dir.join(WEIGHTS_FILE);
        if !weights_path.is_file() {
            return Err(ModelServerError::ModelFile {
                path: weights_path,
                reason: "weights file does not exist".into(),
            });
        }
        let mut tensors =
            candle_core::safetensors::load(&weights_path, &Device::Cpu).map_err(|e| {
                ModelServerError::ModelFile {
                    path: weights_path.clone(),
                    reason: format!("not a readable safetensors file: {e}"),
                }
            })?;
        let (layers, output_bias) = Self::take_layers(&spec, &mut tensors, &weights_path)?;
        if let Some(extra) = tensors.keys().min() {
            return Err(ModelServerError::Weights {
                path: weights_path,
                tensor: extra.clone(),
                reason: "is not part of the network described in model.json".into(),
            });
        }
        Ok(Model {
            spec,
            layers,
            output_bias,
            dir: dir.to_path_buf(),
        })
    }

    fn take_layers(
        spec: &ModelSpec,
        tensors: &mut HashMap<String, Tensor>,
        path: &Path,
    ) -> Result<(Vec<Dense>, f32), ModelServerError> {
        let mut take = |name: String, shape: &[usize]| -> Result<Tensor, ModelServerError> {
            let tensor = tensors
                .remove(&name)
                .ok_or_else(|| ModelServerError::Weights {
                    path: path.to_path_buf(),
                    tensor: name.clone(),
                    reason: "missing".into(),
                })?;
            if tensor.dims() != shape {
                return Err(ModelServerError::Weights {
                    path: path.to_path_buf(),
                    tensor: name,
                    reason: format!(
                        "has shape {:?}, model.json implies {shape:?}",
                        tensor.dims()
                    ),
                });
            }
            if tensor.dtype() != candle_core::DType::F32 {
                return Err(ModelServerError::Weights {
                    path: path.to_path_buf(),
                    tensor: name,
                    reason: format!("has dtype {:?}, expected f32", tensor.dtype()),
                });
            }
            Ok(tensor)
        };
        // A final single-output identity layer needs no ones column: its bias is a
        // scalar shift, applied with the target scaling.
        let shifts = |l: &LayerSpec| l.activation == Activation::Identity && l.outputs == 1;
        let count = spec.layers.len();
        let mut layers = Vec::with_capacity(count);
        let mut output_bias = 0.0;
        // The caller appends a ones column to the input rows.
        let mut ones_in = true;
        for (i, l) in spec.layers.iter().enumerate() {
            let w = take(weight_name(i), &[l.outputs, l.inputs])?;
            let b = take(bias_name(i), &[l.outputs])?;
            let next_shifts = i + 2 == count && shifts(&spec.layers[i + 1]);
            let ones_out =
                ones_in && i + 1 < count && !next_shifts && l.activation != Activation::Tanh;
            let mut layer = Dense::fold(&w, b, ones_in, ones_out, l.activation)?;
            if i + 1 == count && shifts(l) {
                if let Some(b) = layer.bias.take() {
                    output_bias = b.to_vec1::<f32>()?.first().copied().unwrap_or(0.0);
                }
            }
            layers.push(layer);
            ones_in = ones_out;
        }
        Ok((layers, output_bias))
    }

    /// The model description.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Predicts quality for `rows` rows of raw (not yet normalized) features laid out
    /// row after row in `features`, in one forward pass.
    pub fn predict(&self, features: Vec<f32>, rows: usize) -> candle_core::Result<Vec<f32>> {
        let width = self.spec.features.len();
        // Normalized, each row followed by the 1 that carries the first bias.
        let mut input = Vec::with_capacity(rows * (width + 1));
        for row in features.chunks(width).take(rows) {
            let start = input.len();
            input.extend_from_slice(row);
            self.spec.normalize(&mut input[start..]);
            input.push(1.0);
        }
        let mut x = Tensor::from_vec(input, (rows, width + 1), &Device::Cpu)?;
        for layer in &self.layers {
            x = x.matmul(&layer.matrix)?;
            if let Some(bias) = &layer.bias {
                x = x.broadcast_add(bias)?;
            }
            x = match layer.activation {
                Activation::Relu => x.relu()?,
                Activation::Tanh => x.tanh()?,
                Activation::Identity => x,
            };
        }
        let out = x.flatten_all()?.to_vec1::<f32>()?;
        let TargetScaling { mean, std } = self.spec.target;
        let shift = self.output_bias;
        Ok(out.into_iter().map(|y| (y + shift) * std + mean).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> ModelSpec {
        ModelSpec {
            name: "t".into(),
            version: "1".into(),
            features: vec!["a".into(), "b".into()],
            normalization: Normalization {
                mean: vec![1.0, 10.0],
                std: vec![2.0, 5.0],
            },
            target: TargetScaling {
                mean: 5.0,
                std: 2.0,
            },
            label_range: [2.0, 9.0],
            layers: vec![LayerSpec {
                inputs: 2,
                outputs: 1,
                activation: Activation::Identity,
            }],
            training: TrainingInfo {
                seed: 1,
                epochs: 1,
                batch_size: 1,
                learning_rate: 0.1,
                weight_decay: 0.0,
                train_rows: 1,
                validation_rows: 1,
                dataset: "x".into(),
            },
            validation: ValidationInfo {
                rmse: 1.0,
                mae: 1.0,
                baseline_rmse: 1.0,
                baseline_mae: 1.0,
            },
        }
    }

    /// The forward pass written out in plain loops, bias added separately.
    fn reference(spec: &ModelSpec, weights: &[(Vec<f32>, Vec<f32>)], raw: &[f32]) -> f32 {
        let mut x = raw.to_vec();
        spec.normalize(&mut x);
        for (layer, (w, b)) in spec.layers.iter().zip(weights) {
            x = (0..layer.outputs)
                .map(|o| {
                    let z = b[o]
                        + (0..layer.inputs)
                            .map(|i| w[o * layer.inputs + i] * x[i])
                            .sum::<f32>();
                    match layer.activation {
                        Activation::Relu => z.max(0.0),
                        Activation::Tanh => z.tanh(),
                        Activation::Identity => z,
                    }
                })
                .collect();
        }
        x[0] * spec.target.std + spec.target.mean
    }

    #[test]
    fn folded_biases_give_the_plain_forward_pass_for_every_activation_order() {
        use Activation::{Identity, Relu, Tanh};
        let orders: [&[Activation]; 4] = [
            &[Relu, Relu, Identity],
            &[Relu, Tanh, Identity],
            &[Tanh, Relu, Identity],
            &[Identity],
        ];
        for order in orders {
            let mut s = spec();
            let widths: Vec<usize> = std::iter::once(2)
                .chain((1..order.len()).map(|i| 3 + i))
                .chain(std::iter::once(1))
                .collect();
            s.layers = order
                .iter()
                .enumerate()
                .map(|(i, a)| LayerSpec {
                    inputs: widths[i],
                    outputs: widths[i + 1],
                    activation: *a,
                })
                .collect();
            let mut tensors = HashMap::new();
            let mut weights = Vec::new();
            for (i, l) in s.layers.iter().enumerate() {
                let w: Vec<f32> = (0..l.outputs * l.inputs)
                    .map(|k| ((k * 7 + i * 3) % 11) as f32 / 5.0 - 1.0)
                    .collect();
                let b: Vec<f32> = (0..l.outputs).map(|k| 0.3 - k as f32 * 0.2).collect();
                let wt = Tensor::from_vec(w.clone(), (l.outputs, l.inputs), &Device::Cpu);
                let bt = Tensor::from_vec(b.clone(), l.outputs, &Device::Cpu);
                tensors.insert(weight_name(i), wt.unwrap_or_else(|e| panic!("{e}")));
                tensors.insert(bias_name(i), bt.unwrap_or_else(|e| panic!("{e}")));
                weights.push((w, b));
            }
            let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
            let text = serde_json::to_string(&s).unwrap_or_default();
            std::fs::write(dir.path().join(SPEC_FILE), text).unwrap_or_else(|e| panic!("{e}"));
            candle_core::safetensors::save(&tensors, dir.path().join(WEIGHTS_FILE))
                .unwrap_or_else(|e| panic!("{e}"));
            let model = Model::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
            let rows: Vec<[f32; 2]> = vec![[3.0, 0.0], [-1.0, 12.0], [0.5, 30.0]];
            let got = model
                .predict(rows.concat(), rows.len())
                .unwrap_or_else(|e| panic!("{e}"));
            for (row, g) in rows.iter().zip(&got) {
                let want = reference(&s, &weights, row);
                assert!((g - want).abs() < 1e-5, "{order:?} {row:?}: {g} vs {want}");
            }
        }
    }

    #[test]
    fn normalization_subtracts_the_mean_and_divides_by_the_std() {
        let mut row = [3.0, 0.0];
        spec().normalize(&mut row);
        assert_eq!(row, [1.0, -2.0]);
    }

    #[test]
    fn a_model_json_without_a_label_range_is_refused_naming_it() {
        let mut v = serde_json::to_value(spec()).unwrap_or_default();
        if let Some(map) = v.as_object_mut() {
            map.remove("label_range");
        }
        let err = serde_json::from_value::<ModelSpec>(v).unwrap_err();
        assert!(
            err.to_string().contains("missing field `label_range`"),
            "{err}"
        );
    }

    #[test]
    fn model_json_round_trips_and_rejects_unknown_keys() {
        let s = spec();
        let text = serde_json::to_string(&s).unwrap_or_default();
        let back: ModelSpec = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, s);
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v["colour"] = "red".into();
        let err = serde_json::from_value::<ModelSpec>(v).unwrap_err();
        assert!(err.to_string().contains("unknown field `colour`"), "{err}");
    }

    #[test]
    fn inconsistent_specs_are_rejected_with_the_key() {
        type Break = fn(&mut ModelSpec);
        let cases: [(&str, Break); 9] = [
            ("normalization.mean", |s| {
                s.normalization.mean.pop().map(drop).unwrap_or(())
            }),
            ("normalization.std[1]", |s| s.normalization.std[1] = 0.0),
            ("layers[0].inputs", |s| s.layers[0].inputs = 3),
            ("layers[0].outputs", |s| s.layers[0].outputs = 2),
            ("features[1]", |s| s.features[1] = "a".into()),
            ("layers", |s| s.layers.clear()),
            ("label_range", |s| s.label_range = [9.0, 2.0]),
            ("label_range", |s| s.label_range = [2.0, 2.0]),
            ("label_range", |s| s.label_range[1] = f64::INFINITY),
        ];
        for (key, breaker) in cases {
            let mut s = spec();
            breaker(&mut s);
            let err = s.validate(Path::new("m.json")).unwrap_err().to_string();
            assert!(err.contains(&format!("key `{key}`")), "{key}: {err}");
        }
        assert!(spec().validate(Path::new("m.json")).is_ok());
    }
}
