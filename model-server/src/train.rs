//! The `train` command: fits an MLP to the red-wine quality data with candle-nn and
//! writes a model directory the server loads.
//!
//! Everything random (the train/validation split, the weight initialization and the
//! batch order) comes from one seeded generator, so the same config and seed give the
//! same weights.

use candle_core::{Device, Module, Tensor, Var};
use candle_nn::{AdamW, Linear, Optimizer, ParamsAdamW, VarMap};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::ModelServerError;
use crate::model::{
    bias_name, weight_name, Activation, LayerSpec, Model, ModelSpec, Normalization, TargetScaling,
    TrainingInfo, ValidationInfo, SPEC_FILE, WEIGHTS_FILE,
};

/// Environment prefix for overriding training config keys.
pub const ENV_PREFIX: &str = "ABGATE_TRAIN_";

/// A training run, as written in `config/train/<arm>.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model name (written to model.json).
    pub name: String,
    /// Model version (written to model.json).
    pub version: String,
    /// CSV file (relative to the config file).
    pub dataset: PathBuf,
    /// Where to write the model directory (relative to the config file).
    pub output_dir: PathBuf,
    /// Widths of the hidden layers, e.g. `[64, 32]`.
    pub hidden_layers: Vec<usize>,
    /// Activation of the hidden layers.
    #[serde(default = "default_activation")]
    pub activation: Activation,
    /// Passes over the training split.
    pub epochs: usize,
    /// Rows per optimizer step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub learning_rate: f64,
    /// AdamW weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Share of rows held out for validation.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Seed of everything random.
    pub seed: u64,
    /// Use only the first `max_rows` rows of the dataset (for quick runs).
    #[serde(default)]
    pub max_rows: Option<usize>,
    /// Print a progress line every this many epochs.
    #[serde(default = "default_log_every")]
    pub log_every: usize,
}

fn default_activation() -> Activation {
    Activation::Relu
}
fn default_validation_fraction() -> f64 {
    0.2
}
fn default_log_every() -> usize {
    10
}

impl TrainConfig {
    /// Loads a training config (TOML, then `ABGATE_TRAIN_*` variables), resolving
    /// paths against the file's directory.
    pub fn load(path: &Path) -> Result<TrainConfig, ModelServerError> {
        let mut config: TrainConfig = abgate_common::config::load(path, ENV_PREFIX)?;
        config.dataset = abgate_common::config::resolve_relative(path, &config.dataset);
        config.output_dir = abgate_common::config::resolve_relative(path, &config.output_dir);
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ModelServerError> {
        let invalid = |key: &str, reason: &str| {
            ModelServerError::Config(abgate_common::config::ConfigError::invalid(
                path, key, reason,
            ))
        };
        if self.epochs == 0 {
            return Err(invalid("epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(invalid("learning_rate", "must be a positive number"));
        }
        if !(0.05..=0.5).contains(&self.validation_fraction) {
            return Err(invalid(
                "validation_fraction",
                "must be between 0.05 and 0.5",
            ));
        }
        if self.hidden_layers.contains(&0) {
            return Err(invalid("hidden_layers", "every width must be at least 1"));
        }
        Ok(())
    }
}

/// Rows of features (snake_case names) and their quality targets.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Feature names, in column order.
    pub features: Vec<String>,
    /// One entry per row.
    pub rows: Vec<Vec<f32>>,
    /// Quality of each row.
    pub targets: Vec<f32>,
}

/// Turns a CSV header like `"free sulfur dioxide"` or `pH` into `free_sulfur_dioxide`
/// or `ph`.
pub fn snake_case(header: &str) -> String {
    header
        .trim()
        .trim_matches('"')
        .trim()
        .to_ascii_lowercase()
        .replace([' ', '-'], "_")
}

impl Dataset {
    /// Reads the UCI red-wine CSV: a header, 11 feature columns, then `quality`.
    pub fn read_csv(path: &Path) -> Result<Dataset, ModelServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelServerError::Dataset {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        let bad = |line: usize, reason: String| ModelServerError::Dataset {
            path: path.to_path_buf(),
            reason: format!("line {line}: {reason}"),
        };
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().ok_or_else(|| bad(1, "file is empty".into()))?;
        let mut columns: Vec<String> = header.split(',').map(snake_case).collect();
        if columns.last().map(String::as_str) != Some("quality") || columns.len() < 2 {
            return Err(bad(1, "the last column must be `quality`".into()));
        }
        columns.pop();
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let values: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse::<f32>())
                .collect::<Result<_, _>>()
                .map_err(|e| bad(i + 1, format!("not a number: {e}")))?;
            if values.len() != columns.len() + 1 {
                return Err(bad(
                    i + 1,
                    format!("{} values, expected {}", values.len(), columns.len() + 1),
                ));
            }
            targets.push(values[columns.len()]);
            rows.push(values[..columns.len()].to_vec());
        }
        if rows.len() < 10 {
            return Err(bad(
                0,
                format!("only {} rows; need at least 10", rows.len()),
            ));
        }
        Ok(Dataset {
            features: columns,
            rows,
            targets,
        })
    }
}

