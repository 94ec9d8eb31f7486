//! Micro-benchmarks of the per-request pieces: assignment, the router's request
//! rewriting on the hyper path, its whole fast path without sockets (request head
//! in, arm request out, arm response head in, client head out), input validation,
//! and the candle forward pass at batch 1, 8 and 64 for each shipped arm.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use abgate_model_server::validation::FeatureSchema;
use abgate_model_server::Model;
use abgate_router::assignment::{position, Split};
use abgate_router::config::RouterConfig;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::path::Path;

const BODY: &str = r#"{"features": {"fixed_acidity": 7.4, "volatile_acidity": 0.7, "citric_acid": 0, "residual_sugar": 1.9, "chlorides": 0.076, "free_sulfur_dioxide": 11, "total_sulfur_dioxide": 34, "density": 0.9978, "ph": 3.51, "sulphates": 0.56, "alcohol": 9.4}}"#;
const ROW: [f32; 11] = [
    7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4,
];

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn assignment(c: &mut Criterion) {
    let split = Split::new(&[90.0, 10.0]).unwrap_or_else(|| panic!("split"));
    let keys: Vec<String> = (0..1024).map(|i| format!("user-{i}")).collect();
    let mut i = 0;
    c.bench_function("assignment/position+pick", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            black_box(split.pick(position("wine-2026-11", black_box(&keys[i]))))
        })
    });
}

fn fast_path(c: &mut Criterion) {
    let config =
        RouterConfig::load(&repo().join("config/router.toml")).unwrap_or_else(|e| panic!("{e}"));
    let router =
        abgate_router::Router::new(config, String::new()).unwrap_or_else(|e| panic!("{e}"));
    let active = router.active();
    let request = format!(
        "POST /predict HTTP/1.1\r\nHost: localhost:8080\r\nUser-Agent: wrk\r\nContent-Type: application/json\r\nX-User-Id: user-42\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let response = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 128\r\ndate: Thu, 26 Nov 2026 02:00:00 GMT\r\n\r\n";
    assert!(
        abgate_router::fastpath::rewrite_without_sockets(
            &active,
            request.as_bytes(),
            response.as_bytes()
        )
        .is_some(),
        "the benchmark request must take the fast path"
    );
    c.bench_function("router/fast_path_without_sockets", |b| {
        b.iter(|| {
            black_box(abgate_router::fastpath::rewrite_without_sockets(
                &active,
                black_box(request.as_bytes()),
                black_box(response.as_bytes()),
            ))
        })
    });
}

fn validation(c: &mut Criterion) {
    let model = Model::load(&repo().join("models/best_model")).unwrap_or_else(|e| panic!("{e}"));
    let schema = FeatureSchema::new(&model.spec().features);
    c.bench_function("validation/parse_predict_single", |b| {
        b.iter(|| black_box(schema.parse_predict(black_box(BODY.as_bytes()), 1024)))
    });
}

fn forward(c: &mut Criterion) {
    // One thread per forward pass, as the server runs them (see DESIGN.md).
    std::env::set_var("RAYON_NUM_THREADS", "1");
    for arm in ["best_model", "candidate_model"] {
        let model = Model::load(&repo().join("models").join(arm)).unwrap_or_else(|e| panic!("{e}"));
        let mut group = c.benchmark_group(format!("forward/{arm}"));
        for rows in [1usize, 8, 64] {
            let values: Vec<f32> = ROW.iter().copied().cycle().take(rows * ROW.len()).collect();
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(BenchmarkId::from_parameter(rows), &rows, |b, &rows| {
                b.iter(|| black_box(model.predict(values.clone(), rows)))
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = assignment, fast_path, validation, forward
}
criterion_main!(benches);
