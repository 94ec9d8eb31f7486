//! The experiment analysis by user, over real processes: two arms serving the *same*
//! model at 90/10 under heavy users (a few users send most requests, each with their
//! own batch size and feedback habits) reach no false verdict at the family level,
//! while a candidate 2 points worse on errors under the same traffic is `worse`;
//! overrides stay out of the comparisons and SRM; feedback on a prediction of an
//! earlier phase is not counted in the current one, so ratings that arrive after a
//! guardrail's rollback do not trip it again.

mod support;

use abgate_common::client::HttpClient;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// A model server named `variant` serving the `best_model` model (both arms of an A/A
/// test answer the same predictions).
struct SameModelArm {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl SameModelArm {
    async fn start(variant: &str) -> SameModelArm {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let port = free_port();
        let config: PathBuf = dir.path().join(format!("{variant}.toml"));
        std::fs::write(
            &config,
            format!(
                "variant = \"{variant}\"\nlisten = \"127.0.0.1:{port}\"\nmodel_dir = \"{}\"\nshutdown_grace_ms = 1000\n",
                repo().join("models/best_model").display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(abgate())
            .args(["model-server", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://127.0.0.1:{port}");
        wait_ok(&format!("{url}/api/health"), Duration::from_secs(30)).await;
        SameModelArm {
            url,
            child,
            _dir: dir,
        }
    }
}

impl Drop for SameModelArm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// xorshift64*: a seeded, dependency-free source of uniforms.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

async fn experiment(c: &HttpClient, url: &str) -> Value {
    c.get(&format!("{url}/api/experiment"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
}

fn arm<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["arms"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["variant"] == name))
        .unwrap_or_else(|| panic!("no arm {name} in {view}"))
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

/// One planned request: the user, their batch size, and the feedback to send on the
/// first prediction (`None`: none).
#[derive(Clone)]
struct Planned {
    user: usize,
    batch: usize,
    feedback: Option<Feedback>,
}

#[derive(Clone)]
enum Feedback {
    Rating(u8),
    Judgement(&'static str, Option<f64>),
}

/// A heavy-user population: 1000 users with Zipf(1) activity, each with a batch size
/// (1–6 rows: latency differs by user), a rating bias, an accuracy habit and an error
/// scale for `actual`; feedback on 30% of requests (¼ ratings, ¾ judgements, ⅓ of
/// those with `actual`).
fn plan(requests: usize, seed: u64) -> Vec<Planned> {
    const USERS: usize = 1000;
    let mut rng = Rng(seed);
    let weights: Vec<f64> = (1..=USERS).map(|r| 1.0 / r as f64).collect();
    let total: f64 = weights.iter().sum();
    let traits: Vec<(usize, f64, f64, f64)> = (0..USERS)
        .map(|_| {
            let batch = 1 + (rng.next() * 6.0) as usize;
            let bias = 0.8 * rng.normal();
            let accurate = 0.1 + 0.8 * rng.next();
            let scale = (0.6f64.ln() + 0.5 * rng.normal()).exp();
            (batch, bias, accurate, scale)
        })
        .collect();
    (0..requests)
        .map(|_| {
            let mut x = rng.next() * total;
            let user = weights
                .iter()
                .position(|w| {
                    x -= w;
                    x < 0.0
                })
                .unwrap_or(USERS - 1);
            let (batch, bias, accurate, scale) = traits[user];
            let feedback = (rng.next() < 0.3).then(|| {
                if rng.next() < 0.25 {
                    let r = (3.2 + bias + rng.normal()).round().clamp(1.0, 5.0);
                    Feedback::Rating(r as u8)
                } else {
                    let kind = if rng.next() < accurate {
                        "accurate"
                    } else if rng.next() < 0.5 {
                        "too_high"
                    } else {
                        "too_low"
                    };
                    // `actual` relative to the prediction, filled in once it is known.
                    let offset = (rng.next() < 1.0 / 3.0).then(|| scale * rng.normal());
                    Feedback::Judgement(kind, offset)
                }
            });
            Planned {
                user,
                batch,
                feedback,
            }
        })
        .collect()
}

/// Sends `planned` over `workers` connections; returns how many answers were 200.
async fn send(url: &str, planned: Vec<Planned>, workers: usize) -> usize {
    let planned = Arc::new(planned);
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (url, planned) = (url.to_string(), Arc::clone(&planned));
            tokio::spawn(async move {
                let c = client();
                let mut ok = 0;
                for p in planned.iter().skip(w).step_by(workers) {
                    let user = format!("heavy-{}", p.user);
                    let rows = vec![FEATURES; p.batch].join(", ");
                    let Ok(r) = c
                        .post_json(
                            &format!("{url}/predict"),
                            &[("x-user-id", &user)],
                            format!("{{\"instances\": [{rows}]}}"),
                        )
                        .await
                    else {
                        continue;
                    };
                    if r.status.as_u16() != 200 {
                        continue;
                    }
                    ok += 1;
                    let answer = r.json();
                    let id = answer["prediction_ids"][0].as_str().unwrap_or("").to_string();
                    let prediction = answer["predictions"][0].as_f64().unwrap_or(5.5);
                    let body = match &p.feedback {
                        None => continue,
                        Some(Feedback::Rating(r)) => format!(
                            "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": {r}}}"
                        ),
                        Some(Feedback::Judgement(kind, offset)) => match offset {
                            Some(o) => format!(
                                "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"{kind}\", \"actual\": {}}}",
                                (prediction + o).clamp(3.0, 8.0)
                            ),
                            None => format!(
                                "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"{kind}\"}}"
                            ),
                        },
                    };
                    let fb = c
                        .post_json(&format!("{url}/feedback"), &[("x-user-id", &user)], body)
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(fb.status.as_u16(), 200, "{}", fb.text());
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap_or(0);
    }
    ok
}

/// Heavy-user traffic (`requests`, seeded) through a 90/10 router to `control` and
/// `candidate`; returns the experiment view and `abgate report`'s exit status.
async fn heavy_run(control: &str, candidate: &str, requests: usize) -> (Value, Option<i32>) {
    let arms = [
        ("best_model", control, 90.0),
        ("candidate_model", candidate, 10.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "")).await;
    let planned = plan(requests, 0x5EED_0020);
    let n = planned.len();
    let answered = send(&router.url, planned, 8).await;
    assert!(answered * 100 >= n * 97, "{answered} of {n}");
    let c = client();
    let view = experiment(&c, &router.url).await;
    assert_eq!(view["unit"], "user");
    let (best_view, candidate_view) = (arm(&view, "best_model"), arm(&view, "candidate_model"));
    eprintln!(
        "requests {} / {}, users {} / {}, feedback {} / {}",
        best_view["requests"]["n"],
        candidate_view["requests"]["n"],
        best_view["users"]["n"],
        candidate_view["users"]["n"],
        best_view["feedback"]["n"],
        candidate_view["feedback"]["n"]
    );
    assert_eq!(
        u(&best_view["requests"]["n"]) + u(&candidate_view["requests"]["n"]),
        n as u64
    );
    for c in view["comparisons"].as_array().cloned().unwrap_or_default() {
        eprintln!(
            "{:<22} {:+.5} [{:+.5}, {:+.5}] n {} buckets {}/{} verdict {} family {}",
            c["metric"].as_str().unwrap_or(""),
            c["estimate"].as_f64().unwrap_or(f64::NAN),
            c["ci_low"].as_f64().unwrap_or(f64::NAN),
            c["ci_high"].as_f64().unwrap_or(f64::NAN),
            c["n"],
            c["buckets_arm"],
            c["buckets_control"],
            c["verdict"],
            c["family_verdict"]
        );
        // Enough data to decide on every metric: the test could fail.
        assert_ne!(c["verdict"], "not_enough_data", "{c}");
    }
    let out = Command::new(abgate())
        .args(["report", "--url", &router.url])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    router.stop().await;
    (view, out.status.code())
}

fn family_verdict(view: &Value, metric: &str) -> String {
    view["comparisons"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["metric"] == metric))
        .and_then(|c| c["family_verdict"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aa_test_with_heavy_users_at_90_10_reaches_no_false_verdict() {
    // Both arms are the same model server process, so that even latency is the same
    // distribution for both (two processes at 90/10 differ: the idle one wakes up
    // slower, a real difference of tens of microseconds that a long run does detect).
    let shared = SameModelArm::start("best_model").await;
    let (view, exit) = heavy_run(&shared.url, &shared.url, 30_000).await;
    for metric in [
        "error_rate",
        "latency_mean_seconds",
        "absolute_error",
        "rating",
        "accurate_share",
    ] {
        let family = family_verdict(&view, metric);
        assert_eq!(family, "no_difference_yet", "a false verdict on {metric}");
    }
    assert_eq!(view["family"]["any_worse"], false);
    assert_eq!(view["srm"]["alarm"], false, "{}", view["srm"]);
    assert_eq!(u(&arm(&view, "candidate_model")["crossover"]["n"]), 0);
    // `abgate report` agrees: exit status 0.
    assert_eq!(exit, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_2_points_worse_under_the_same_heavy_traffic_is_worse() {
    let shared = SameModelArm::start("best_model").await;
    // The same model behind a proxy that fails 1 request in 50 (2 points). Four times
    // the A/A test's traffic: the heavy users leave few effective buckets, and the
    // verdict is at the family's level (α / 5). At 60,000 requests the family verdict
    // was measured borderline (95% interval [+0.5, +3.5] points, family not yet), so
    // whether it showed depended on which requests the proxy failed.
    let flaky = FaultyFront::start(&shared.url).await;
    flaky.fail_every(50);
    let (view, exit) = heavy_run(&shared.url, &flaky.url, 120_000).await;
    assert_eq!(family_verdict(&view, "error_rate"), "worse");
    assert_eq!(view["family"]["any_worse"], true);
    for metric in ["absolute_error", "rating", "accurate_share"] {
        assert_eq!(
            family_verdict(&view, metric),
            "no_difference_yet",
            "{metric}"
        );
    }
    assert_eq!(exit, Some(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_stay_out_of_comparisons_and_srm() {
    let (best, candidate) = tokio::join!(
        SameModelArm::start("best_model"),
        SameModelArm::start("candidate_model")
    );
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "[override]\nenabled = true\n")).await;
    let c = client();
    for i in 0..300 {
        let r = router.predict(&c, &format!("sticky-{i}")).await;
        assert_eq!(r.status.as_u16(), 200);
    }
    let before = experiment(&c, &router.url).await;
    // Users forced onto the candidate with X-Variant, with feedback: none of it counts.
    for i in 0..200 {
        let user = format!("forced-{i}");
        let r = c
            .post_json(
                &format!("{}/predict", router.url),
                &[("x-user-id", &user), ("x-variant", "candidate_model")],
                predict_body(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.header("x-variant"), Some("candidate_model"));
        let id = r.json()["prediction_id"].as_str().unwrap_or("").to_string();
        let fb = c
            .post_json(
                &format!("{}/feedback", router.url),
                &[("x-user-id", &user)],
                format!(
                    "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": 1}}"
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fb.status.as_u16(), 200, "{}", fb.text());
        assert_eq!(fb.json()["overridden"], true);
    }
    let after = experiment(&c, &router.url).await;
    assert_eq!(after["srm"]["observed"], before["srm"]["observed"]);
    assert_eq!(
        u(&arm(&after, "best_model")["users"]["n"])
            + u(&arm(&after, "candidate_model")["users"]["n"]),
        300
    );
    for name in ["best_model", "candidate_model"] {
        assert_eq!(
            arm(&after, name)["requests"],
            arm(&before, name)["requests"]
        );
        assert_eq!(arm(&after, name)["feedback"]["n"], 0);
    }
    assert_eq!(u(&arm(&after, "candidate_model")["excluded"]), 200);
    assert_eq!(after["comparisons"], before["comparisons"]);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_on_a_prediction_of_an_earlier_phase_is_not_counted() {
    let (best, candidate) = tokio::join!(
        SameModelArm::start("best_model"),
        SameModelArm::start("candidate_model")
    );
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let router = RouterHandle::start(&router_toml(&arms, "", "")).await;
    let c = client();
    let predict = |phase: u32| {
        let (c, router_url) = (c.clone(), router.url.clone());
        async move {
            let mut made = Vec::new();
            for i in 0..100 {
                let user = format!("p{phase}-{i}");
                let r = c
                    .post_json(
                        &format!("{router_url}/predict"),
                        &[("x-user-id", &user)],
                        predict_body(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r.status.as_u16(), 200);
                made.push((
                    user,
                    r.json()["prediction_id"].as_str().unwrap_or("").to_string(),
                ));
            }
            made
        }
    };
    let feedback = |made: Vec<(String, String)>| {
        let (c, router_url) = (c.clone(), router.url.clone());
        async move {
            for (user, id) in made {
                let fb = c
                    .post_json(
                        &format!("{router_url}/feedback"),
                        &[("x-user-id", &user)],
                        format!("{{\"prediction_id\": \"{id}\", \"feedback_type\": \"too_low\"}}"),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(fb.status.as_u16(), 200, "{}", fb.text());
                assert!(fb.json()["predicted_at"].as_f64().unwrap_or(0.0) > 1e9);
            }
        }
    };
    let old = predict(1).await;
    let phase1 = experiment(&c, &router.url).await;
    // A weight change starts phase 2 (another phase_id); then the old feedback arrives.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let text = router_toml(
        &[
            ("best_model", best.url.as_str(), 60.0),
            ("candidate_model", candidate.url.as_str(), 40.0),
        ],
        "",
        "",
    );
    router.rewrite(&text);
    router.wait_for_version(2, "the new weights").await;
    let phase2 = experiment(&c, &router.url).await;
    assert_eq!(phase2["phase"], 2);
    assert_ne!(phase2["phase_id"], phase1["phase_id"]);
    assert_eq!(phase2["phase_id"].as_str().map(str::len), Some(16));
    feedback(old).await;
    let view = experiment(&c, &router.url).await;
    for name in ["best_model", "candidate_model"] {
        assert_eq!(arm(&view, name)["feedback"]["n"], 0, "{view}");
        assert_eq!(arm(&view, name)["accurate_share"]["n"], 0);
    }
    assert_eq!(view["feedback_outside_phase"]["late"], 100);
    let metrics = router.metrics(&c).await;
    assert_eq!(
        metric(
            &metrics,
            "abgate_experiment_feedback_outside_phase_total",
            &[("reason", "late")]
        ),
        100.0
    );
    assert_eq!(
        metric(
            &metrics,
            "abgate_experiment_phase_info",
            &[("phase_id", view["phase_id"].as_str().unwrap_or(""))]
        ),
        2.0
    );
    // Feedback on this phase's predictions counts, under each user's assigned arm.
    let new = predict(2).await;
    feedback(new).await;
    let view = experiment(&c, &router.url).await;
    let counted: u64 = ["best_model", "candidate_model"]
        .iter()
        .map(|name| {
            let a = arm(&view, name);
            assert_eq!(a["feedback"]["n"], a["requests"]["n"], "{a}");
            u(&a["feedback"]["too_low"])
        })
        .sum();
    assert_eq!(counted, 100);
    assert_eq!(view["feedback_outside_phase"]["late"], 100);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_feedback_after_a_rollback_does_not_trip_the_guardrail_again() {
    let (best, candidate) = tokio::join!(
        SameModelArm::start("best_model"),
        SameModelArm::start("candidate_model")
    );
    let arms = [
        ("best_model", best.url.as_str(), 50.0),
        ("candidate_model", candidate.url.as_str(), 50.0),
    ];
    let guardrail = "[[guardrails]]\nname = \"candidate_rating\"\nmetric = \"rating\"\narm = \"candidate_model\"\nmax_degradation = 0.5\naction = \"rollback\"\n";
    let router = RouterHandle::start(&router_toml(&arms, "", guardrail)).await;
    let c = client();
    // 800 users, one prediction each; the candidate's users rate it 1-2, the
    // control's 4-5. Half of the candidate's ratings are held back (they arrive late).
    let mut rng = Rng(0x1A7E_F33D);
    let mut held = Vec::new();
    for i in 0..800 {
        let user = format!("late-{i}");
        let r = router.predict(&c, &user).await;
        assert_eq!(r.status.as_u16(), 200);
        let served = r.header("x-variant").unwrap_or("").to_string();
        let id = r.json()["prediction_id"].as_str().unwrap_or("").to_string();
        let rating = if served == "candidate_model" {
            1 + (rng.next() * 2.0) as u8
        } else {
            4 + (rng.next() * 2.0) as u8
        };
        let body = format!(
            "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": {rating}}}"
        );
        if served == "candidate_model" && i % 2 == 0 {
            held.push((user, body));
            continue;
        }
        let fb = c
            .post_json(
                &format!("{}/feedback", router.url),
                &[("x-user-id", &user)],
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fb.status.as_u16(), 200, "{}", fb.text());
    }
    // The guardrail trips (it is evaluated every second) and rolls the candidate back.
    eventually(
        "the rating guardrail trips",
        Duration::from_secs(30),
        || {
            let (c, url) = (c.clone(), router.url.clone());
            async move { experiment(&c, &url).await["phase"] == 2 }
        },
    )
    .await;
    let view = experiment(&c, &router.url).await;
    assert_eq!(
        view["guardrails"][0]["trips_total"], 1,
        "{}",
        view["guardrails"]
    );
    let trip = &view["guardrails"][0]["last_trip"];
    assert_eq!(trip["phase"], 1);
    assert_eq!(trip["phase_id"], view["history"][0]["phase_id"], "{trip}");
    assert_ne!(trip["phase_id"], view["phase_id"]);
    // The held-back ratings arrive now, with new traffic on the control.
    let late = held.len();
    assert!(late > 100, "{late}");
    for (user, body) in held {
        let fb = c
            .post_json(
                &format!("{}/feedback", router.url),
                &[("x-user-id", &user)],
                body,
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fb.status.as_u16(), 200, "{}", fb.text());
    }
    for i in 0..200 {
        let user = format!("after-{i}");
        let r = router.predict(&c, &user).await;
        let id = r.json()["prediction_id"].as_str().unwrap_or("").to_string();
        let fb = c
            .post_json(
                &format!("{}/feedback", router.url),
                &[("x-user-id", &user)],
                format!(
                    "{{\"prediction_id\": \"{id}\", \"feedback_type\": \"rating\", \"rating\": 5}}"
                ),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fb.status.as_u16(), 200);
    }
    // Two more ticks of the guardrail: no second trip, the late ratings counted as late.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let view = experiment(&c, &router.url).await;
    assert_eq!(view["phase"], 2);
    assert_eq!(
        view["guardrails"][0]["trips_total"], 1,
        "{}",
        view["guardrails"]
    );
    // Every held-back rating is late (and so is any control rating of a phase-1
    // prediction that arrived after the trip, which on a slow machine can happen while
    // the first 800 users are still being served).
    assert!(
        u(&view["feedback_outside_phase"]["late"]) >= late as u64,
        "{}",
        view["feedback_outside_phase"]
    );
    assert_eq!(arm(&view, "candidate_model")["rating"]["n"], 0);
    // The 200 ratings of phase 2, and those of control users served after the trip.
    assert!(u(&arm(&view, "best_model")["rating"]["n"]) >= 200);
    let audit = std::fs::read_to_string(router.file.with_file_name("abgate-audit.jsonl"))
        .unwrap_or_default();
    assert_eq!(audit.lines().count(), 1, "{audit}");
    router.stop().await;
}