/// Mean and population standard deviation of each column (std floored to avoid 0).
pub fn column_stats(rows: &[&Vec<f32>], width: usize) -> (Vec<f32>, Vec<f32>) {
    let n = rows.len().max(1) as f64;
    let mut mean = vec![0f64; width];
    for r in rows {
        for (m, x) in mean.iter_mut().zip(r.iter()) {
            *m += f64::from(*x) / n;
        }
    }
    let mut var = vec![0f64; width];
    for r in rows {
        for ((v, m), x) in var.iter_mut().zip(&mean).zip(r.iter()) {
            *v += (f64::from(*x) - m).powi(2) / n;
        }
    }
    (
        mean.iter().map(|m| *m as f32).collect(),
        var.iter().map(|v| (v.sqrt() as f32).max(1e-6)).collect(),
    )
}

/// The labels a model accepts as ground truth: the range `targets` span, widened by
/// [`LABEL_MARGIN`] on each side (wine quality 3-8 gives `[2, 9]`).
pub fn label_range(targets: &[f32]) -> [f64; 2] {
    let (low, high) = targets
        .iter()
        .map(|t| f64::from(*t))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), t| {
            (lo.min(t), hi.max(t))
        });
    [low - LABEL_MARGIN, high + LABEL_MARGIN]
}

/// How far past the training labels an `actual` may lie (one quality point).
pub const LABEL_MARGIN: f64 = 1.0;

/// What a finished training run reports.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Where the model directory was written.
    pub output_dir: PathBuf,
    /// The written description (includes validation metrics).
    pub spec: ModelSpec,
    /// Validation MSE (in standardized target units) after each epoch.
    pub validation_loss: Vec<f32>,
}

