//! Training with candle-nn: a short run on a subset learns, is reproducible, and
//! writes a directory the server loads and serves.

use abgate_model_server::model::Activation;
use abgate_model_server::train::{train, TrainConfig};
use abgate_model_server::Model;
use std::path::{Path, PathBuf};

fn config(out: &Path, seed: u64) -> TrainConfig {
    TrainConfig {
        name: "test_model".into(),
        version: "0.0.1".into(),
        dataset: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../data/winequality-red.csv"),
        output_dir: out.to_path_buf(),
        hidden_layers: vec![8],
        activation: Activation::Relu,
        epochs: 20,
        batch_size: 32,
        learning_rate: 0.01,
        weight_decay: 0.0,
        validation_fraction: 0.2,
        seed,
        max_rows: Some(400),
        log_every: 5,
    }
}

#[test]
fn a_short_run_on_a_subset_lowers_validation_loss_and_writes_a_servable_model() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut lines = Vec::new();
    let report = train(&config(dir.path(), 7), |l| lines.push(l.to_string()))
        .unwrap_or_else(|e| panic!("{e}"));
    let first = report.validation_loss[0];
    let last = *report.validation_loss.last().unwrap_or(&f32::NAN);
    assert!(last < first, "validation loss went from {first} to {last}");
    assert!(
        report.spec.validation.rmse < report.spec.validation.baseline_rmse,
        "{:?}",
        report.spec.validation
    );
    assert_eq!(
        report.spec.training.train_rows + report.spec.training.validation_rows,
        400
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("epoch") && l.contains("validation_loss")),
        "{lines:?}"
    );
    // The labels of the rows trained on, widened by one point.
    let data = abgate_model_server::train::Dataset::read_csv(&config(dir.path(), 7).dataset)
        .unwrap_or_else(|e| panic!("{e}"));
    let used = &data.targets[..400];
    let low = used.iter().copied().fold(f32::INFINITY, f32::min);
    let high = used.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    assert_eq!(
        report.spec.label_range,
        [f64::from(low) - 1.0, f64::from(high) + 1.0]
    );
    let model = Model::load(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let row = vec![
        7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4,
    ];
    let out = model.predict(row, 1).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out[0].is_finite() && (2.0..=9.0).contains(&out[0]),
        "{out:?}"
    );
}

#[test]
fn the_same_config_and_seed_give_the_same_weights() {
    let a = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let b = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let c = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    train(&config(a.path(), 7), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    train(&config(b.path(), 7), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    train(&config(c.path(), 8), |_| {}).unwrap_or_else(|e| panic!("{e}"));
    let read = |d: &Path| std::fs::read(d.join("model.safetensors")).unwrap_or_default();
    let tensors = |d: &Path| {
        let t =
            candle_core::safetensors::load(d.join("model.safetensors"), &candle_core::Device::Cpu)
                .unwrap_or_default();
        let mut names: Vec<_> = t.keys().cloned().collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                t[n].flatten_all()
                    .and_then(|x| x.to_vec1::<f32>())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(tensors(a.path()), tensors(b.path()));
    assert_ne!(
        tensors(a.path()),
        tensors(c.path()),
        "a different seed must give different weights"
    );
    assert!(!read(a.path()).is_empty());
}
