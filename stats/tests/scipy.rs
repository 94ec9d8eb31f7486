//! Exactness against an independent implementation: NumPy/SciPy recompute, from the same
//! generated observations, the point estimates, the fixed-horizon interval, the
//! confidence sequence (from its documented formula), the chi-square p-value and the SRM
//! Bayes factor (`tests/python/scipy_reference.py`); and, for the comparisons by user,
//! from raw observations with their user bucket, the bucket sums, the delta-method and
//! jackknife variances, and the whole interval. These tests fail — they do not skip —
//! when python3, NumPy or SciPy is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use abgate_stats::family::family_config;
use abgate_stats::sequence::{DEFAULT_ALPHA, DEFAULT_TUNING_N};
use abgate_stats::srm::{
    chi_square_p_value, log_bayes_factor, normalise_shares, DEFAULT_CONCENTRATION,
};
use abgate_stats::{
    compare, compare_users, Boundary, BucketSums, CompareConfig, Metric, Moments, Proportion,
    RatioEstimate, SrmMonitor, UserCompareConfig,
};
use common::{Experiment, Traffic};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// Agreement required of every estimate, interval end and p-value.
const TOLERANCE: f64 = 1e-9;

fn normal(rng: &mut SmallRng) -> f64 {
    loop {
        let u: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let v: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let s = u * u + v * v;
        if s > 0.0 && s < 1.0 {
            return u * (-2.0 * s.ln() / s).sqrt();
        }
    }
}

fn bernoulli(rng: &mut SmallRng, n: usize, p: f64) -> Vec<f64> {
    (0..n)
        .map(|_| f64::from(u8::from(rng.random::<f64>() < p)))
        .collect()
}

fn rating(rng: &mut SmallRng, n: usize, cumulative: [f64; 4]) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let u: f64 = rng.random();
            1.0 + cumulative.iter().filter(|&&c| u >= c).count() as f64
        })
        .collect()
}

struct Case {
    name: &'static str,
    metric: Metric,
    arm: Vec<f64>,
    control: Vec<f64>,
}

fn cases(rng: &mut SmallRng) -> Vec<Case> {
    let lognormal = |rng: &mut SmallRng, n: usize, median: f64| -> Vec<f64> {
        (0..n)
            .map(|_| (median.ln() + 0.6 * normal(rng)).exp())
            .collect()
    };
    vec![
        Case {
            name: "error_rate",
            metric: Metric::ErrorRate,
            arm: bernoulli(rng, 4870, 0.013),
            control: bernoulli(rng, 5000, 0.01),
        },
        Case {
            name: "latency_mean_seconds",
            metric: Metric::LatencyMeanSeconds,
            arm: lognormal(rng, 3000, 0.052),
            control: lognormal(rng, 3100, 0.05),
        },
        Case {
            name: "absolute_error",
            metric: Metric::AbsoluteError,
            arm: (0..400).map(|_| (0.7 * normal(rng)).abs()).collect(),
            control: (0..420).map(|_| (0.6 * normal(rng) + 0.1).abs()).collect(),
        },
        Case {
            name: "rating",
            metric: Metric::Rating,
            arm: rating(rng, 800, [0.05, 0.15, 0.4, 0.7]),
            control: rating(rng, 750, [0.08, 0.2, 0.45, 0.75]),
        },
        Case {
            name: "accurate_share",
            metric: Metric::AccurateShare,
            arm: bernoulli(rng, 1200, 0.6),
            control: bernoulli(rng, 1180, 0.55),
        },
        Case {
            name: "latency_far_apart",
            metric: Metric::LatencyMeanSeconds,
            arm: lognormal(rng, 150, 0.2),
            control: lognormal(rng, 5000, 0.05),
        },
    ]
}

fn srm_cases(rng: &mut SmallRng) -> Vec<(Vec<u64>, Vec<f64>)> {
    let mut multinomial = |n: usize, shares: &[f64]| -> Vec<u64> {
        let mut counts = vec![0u64; shares.len()];
        for _ in 0..n {
            let mut u: f64 = rng.random();
            let arm = shares
                .iter()
                .position(|&s| {
                    u -= s;
                    u < 0.0
                })
                .unwrap_or(shares.len() - 1);
            counts[arm] += 1;
        }
        counts
    };
    let generated_3 = multinomial(20_000, &[0.5, 0.3, 0.2]);
    let generated_2 = multinomial(50_000, &[0.512, 0.488]);
    vec![
        (vec![5100, 4900], vec![50.0, 50.0]),
        (vec![9050, 950], vec![90.0, 10.0]),
        (vec![3400, 3300, 3350], vec![1.0, 1.0, 1.0]),
        (vec![6000, 4000], vec![1.0, 1.0]),
        (vec![101_000, 99_000], vec![1.0, 1.0]),
        (vec![12, 9], vec![1.0, 1.0]),
        (generated_3, vec![5.0, 3.0, 2.0]),
        (generated_2, vec![1.0, 1.0]),
    ]
}