/// Trains the configured MLP and writes `model.json` + `model.safetensors`.
/// `progress` receives one line every `log_every` epochs.
pub fn train(
    config: &TrainConfig,
    mut progress: impl FnMut(&str),
) -> Result<TrainReport, ModelServerError> {
    let mut data = Dataset::read_csv(&config.dataset)?;
    if let Some(max) = config.max_rows {
        data.rows.truncate(max);
        data.targets.truncate(max);
    }
    let width = data.features.len();
    let mut rng = StdRng::seed_from_u64(config.seed);

    let mut order: Vec<usize> = (0..data.rows.len()).collect();
    order.shuffle(&mut rng);
    let n_val = ((data.rows.len() as f64) * config.validation_fraction).round() as usize;
    let (val_idx, train_idx) = order.split_at(n_val.max(1));

    let train_rows: Vec<&Vec<f32>> = train_idx.iter().map(|&i| &data.rows[i]).collect();
    let (mean, std) = column_stats(&train_rows, width);
    let train_targets: Vec<f32> = train_idx.iter().map(|&i| data.targets[i]).collect();
    let target_mean =
        train_targets.iter().map(|t| f64::from(*t)).sum::<f64>() / train_targets.len() as f64;
    let target_std = (train_targets
        .iter()
        .map(|t| (f64::from(*t) - target_mean).powi(2))
        .sum::<f64>()
        / train_targets.len() as f64)
        .sqrt()
        .max(1e-6);

    let normalization = Normalization { mean, std };
    let target = TargetScaling {
        mean: target_mean as f32,
        std: target_std as f32,
    };
    let mut layers = Vec::new();
    let mut inputs = width;
    for &h in &config.hidden_layers {
        layers.push(LayerSpec {
            inputs,
            outputs: h,
            activation: config.activation,
        });
        inputs = h;
    }
    layers.push(LayerSpec {
        inputs,
        outputs: 1,
        activation: Activation::Identity,
    });

    let standardize = |idx: &[usize]| -> (Vec<f32>, Vec<f32>) {
        let mut x = Vec::with_capacity(idx.len() * width);
        let mut y = Vec::with_capacity(idx.len());
        for &i in idx {
            for (j, v) in data.rows[i].iter().enumerate() {
                x.push((v - normalization.mean[j]) / normalization.std[j]);
            }
            y.push((data.targets[i] - target.mean) / target.std);
        }
        (x, y)
    };
    let dev = Device::Cpu;
    let (train_x, train_y) = standardize(train_idx);
    let train_x = Tensor::from_vec(train_x, (train_idx.len(), width), &dev)?;
    let train_y = Tensor::from_vec(train_y, (train_idx.len(), 1), &dev)?;
    let (val_x, val_y) = standardize(val_idx);
    let val_x = Tensor::from_vec(val_x, (val_idx.len(), width), &dev)?;
    let val_y = Tensor::from_vec(val_y, (val_idx.len(), 1), &dev)?;

    // Weights are initialized here from the seeded generator (PyTorch's default
    // uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))) because candle's own CPU initializer
    // cannot be seeded.
    let varmap = VarMap::new();
    let mut net = Vec::new();
    {
        let mut vars = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        for (i, l) in layers.iter().enumerate() {
            let bound = 1.0 / (l.inputs as f32).sqrt();
            let w: Vec<f32> = (0..l.inputs * l.outputs)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let b: Vec<f32> = (0..l.outputs)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let w = Var::from_tensor(&Tensor::from_vec(w, (l.outputs, l.inputs), &dev)?)?;
            let b = Var::from_tensor(&Tensor::from_vec(b, l.outputs, &dev)?)?;
            net.push((
                Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone())),
                l.activation,
            ));
            vars.insert(weight_name(i), w);
            vars.insert(bias_name(i), b);
        }
    }
    let forward = |x: &Tensor| -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (linear, act) in &net {
            x = linear.forward(&x)?;
            x = match act {
                Activation::Relu => x.relu()?,
                Activation::Tanh => x.tanh()?,
                Activation::Identity => x,
            };
        }
        Ok(x)
    };
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: config.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;

    let mut batch_order: Vec<u32> = (0..train_idx.len() as u32).collect();
    let mut validation_loss = Vec::with_capacity(config.epochs);
    for epoch in 1..=config.epochs {
        batch_order.shuffle(&mut rng);
        let mut train_loss = 0.0f64;
        let mut batches = 0usize;
        for chunk in batch_order.chunks(config.batch_size) {
            let idx = Tensor::from_slice(chunk, chunk.len(), &dev)?;
            let x = train_x.index_select(&idx, 0)?;
            let y = train_y.index_select(&idx, 0)?;
            let loss = candle_nn::loss::mse(&forward(&x)?, &y)?;
            opt.backward_step(&loss)?;
            train_loss += f64::from(loss.to_scalar::<f32>()?);
            batches += 1;
        }
        let val = candle_nn::loss::mse(&forward(&val_x)?, &val_y)?.to_scalar::<f32>()?;
        validation_loss.push(val);
        if epoch % config.log_every.max(1) == 0 || epoch == 1 || epoch == config.epochs {
            progress(&format!(
                "epoch {epoch:>4}/{}  train_loss {:.4}  validation_loss {val:.4}",
                config.epochs,
                train_loss / batches.max(1) as f64
            ));
        }
    }

    // Validation metrics in quality units, next to predicting the training mean.
    let pred = forward(&val_x)?.flatten_all()?.to_vec1::<f32>()?;
    let truth: Vec<f32> = val_idx.iter().map(|&i| data.targets[i]).collect();
    let n = truth.len() as f64;
    let (mut se, mut ae, mut bse, mut bae) = (0f64, 0f64, 0f64, 0f64);
    for (p, t) in pred.iter().zip(&truth) {
        let q = f64::from(*p) * target_std + target_mean;
        let e = q - f64::from(*t);
        se += e * e;
        ae += e.abs();
        let b = target_mean - f64::from(*t);
        bse += b * b;
        bae += b.abs();
    }
    let round = |x: f64| (x * 1e4).round() / 1e4;
    let spec = ModelSpec {
        name: config.name.clone(),
        version: config.version.clone(),
        features: data.features.clone(),
        normalization,
        target,
        label_range: label_range(&data.targets),
        layers,
        training: TrainingInfo {
            seed: config.seed,
            epochs: config.epochs,
            batch_size: config.batch_size,
            learning_rate: config.learning_rate,
            weight_decay: config.weight_decay,
            train_rows: train_idx.len(),
            validation_rows: val_idx.len(),
            dataset: config
                .dataset
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
        },
        validation: ValidationInfo {
            rmse: round((se / n).sqrt()),
            mae: round(ae / n),
            baseline_rmse: round((bse / n).sqrt()),
            baseline_mae: round(bae / n),
        },
    };

    let out = &config.output_dir;
    std::fs::create_dir_all(out).map_err(|e| ModelServerError::Io {
        context: format!("creating {}", out.display()),
        source: e,
    })?;
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&tensors, out.join(WEIGHTS_FILE))?;
    let json = serde_json::to_string_pretty(&spec).map_err(|e| ModelServerError::ModelFile {
        path: out.join(SPEC_FILE),
        reason: e.to_string(),
    })?;
    std::fs::write(out.join(SPEC_FILE), json + "\n").map_err(|e| ModelServerError::Io {
        context: format!("writing {}", out.join(SPEC_FILE).display()),
        source: e,
    })?;
    // Prove the directory is servable before reporting success.
    Model::load(out)?;
    Ok(TrainReport {
        output_dir: out.clone(),
        spec,
        validation_loss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_headers_become_snake_case_feature_names() {
        assert_eq!(snake_case("\"free sulfur dioxide\""), "free_sulfur_dioxide");
        assert_eq!(snake_case("\"pH\""), "ph");
        assert_eq!(snake_case(" alcohol "), "alcohol");
    }

    #[test]
    fn the_label_range_is_the_labels_span_widened_by_one_point() {
        assert_eq!(label_range(&[5.0, 3.0, 8.0, 6.0]), [2.0, 9.0]);
        assert_eq!(label_range(&[4.5]), [3.5, 5.5]);
    }

    #[test]
    fn column_stats_standardize_to_zero_mean_unit_std() {
        let rows = [vec![1.0, 5.0], vec![3.0, 5.0]];
        let refs: Vec<&Vec<f32>> = rows.iter().collect();
        let (mean, std) = column_stats(&refs, 2);
        assert_eq!(mean, vec![2.0, 5.0]);
        assert_eq!(std[0], 1.0);
        assert!(std[1] > 0.0, "a constant column must not give std 0");
    }
}
