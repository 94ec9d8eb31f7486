//! Start-up checks: a bad model directory or config fails with one readable line that
//! names the file, key or tensor.

use abgate_model_server::{Model, ModelServerError, ServerConfig};
use std::path::{Path, PathBuf};

fn shipped(arm: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models")
        .join(arm)
}

fn copy_model(arm: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(shipped(arm).join(f), dir.path().join(f)).unwrap_or_else(|e| panic!("{e}"));
    }
    dir
}

fn load_error(dir: &Path) -> String {
    match Model::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn both_shipped_models_load() {
    for arm in ["best_model", "candidate_model"] {
        let m = Model::load(&shipped(arm)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.spec().features.len(), 11);
        assert_eq!(m.spec().name, arm);
    }
}

#[test]
fn a_missing_model_directory_is_named() {
    let err = load_error(Path::new("/nonexistent/model"));
    assert_eq!(err, "/nonexistent/model: model directory does not exist");
}

#[test]
fn a_corrupt_model_json_is_named() {
    let dir = copy_model("best_model");
    std::fs::write(dir.path().join("model.json"), "{ not json").unwrap_or_else(|e| panic!("{e}"));
    let err = load_error(dir.path());
    assert!(
        err.contains("model.json: not a valid model description"),
        "{err}"
    );
}

#[test]
fn missing_weights_are_named() {
    let dir = copy_model("best_model");
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    let err = load_error(dir.path());
    assert!(
        err.ends_with("model.safetensors: weights file does not exist"),
        "{err}"
    );
}

#[test]
fn corrupt_weights_are_named() {
    let dir = copy_model("best_model");
    std::fs::write(dir.path().join("model.safetensors"), b"garbage")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = load_error(dir.path());
    assert!(
        err.contains("model.safetensors: not a readable safetensors file"),
        "{err}"
    );
}

#[test]
fn weights_that_do_not_match_model_json_name_the_tensor() {
    // The candidate's weights (11->64->32->1) under the best model's description (11->16->1).
    let dir = copy_model("best_model");
    std::fs::copy(
        shipped("candidate_model").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let err = load_error(dir.path());
    assert!(
        err.contains("tensor `layers.0.weight`: has shape [64, 11], model.json implies [16, 11]"),
        "{err}"
    );
}

#[test]
fn an_inconsistent_model_json_names_the_key() {
    let dir = copy_model("best_model");
    let path = dir.path().join("model.json");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["layers"][1]["inputs"] = 17.into();
    std::fs::write(&path, v.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let err = load_error(dir.path());
    assert!(
        err.contains("key `layers[1].inputs`: is 17 but the previous width is 16"),
        "{err}"
    );
}

#[tokio::test]
async fn run_fails_with_the_model_error_instead_of_panicking() {
    let config = ServerConfig::parse(
        Path::new("c.toml"),
        "variant = \"a\"\nlisten = \"127.0.0.1:0\"\nmodel_dir = \"/nonexistent\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = abgate_model_server::run(config, listener, std::future::pending()).await;
    assert!(
        matches!(result, Err(ModelServerError::ModelFile { .. })),
        "{result:?}"
    );
}

#[test]
fn the_shipped_configs_are_valid_and_point_at_the_shipped_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, arm, port) in [
        ("best_model.toml", "best_model", 6001),
        ("candidate_model.toml", "candidate_model", 6002),
    ] {
        let c =
            ServerConfig::load(&root.join("config").join(file)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.variant, arm);
        assert_eq!(c.listen.port(), port);
        assert!(
            Model::load(&c.model_dir).is_ok(),
            "{}",
            c.model_dir.display()
        );
    }
}