/// `|rust − python| ≤ TOLERANCE · max(1, |python|)`; returns the scaled discrepancy.
fn agree(what: &str, rust: f64, python: &Value) -> f64 {
    let python = python
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: Python gave {python}"));
    let scaled = (rust - python).abs() / python.abs().max(1.0);
    assert!(
        scaled <= TOLERANCE,
        "{what}: Rust {rust:e} vs SciPy {python:e}"
    );
    scaled
}

/// Runs `tests/python/scipy_reference.py` on `input` and returns its JSON answer.
fn run_reference(input: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("observations.json");
    std::fs::write(&path, serde_json::to_vec(input).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/scipy_reference.py");
    let output = Command::new("python3")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); .ci/run installs python3 with numpy and scipy")
        });
    assert!(
        output.status.success(),
        "{} failed ({}); it needs numpy and scipy:\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn moments_for(metric: Metric, xs: &[f64]) -> Moments {
    if matches!(metric, Metric::ErrorRate | Metric::AccurateShare) {
        // Binary metrics go through Proportion, as the router keeps them.
        let mut p = Proportion::new();
        xs.iter().for_each(|&x| p.push(x == 1.0));
        p.into()
    } else {
        xs.iter().copied().collect()
    }
}

#[test]
#[ignore = "needs python3 with numpy and scipy (installed by .ci/run)"]
fn estimates_intervals_and_p_values_agree_with_scipy() {
    let mut rng = SmallRng::seed_from_u64(0x5C1);
    let cases = cases(&mut rng);
    let srm = srm_cases(&mut rng);
    let input = json!({
        "alpha": DEFAULT_ALPHA,
        "tuning_n": DEFAULT_TUNING_N,
        "concentration": DEFAULT_CONCENTRATION,
        "comparisons": cases.iter().map(|c| json!({"name": c.name, "arm": c.arm, "control": c.control})).collect::<Vec<_>>(),
        "srm": srm.iter().map(|(counts, weights)| json!({"counts": counts, "weights": weights})).collect::<Vec<_>>(),
    });
    let reference = run_reference(&input);
    println!("reference: {}", reference["versions"]);

    let boundary = Boundary::default();
    let mut worst: f64 = 0.0;
    worst = worst.max(agree("rho", boundary.rho(), &reference["rho"]));
    let config = CompareConfig::default();
    for (case, py) in cases
        .iter()
        .zip(reference["comparisons"].as_array().unwrap())
    {
        assert_eq!(py["name"], case.name);
        let arm = moments_for(case.metric, &case.arm);
        let control = moments_for(case.metric, &case.control);
        let c = compare(case.metric, &arm, &control, &config);
        assert_eq!(json!(c.n_arm), py["n_arm"]);
        assert_eq!(json!(c.n_control), py["n_control"]);
        let what = |field: &str| format!("{}.{field}", case.name);
        for (field, rust) in [
            ("mean_arm", arm.mean().unwrap()),
            ("mean_control", control.mean().unwrap()),
            ("estimate", c.estimate.unwrap()),
            ("var_arm", arm.variance().unwrap()),
            ("var_control", control.variance().unwrap()),
            ("fixed_low", c.fixed_low.unwrap()),
            ("fixed_high", c.fixed_high.unwrap()),
            ("ci_low", c.ci_low.unwrap()),
            ("ci_high", c.ci_high.unwrap()),
        ] {
            worst = worst.max(agree(&what(field), rust, &py[field]));
        }
        // The anytime-valid sequence contains SciPy's fixed-horizon interval.
        let (fixed_low, fixed_high) = (
            py["fixed_low"].as_f64().unwrap(),
            py["fixed_high"].as_f64().unwrap(),
        );
        assert!(
            c.ci_low.unwrap() < fixed_low && fixed_high < c.ci_high.unwrap(),
            "{}: sequence [{:?}, {:?}] does not contain the fixed interval [{fixed_low}, {fixed_high}]",
            case.name,
            c.ci_low,
            c.ci_high
        );
        println!(
            "{:>22}: estimate {:+.6} fixed [{:+.6}, {:+.6}] sequence [{:+.6}, {:+.6}] {}",
            case.name,
            c.estimate.unwrap(),
            fixed_low,
            fixed_high,
            c.ci_low.unwrap(),
            c.ci_high.unwrap(),
            c.verdict.as_str()
        );
    }

    let mut worst_log_bf: f64 = 0.0;
    for ((counts, weights), py) in srm.iter().zip(reference["srm"].as_array().unwrap()) {
        let shares = normalise_shares(weights).unwrap();
        let chi2 = chi_square_p_value(counts, &shares);
        worst = worst.max(agree(
            &format!("chi2 p {counts:?}"),
            chi2,
            &py["chi2_p_value"],
        ));
        let expected = py["chi2_p_value"].as_f64().unwrap();
        if expected > 1e-300 {
            // Tiny p-values keep their relative accuracy too.
            assert!(
                ((chi2 - expected) / expected).abs() <= TOLERANCE,
                "chi2 p {counts:?}: {chi2:e} vs {expected:e}"
            );
        }
        // ln BF sums ln Γ terms of size ~(k + n)·ln(k + n) ≈ 1e6 whose difference is
        // small, so double precision allows ~1e-9 relative to those terms; 1e-7 absolute.
        let log_bf = log_bayes_factor(counts, &shares, DEFAULT_CONCENTRATION);
        let py_log_bf = py["log_bayes_factor"].as_f64().unwrap();
        worst_log_bf = worst_log_bf.max((log_bf - py_log_bf).abs());
        assert!(
            (log_bf - py_log_bf).abs() < 1e-7,
            "ln BF {counts:?}: {log_bf} vs {py_log_bf}"
        );
        let report = SrmMonitor::new(weights).unwrap().observe(counts).unwrap();
        assert_eq!(report.chi2_p_value, chi2);
        println!(
            "SRM {counts:?} vs {weights:?}: anytime p {:.3e} (ln BF {log_bf:.4}), chi-square p {chi2:.3e}",
            report.p_value
        );
    }
    println!(
        "largest scaled discrepancy {worst:.1e}; largest ln BF discrepancy {worst_log_bf:.1e}"
    );
}

