//! The progressive rollout end to end, over real model servers and a router serving
//! a real config file, with short holds: a healthy candidate goes 1 → 5 → 25 → 50 →
//! 100% and is promoted while no user ever moves from the candidate back to the
//! control; a candidate failing 2% of requests is rolled back at its first step and
//! the users exposed are reported; the control routes need the admin token; a
//! restart mid-ramp resumes the same step; traffic whose users do not match the
//! weights (an SRM alarm) holds the ramp on its step.

mod support;

use abgate_common::client::HttpClient;
use abgate_router::{Router, RouterConfig};
use http::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const TOKEN: &str = "rollout-test-token";

/// A router serving `file` in-process on port 0 (the file and its rollout state stay
/// where they are, so another one can be started on them: a restart).
struct Served {
    url: String,
    router: Arc<Router>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    async fn start(file: &Path) -> Served {
        let config = RouterConfig::load(file).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let router = Router::new(config, abgate_router::state::config_hash(&text))
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&router);
        let done = tokio::spawn(async move {
            abgate_router::serve(served, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        let s = Served {
            url,
            router,
            stop: Some(stop),
            done: Some(done),
        };
        let c = HttpClient::new(Duration::from_secs(2));
        eventually("router answers", Duration::from_secs(10), || {
            let (c, u) = (c.clone(), format!("{}/api/config", s.url));
            async move { c.get(&u).await.is_ok() }
        })
        .await;
        s
    }

    async fn rollout(&self, c: &HttpClient) -> Value {
        c.get(&format!("{}/api/rollout", self.url))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), d).await;
        }
        drop(self.router);
    }
}

/// Returning users: `workers` tasks, each owning the users `w, w + workers, …` below
/// `pool` and sending their requests one at a time (so a user's answers arrive in
/// order), until stopped. Records each user's assigned arms in order.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<(u64, String, u16)>>>,
}

impl Load {
    fn start(url: &str, pool: u64, workers: u64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..workers)
            .map(|w| {
                let (url, stop) = (url.to_string(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let c = client();
                    let mut seen = Vec::new();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let user = format!("user-{i}");
                        if let Ok(r) = c
                            .post_json(
                                &format!("{url}/predict"),
                                &[("x-user-id", &user)],
                                predict_body(),
                            )
                            .await
                        {
                            let arm = r
                                .header("x-assigned-variant")
                                .or_else(|| r.header("x-variant"))
                                .unwrap_or("")
                                .to_string();
                            seen.push((i, arm, r.status.as_u16()));
                        }
                        i += workers;
                        if i >= pool {
                            i = w;
                        }
                    }
                    seen
                })
            })
            .collect();
        Load { stop, tasks }
    }

    /// Stops and returns each user's assigned arms, in order, and the request count.
    async fn stop(self) -> (HashMap<u64, Vec<String>>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let mut by_user: HashMap<u64, Vec<String>> = HashMap::new();
        let mut n = 0;
        for t in self.tasks {
            for (user, arm, _) in t.await.unwrap_or_default() {
                n += 1;
                by_user.entry(user).or_default().push(arm);
            }
        }
        (by_user, n)
    }
}

/// Every user seen: once on the candidate, never on the control again.
fn assert_no_user_moves_back(by_user: &HashMap<u64, Vec<String>>) -> (usize, usize) {
    let mut on_candidate = 0;
    for (user, arms) in by_user {
        if let Some(first) = arms.iter().position(|a| a == "candidate_model") {
            on_candidate += 1;
            assert!(
                arms[first..].iter().all(|a| a == "candidate_model"),
                "user-{user} moved back from the candidate: {arms:?}"
            );
        }
    }
    (by_user.len(), on_candidate)
}

fn config_text(control: &str, candidate: &str, steps: &str, max_degradation: f64) -> String {
    let arms = [
        ("best_model", control, 100.0),
        ("candidate_model", candidate, 0.0),
    ];
    let tables = format!(
        "[[guardrails]]\nname = \"candidate_errors\"\nmetric = \"error_rate\"\narm = \"candidate_model\"\nmax_degradation = {max_degradation}\naction = \"rollback\"\n\
         [[guardrails]]\nname = \"candidate_latency\"\nmetric = \"latency_mean_seconds\"\narm = \"candidate_model\"\nmax_degradation = 0.05\naction = \"alert\"\n\
         [rollout]\narm = \"candidate_model\"\nsteps = {steps}\nmin_step_seconds = 1\nmin_users_per_step = 20\n\
         [admin]\ntoken = \"{TOKEN}\"\n"
    );
    router_toml(&arms, "", &tables).replacen(
        "salt = \"wine-2026-11\"\n",
        "salt = \"wine-2026-11\"\nmin_samples = 20\n",
        1,
    )
}