/// Raw observations of one arm and metric: (user bucket, value).
#[derive(Default)]
struct Raw {
    buckets: Vec<usize>,
    values: Vec<f64>,
}

impl Raw {
    fn push(&mut self, bucket: usize, value: f64) {
        self.buckets.push(bucket);
        self.values.push(value);
    }

    fn sums(&self) -> BucketSums {
        let mut sums = BucketSums::new();
        for (&b, &x) in self.buckets.iter().zip(&self.values) {
            sums.push(b, x);
        }
        sums
    }

    fn json(&self) -> Value {
        json!({"buckets": self.buckets, "values": self.values})
    }
}

struct UserCase {
    name: String,
    metric: Metric,
    arm: Raw,
    control: Raw,
}

/// Every metric of `requests` requests of generated traffic, candidate on `share`.
fn traffic_cases(
    rng: &mut SmallRng,
    traffic: Traffic,
    share: f64,
    requests: usize,
) -> Vec<UserCase> {
    let mut experiment = Experiment::new(rng, traffic, share);
    let mut raw: [[Raw; 5]; 2] = Default::default();
    for _ in 0..requests {
        let r = experiment.request(rng);
        let arm = &mut raw[usize::from(r.candidate)];
        arm[0].push(r.bucket, f64::from(u8::from(r.error)));
        arm[1].push(r.bucket, r.latency);
        if let Some(x) = r.abs_error {
            arm[2].push(r.bucket, x);
        }
        if let Some(x) = r.rating {
            arm[3].push(r.bucket, x);
        }
        if let Some(a) = r.accurate {
            arm[4].push(r.bucket, f64::from(u8::from(a)));
        }
    }
    let [control, arm] = raw;
    control
        .into_iter()
        .zip(arm)
        .zip(Metric::ALL)
        .map(|((control, arm), metric)| UserCase {
            name: format!("{} {share} {metric}", traffic.name),
            metric,
            arm,
            control,
        })
        .collect()
}

fn user_cases(rng: &mut SmallRng) -> Vec<UserCase> {
    let mut cases = traffic_cases(rng, Traffic::HEAVY, 0.1, 30_000);
    cases.extend(traffic_cases(rng, Traffic::MODERATE, 0.5, 8_000));
    // Twelve users: few buckets, few degrees of freedom.
    let few = Traffic {
        users: 12,
        ..Traffic::HEAVY
    };
    cases.extend(traffic_cases(rng, few, 0.5, 3_000).into_iter().take(2));
    // A candidate without a single error yet: the floor.
    let mut arm = Raw::default();
    let mut control = Raw::default();
    for i in 0..300 {
        arm.push((i * 37) % 128, 0.0);
    }
    for i in 0..2700 {
        control.push((i * 11) % 128, f64::from(u8::from(i % 97 == 0)));
    }
    cases.push(UserCase {
        name: "no errors yet".into(),
        metric: Metric::ErrorRate,
        arm,
        control,
    });
    cases
}

/// `|rust − python| ≤ TOLERANCE · scale`; returns the discrepancy over the scale.
fn agree_scaled(what: &str, rust: f64, python: &Value, scale: f64) -> f64 {
    let python = python
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: Python gave {python}"));
    let scaled = (rust - python).abs() / scale;
    assert!(
        scaled <= TOLERANCE,
        "{what}: Rust {rust:e} vs SciPy {python:e} (scale {scale:e})"
    );
    scaled
}

fn agree_estimate(what: &str, e: &RatioEstimate, py: &Value) -> f64 {
    assert_eq!(json!(e.n), py["n"], "{what}.n");
    assert_eq!(json!(e.buckets), py["buckets"], "{what}.buckets");
    let mut worst: f64 = 0.0;
    for (field, rust) in [
        ("mean", e.mean),
        ("delta_variance", e.delta_variance.unwrap()),
        ("jackknife_variance", e.jackknife_variance.unwrap()),
        ("unit_variance", e.unit_variance.unwrap()),
        ("effective_buckets", e.effective_buckets),
    ] {
        // Relative agreement (variances are tiny numbers; an absolute 1e-9 would say
        // nothing about them).
        let scale = py[field].as_f64().unwrap().abs().max(1e-300);
        worst = worst.max(agree_scaled(
            &format!("{what}.{field}"),
            rust,
            &py[field],
            scale,
        ));
    }
    worst
}

#[test]
#[ignore = "needs python3 with numpy and scipy (installed by .ci/run)"]
fn by_user_estimates_and_intervals_agree_with_scipy() {
    let mut rng = SmallRng::seed_from_u64(0xB0C4);
    let cases = user_cases(&mut rng);
    let family_k = Metric::ALL.len();
    let input = json!({
        "alpha": DEFAULT_ALPHA,
        "tuning_n": DEFAULT_TUNING_N,
        "family_k": family_k,
        "by_user": cases
            .iter()
            .map(|c| {
                let proportion = matches!(c.metric, Metric::ErrorRate | Metric::AccurateShare);
                json!({"name": c.name, "proportion": proportion, "arm": c.arm.json(), "control": c.control.json()})
            })
            .collect::<Vec<_>>(),
    });
    let reference = run_reference(&input);
    println!("reference: {}", reference["versions"]);
    let config = UserCompareConfig::default();
    let family = family_config(&config, family_k);
    let mut worst: f64 = 0.0;
    for (case, py) in cases.iter().zip(reference["by_user"].as_array().unwrap()) {
        assert_eq!(py["name"], case.name.as_str());
        let (arm, control) = (case.arm.sums(), case.control.sums());
        let c = compare_users(case.metric, &arm, &control, &config);
        let f = compare_users(case.metric, &arm, &control, &family);
        let (ea, ec) = (c.arm.unwrap(), c.control.unwrap());
        worst = worst.max(agree_estimate(
            &format!("{}.arm", case.name),
            &ea,
            &py["arm"],
        ));
        worst = worst.max(agree_estimate(
            &format!("{}.control", case.name),
            &ec,
            &py["control"],
        ));
        let i = c.interval.unwrap();
        let fi = f.interval.unwrap();
        assert_eq!(json!(i.floored_arm), py["floored_arm"], "{}", case.name);
        assert_eq!(
            json!(i.floored_control),
            py["floored_control"],
            "{}",
            case.name
        );
        let se = i.std_error;
        for (field, rust, scale) in [
            ("estimate", i.estimate, se),
            ("std_error", se, se),
            ("delta_std_error", i.delta_std_error, i.delta_std_error),
            ("effective_n", i.effective_n, i.effective_n),
            (
                "degrees_of_freedom",
                i.degrees_of_freedom,
                i.degrees_of_freedom,
            ),
            ("multiplier", i.multiplier, i.multiplier),
            ("ci_low", i.ci_low, se),
            ("ci_high", i.ci_high, se),
            ("fixed_low", i.fixed_low, se),
            ("fixed_high", i.fixed_high, se),
            ("family_ci_low", fi.ci_low, se),
            ("family_ci_high", fi.ci_high, se),
        ] {
            let what = format!("{}.{field}", case.name);
            worst = worst.max(agree_scaled(&what, rust, &py[field], scale));
        }
        println!(
            "{:>32}: estimate {:+.6} SE {:.3e} (delta {:.3e}, jackknife/delta variance arm {:.2} control {:.2}, design effect arm {:.1}) df {:.1} sequence [{:+.6}, {:+.6}] {}",
            case.name,
            i.estimate,
            se,
            i.delta_std_error,
            ea.jackknife_variance.unwrap() / ea.delta_variance.unwrap(),
            ec.jackknife_variance.unwrap() / ec.delta_variance.unwrap(),
            ea.design_effect().unwrap_or(f64::NAN),
            i.degrees_of_freedom,
            i.ci_low,
            i.ci_high,
            c.comparison.verdict.as_str()
        );
    }
    println!("by user: largest discrepancy {worst:.1e} of the scale (SE for interval ends, the value itself otherwise)");
}