fn close(v: &Value, want: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - want).abs() < 1e-6)
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let file = dir.join("router.toml");
    std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
    file
}

async fn wait_state(s: &Served, c: &HttpClient, state: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = s.rollout(c).await;
        if v["state"] == state {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "rollout not {state} within {within:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn history_line(t: &Value) -> String {
    format!(
        "{} -> {} at {}% ({} candidate users): {}",
        t["from"].as_str().unwrap_or(""),
        t["to"].as_str().unwrap_or(""),
        t["percent"],
        t["candidate_users"],
        t["reason"].as_str().unwrap_or("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_is_ramped_to_100_and_no_user_moves_back() {
    let (best, candidate) = tokio::join!(
        ArmProcess::start("best_model"),
        ArmProcess::start("candidate_model")
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = write_config(
        dir.path(),
        &config_text(&best.url, &candidate.url, "[1, 5, 25, 50, 100]", 0.01),
    );
    let started = Instant::now();
    let served = Served::start(&file).await;
    let c = client();
    let load = Load::start(&served.url, 4000, 12);
    let done = wait_state(&served, &c, "completed", Duration::from_secs(50)).await;
    let took = started.elapsed();
    let (by_user, requests) = load.stop().await;
    let (users, on_candidate) = assert_no_user_moves_back(&by_user);
    let history = done["history"].as_array().cloned().unwrap_or_default();
    let percents: Vec<f64> = history
        .iter()
        .map(|t| t["percent"].as_f64().unwrap_or(-1.0))
        .collect();
    assert_eq!(percents, [1.0, 5.0, 25.0, 50.0, 100.0], "{done:#}");
    // From the second step on, the latency gate's evidence carries the earlier steps.
    assert!(
        history[2]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("over 2 steps"),
        "{done:#}"
    );
    assert!(close(&done["percent"], 100.0), "{done:#}");
    // The file carries the promotion, comments and all.
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        text.contains("weight = 0\n") && text.contains("weight = 100\n"),
        "{text}"
    );
    let metrics = String::from_utf8_lossy(&served.router.metrics.common.encode()).into_owned();
    assert_eq!(
        metric(&metrics, "abgate_rollout_state", &[("state", "completed")]),
        1.0
    );
    assert_eq!(metric(&metrics, "abgate_rollout_step", &[]), 100.0);
    // The audit log has one line per transition.
    let audit = std::fs::read_to_string(dir.path().join("abgate-audit.jsonl")).unwrap_or_default();
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"event\":\"rollout\""))
            .count(),
        history.len()
    );
    println!(
        "healthy ramp: promoted in {:.1} s; {requests} requests from {users} users, {on_candidate} of them on the candidate, none moved back",
        took.as_secs_f64()
    );
    let t0 = history
        .first()
        .and_then(|t| t["time"].as_f64())
        .unwrap_or(0.0);
    for t in &history {
        println!(
            "  +{:5.1} s {}",
            t["time"].as_f64().unwrap_or(0.0) - t0,
            history_line(t)
        );
    }
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_two_points_worse_on_errors_is_rolled_back_at_its_first_step() {
    let (best, flaky) = tokio::join!(
        ArmProcess::start("best_model"),
        FlakyArm::start("candidate_model", 50)
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = write_config(
        dir.path(),
        &config_text(&best.url, &flaky.url, "[10, 25, 50, 100]", 0.005),
    );
    let served = Served::start(&file).await;
    let c = client();
    let started = Instant::now();
    let load = Load::start(&served.url, 20_000, 12);
    let done = wait_state(&served, &c, "rolled_back", Duration::from_secs(50)).await;
    let took = started.elapsed();
    let (by_user, requests) = load.stop().await;
    // The rollback moves the candidate's users back, by design: counted, not checked.
    let users = by_user.len();
    let on_candidate = by_user
        .values()
        .filter(|arms| arms.iter().any(|a| a == "candidate_model"))
        .count();
    let history = done["history"].as_array().cloned().unwrap_or_default();
    let last = history.last().cloned().unwrap_or(Value::Null);
    assert_eq!(done["step"], 0, "{done:#}");
    assert_eq!(last["to"], "rolled_back");
    let reason = last["reason"].as_str().unwrap_or("");
    assert!(reason.contains("rolled back at 10%"), "{reason}");
    assert!(
        reason.contains("error rate worse than the allowed +0.50 points"),
        "{reason}"
    );
    assert!(close(&done["percent"], 0.0), "{done:#}");
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        text.contains(&format!("url = \"{}\"\nweight = 0\n", flaky.url)),
        "{text}"
    );
    // External tools are told it failed.
    let answer = c
        .get(&format!(
            "{}/api/experiment/verdict?arm=candidate_model",
            served.url
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Compact JSON: what deploy/progressive's Flagger webhook greps for.
    assert!(
        answer.text().contains("\"verdict\":\"fail\""),
        "{}",
        answer.text()
    );
    let verdict = answer.json();
    assert_eq!(verdict["verdict"], "fail", "{verdict:#}");
    // `abgate report` says so, and exits 3 (attention) for a rolled-back rollout.
    let report = std::process::Command::new(abgate())
        .args(["report", "--url", &served.url])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&report.stdout);
    assert_eq!(report.status.code(), Some(3), "{text}");
    assert!(
        text.contains("candidate_model: ROLLED BACK at step 1"),
        "{text}"
    );
    assert!(
        text.contains("ATTENTION: the rollout of candidate_model was rolled back"),
        "{text}"
    );
    println!(
        "2-point-worse candidate: rolled back after {:.1} s at 10%; {requests} requests from {users} users; {on_candidate} users were ever assigned the candidate; {}",
        took.as_secs_f64(),
        history_line(&last)
    );
    served.stop().await;
}

/// Real model servers and a router ramping through 5, 50 and 100% (the config's
/// text changed by `tweak`), once it runs its first step.
struct FirstStep {
    _arms: (ArmProcess, ArmProcess),
    _dir: tempfile::TempDir,
    file: PathBuf,
    served: Served,
}

async fn on_first_step(tweak: impl Fn(String) -> String) -> FirstStep {
    let (best, candidate) = tokio::join!(
        ArmProcess::start("best_model"),
        ArmProcess::start("candidate_model")
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let text = tweak(config_text(&best.url, &candidate.url, "[5, 50, 100]", 0.01));
    let file = write_config(dir.path(), &text);
    let served = Served::start(&file).await;
    let running = wait_state(&served, &client(), "running", Duration::from_secs(10)).await;
    assert!(close(&running["percent"], 5.0), "{running:#}");
    FirstStep {
        _arms: (best, candidate),
        _dir: dir,
        file,
        served,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_routes_need_the_token_and_a_restart_resumes_the_same_step() {
    // Users can never be enough: the ramp stays on its first step.
    let first = on_first_step(|text| {
        text.replace("min_users_per_step = 20", "min_users_per_step = 1000000")
    })
    .await;
    let (file, served) = (first.file.clone(), first.served);
    let c = client();
    let post = |path: &'static str, auth: Option<String>| {
        let (c, url) = (c.clone(), served.url.clone());
        async move {
            let headers: Vec<(&str, String)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.post_json(&format!("{url}{path}"), &refs, String::new())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    // No token, a wrong one, the wrong scheme: 401, nothing changes.
    for auth in [
        None,
        Some("Bearer wrong-token-xx".to_string()),
        Some(format!("Basic {TOKEN}")),
    ] {
        let r = post("/api/rollout/pause", auth).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.json()["error"]["type"], "unauthorized");
        assert!(r.header("www-authenticate").is_some());
    }
    assert_eq!(served.rollout(&c).await["state"], "running");
    let bearer = Some(format!("Bearer {TOKEN}"));
    let r = post("/api/rollout/pause", bearer.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["state"], "paused");
    let r = post("/api/rollout/pause", bearer.clone()).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = post("/api/rollout/resume", bearer.clone()).await;
    assert_eq!(r.json()["state"], "running");
    let view = served.rollout(&c).await;
    let waiting = view["waiting_for"].to_string();
    assert!(waiting.contains("candidate users"), "{waiting}");
    println!("waiting_for: {waiting}\nevidence: {}", view["evidence"]);
    // A restart: the same step, from the file and the state file.
    served.stop().await;
    let served = Served::start(&file).await;
    let v = served.rollout(&c).await;
    assert_eq!(
        (v["state"].as_str(), v["step"].as_u64()),
        (Some("running"), Some(0)),
        "{v:#}"
    );
    assert!(close(&v["percent"], 5.0), "{v:#}");
    assert_eq!(v["history"].as_array().map(Vec::len), Some(3));
    // Abort needs the token too, and rolls back.
    let post = |path: &'static str, auth: Option<String>| {
        let (c, url) = (c.clone(), served.url.clone());
        async move {
            let headers: Vec<(&str, String)> =
                auth.map(|a| vec![("authorization", a)]).unwrap_or_default();
            let refs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            c.post_json(&format!("{url}{path}"), &refs, String::new())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    assert_eq!(
        post("/api/rollout/abort", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let r = post("/api/rollout/abort", bearer).await;
    assert_eq!(r.json()["state"], "rolled_back", "{}", r.text());
    assert!(close(&served.rollout(&c).await["percent"], 0.0));
    served.stop().await;
    // Without a token configured, the control routes are off (403).
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{e}"))
        .replace(&format!("[admin]\ntoken = \"{TOKEN}\"\n"), "");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let served = Served::start(&write_config(dir.path(), &text)).await;
    let r = post_to(&c, &served.url, "/api/rollout/pause", TOKEN).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["type"], "admin_forbidden");
    served.stop().await;
}

async fn post_to(
    c: &HttpClient,
    url: &str,
    path: &str,
    token: &str,
) -> abgate_common::client::Reply {
    c.post_json(
        &format!("{url}{path}"),
        &[("authorization", &format!("Bearer {token}"))],
        String::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srm_alarm_holds_the_ramp_on_its_step() {
    // A hold long enough for the alarm to come first; every other condition is met
    // soon after it (healthy arms, 20 users a step).
    let first =
        on_first_step(|text| text.replace("min_step_seconds = 1\n", "min_step_seconds = 6\n"))
            .await;
    let served = first.served;
    let c = client();
    // Traffic that does not match the weights (a client, a bot filter or a cache
    // that drops most of one arm's users): every user the hash puts on the control,
    // one in five of the candidate's; so the candidate has about 1% of the users
    // where the weights say 5%. Each user sends one request.
    let split =
        abgate_router::assignment::Split::new(&[95.0, 5.0]).unwrap_or_else(|| panic!("a split"));
    let mut on_candidate = 0u64;
    let users: Vec<String> = (0..40_000u64)
        .map(|i| format!("srm-user-{i}"))
        .filter(|key| {
            let arm = split.pick(abgate_router::assignment::position("wine-2026-11", key));
            on_candidate += u64::from(arm == 1);
            arm == 0 || on_candidate % 5 == 1
        })
        .collect();
    let candidate_share = users
        .iter()
        .filter(|k| split.pick(abgate_router::assignment::position("wine-2026-11", k)) == 1)
        .count() as f64
        / users.len() as f64;
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let users = Arc::new(users);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (stop, next, users, url) = (
                Arc::clone(&stop),
                Arc::clone(&next),
                Arc::clone(&users),
                served.url.clone(),
            );
            tokio::spawn(async move {
                let c = client();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(user) = users.get(i % users.len()) else {
                        break;
                    };
                    let _ = c
                        .post_json(
                            &format!("{url}/predict"),
                            &[("x-user-id", user)],
                            predict_body(),
                        )
                        .await;
                }
            })
        })
        .collect();
    // Until the hold has passed twice over: still on the first step, held by SRM.
    let deadline = Instant::now() + Duration::from_secs(60);
    let view = loop {
        let v = served.rollout(&c).await;
        assert_eq!(v["state"], "running", "{v:#}");
        assert_eq!(v["step"], 0, "the ramp advanced despite SRM: {v:#}");
        if v["seconds_in_step"].as_f64().unwrap_or(0.0) >= 12.0 {
            break v;
        }
        assert!(Instant::now() < deadline, "{v:#}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let waiting: Vec<&str> = view["waiting_for"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        waiting.iter().any(|w| w.starts_with("SRM alarm")),
        "{waiting:?}"
    );
    assert_eq!(view["evidence"]["srm_alarm"], true, "{view:#}");
    let verdict = c
        .get(&format!(
            "{}/api/experiment/verdict?arm=candidate_model",
            served.url
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json();
    assert_eq!(verdict["verdict"], "fail", "{verdict:#}");
    println!(
        "SRM: the candidate had {:.2}% of the users sent (5% by the weights); held on 5% for {:.0} s; waiting for: {waiting:?}",
        candidate_share * 100.0,
        view["seconds_in_step"].as_f64().unwrap_or(0.0)
    );
    served.stop().await;
}
