//! Reload from a Kubernetes ConfigMap volume: the kubelet's exact layout
//! (`router.toml -> ..data/router.toml`, `..data -> ..<timestamp>`) and its atomic
//! update (new timestamped directory, `..data_tmp` symlink renamed over `..data`, old
//! directory deleted), done under continuous traffic. The router is started on the
//! user-visible symlink path, as a pod's `--config /etc/abgate/router.toml` would.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use abgate_common::client::HttpClient;
use abgate_router::assignment::{position, Split};
use abgate_router::{Router, RouterConfig};
use http::StatusCode;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const FILE: &str = "router.toml";

/// A ConfigMap volume as the kubelet lays it out (its `AtomicWriter`).
struct Volume {
    dir: tempfile::TempDir,
    current: String,
    updates: u32,
}

impl Volume {
    /// `..2026_12_01_10_00_00.<n>` holding `router.toml`, `..data` pointing at it,
    /// and `router.toml -> ..data/router.toml`.
    fn new(text: &str) -> Volume {
        let dir = tempfile::tempdir().unwrap();
        let current = Self::timestamped(0);
        Self::write_dir(dir.path(), &current, text);
        std::os::unix::fs::symlink(&current, dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink(Path::new("..data").join(FILE), dir.path().join(FILE)).unwrap();
        Volume {
            dir,
            current,
            updates: 0,
        }
    }

    fn timestamped(n: u32) -> String {
        format!(
            "..2026_12_01_10_{:02}_{:02}.{:09}",
            n / 60,
            n % 60,
            123_456_789 + n
        )
    }

    fn write_dir(root: &Path, name: &str, text: &str) {
        let d = root.join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join(FILE), text).unwrap();
    }

    /// The path a pod's command line names: the user-visible symlink.
    fn path(&self) -> PathBuf {
        self.dir.path().join(FILE)
    }

    /// The kubelet's update: write the new timestamped directory, point `..data_tmp`
    /// at it, rename that over `..data` (the one atomic step), delete the old
    /// directory.
    fn swap(&mut self, text: &str) {
        self.updates += 1;
        let root = self.dir.path();
        let next = Self::timestamped(self.updates);
        Self::write_dir(root, &next, text);
        let tmp = root.join("..data_tmp");
        std::os::unix::fs::symlink(&next, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join(&self.current)).unwrap();
        self.current = next;
        // The layout a pod sees afterwards.
        assert!(std::fs::symlink_metadata(self.path()).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_link(root.join("..data")).unwrap(),
            PathBuf::from(&self.current)
        );
        assert_eq!(std::fs::read_to_string(self.path()).unwrap(), text);
    }
}

/// The router in-process on port 0, reading its config from `path` (the symlink).
struct Served {
    url: String,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Served {
    async fn start(path: &Path) -> Served {
        let text = std::fs::read_to_string(path).unwrap();
        let config = RouterConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
        let router: Arc<Router> = Router::new(config, abgate_router::state::config_hash(&text))
            .unwrap_or_else(|e| panic!("{e}"));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            abgate_router::serve(router, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        wait_ok(&format!("{url}/api/health"), Duration::from_secs(10)).await;
        Served {
            url,
            stop: Some(stop),
            done: Some(done),
        }
    }

    async fn config(&self, c: &HttpClient) -> serde_json::Value {
        c.get(&format!("{}/api/config", self.url))
            .await
            .unwrap()
            .json()
    }

    async fn reloads(&self, c: &HttpClient, result: &str) -> f64 {
        let text = c
            .get(&format!("{}/metrics", self.url))
            .await
            .map(|r| r.text())
            .unwrap_or_default();
        metric(&text, "abgate_config_reloads_total", &[("result", result)])
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), d).await;
        }
    }
}

/// Continuous traffic: every response's status, counted until stopped.
struct Traffic {
    running: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<usize>>,
}

impl Traffic {
    fn start(url: &str, workers: usize) -> Traffic {
        let running = Arc::new(AtomicBool::new(true));
        let failures: Arc<Mutex<Vec<String>>> = Arc::default();
        let tasks = (0..workers)
            .map(|w| {
                let (running, failures) = (running.clone(), failures.clone());
                let url = format!("{url}/predict");
                tokio::spawn(async move {
                    let c = client();
                    let mut sent = 0;
                    while running.load(Ordering::Relaxed) {
                        let user = format!("load-{}", (sent * workers + w) % 997);
                        sent += 1;
                        let failure = match c
                            .post_json(&url, &[("x-user-id", &user)], predict_body())
                            .await
                        {
                            Ok(r) if r.status == StatusCode::OK => None,
                            Ok(r) => Some(format!("{} {}", r.status, r.text())),
                            Err(e) => Some(e),
                        };
                        if let Some(f) = failure {
                            failures.lock().unwrap().push(f);
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    sent
                })
            })
            .collect();
        Traffic {
            running,
            failures,
            tasks,
        }
    }

    /// (requests sent, failures).
    async fn stop(self) -> (usize, Vec<String>) {
        self.running.store(false, Ordering::Relaxed);
        let mut sent = 0;
        for t in self.tasks {
            sent += t.await.unwrap();
        }
        let failures = std::mem::take(&mut *self.failures.lock().unwrap());
        (sent, failures)
    }
}

fn config_text(best: &StubArm, candidate: &StubArm, candidate_weight: u32) -> String {
    router_toml(
        &[
            ("best_model", &best.url, f64::from(100 - candidate_weight)),
            (
                "candidate_model",
                &candidate.url,
                f64::from(candidate_weight),
            ),
        ],
        "failover = false",
        "",
    )
}

/// The arm that served each of `users` (by `X-Variant`).
async fn served_arms(c: &HttpClient, url: &str, users: usize) -> Vec<String> {
    let mut arms = Vec::with_capacity(users);
    for u in 0..users {
        let r = c
            .post_json(
                &format!("{url}/predict"),
                &[("x-user-id", &format!("sweep-{u}"))],
                predict_body(),
            )
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        arms.push(r.header("x-variant").unwrap_or("").to_string());
    }
    arms
}

async fn wait_for(what: &str, check: impl Fn(serde_json::Value) -> bool, served: &Served) {
    let c = HttpClient::new(Duration::from_secs(2));
    let check = &check;
    eventually(what, Duration::from_secs(10), || {
        let c = c.clone();
        async move { check(served.config(&c).await) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_symlink_swaps_under_traffic_apply_every_new_weight_move_users_only_toward_the_raised_arm_and_fail_no_request(
) {
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let candidate = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let mut volume = Volume::new(&config_text(&best, &candidate, 10));
    let router = Served::start(&volume.path()).await;
    let c = client();
    let first = router.config(&c).await;
    assert_eq!(
        first["file"],
        path_str(&volume.path()),
        "the router reads the symlink path"
    );
    let mut version = first["version"].as_u64().unwrap();

    const USERS: usize = 1000;
    let traffic = Traffic::start(&router.url, 4);
    let mut before = served_arms(&c, &router.url, USERS).await;
    let mut moved_total = 0;
    let mut rejected = 0.0;
    let salt = first["salt"].as_str().unwrap().to_string();
    for step in [Some(20u32), Some(35), None, Some(50), Some(70), Some(90)] {
        let Some(candidate_weight) = step else {
            // A swap to an invalid file: rejected, counted, the old config stays.
            let bad = config_text(&best, &candidate, 50).replace("weight = 50", "weight = -50");
            volume.swap(&bad);
            rejected += 1.0;
            eventually(
                "the invalid swap is rejected and counted",
                Duration::from_secs(10),
                || {
                    let (c, router) = (c.clone(), &router);
                    async move { router.reloads(&c, "failure").await == rejected }
                },
            )
            .await;
            let now = router.config(&c).await;
            assert_eq!(now["version"], version, "an invalid file changes nothing");
            assert_eq!(now["last_reload"]["result"], "failure");
            assert!(
                now["last_reload"]["error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("weight"),
                "the error names the key: {}",
                now["last_reload"]["error"]
            );
            assert_eq!(served_arms(&c, &router.url, USERS).await, before);
            continue;
        };
        let text = config_text(&best, &candidate, candidate_weight);
        volume.swap(&text);
        version += 1;
        let hash = abgate_router::state::config_hash(&text);
        wait_for(
            "the swapped config is applied",
            |v| v["version"] == version && v["hash"] == hash.as_str(),
            &router,
        )
        .await;
        let now = router.config(&c).await;
        assert_eq!(now["arms"][0]["weight"], f64::from(100 - candidate_weight));
        assert_eq!(now["arms"][1]["weight"], f64::from(candidate_weight));
        assert_eq!(now["last_reload"]["result"], "success");

        let after = served_arms(&c, &router.url, USERS).await;
        let split = Split::new(&[
            f64::from(100 - candidate_weight),
            f64::from(candidate_weight),
        ])
        .unwrap();
        let names = ["best_model", "candidate_model"];
        let mut moved = 0;
        for (u, (was, is)) in before.iter().zip(&after).enumerate() {
            let expected = names[split.pick(position(&salt, format!("sweep-{u}")))];
            assert_eq!(
                is, expected,
                "sweep-{u} at candidate weight {candidate_weight}"
            );
            if was != is {
                moved += 1;
                assert_eq!(
                    (was.as_str(), is.as_str()),
                    ("best_model", "candidate_model"),
                    "sweep-{u} moved the wrong way when the candidate's weight rose"
                );
            }
        }
        let share = after.iter().filter(|a| *a == "candidate_model").count() as f64 / USERS as f64;
        assert!(
            (share - f64::from(candidate_weight) / 100.0).abs() < 0.06,
            "candidate share {share} at weight {candidate_weight}"
        );
        eprintln!(
            "swap {}: candidate weight {candidate_weight}, version {version}, {moved} of {USERS} users moved best -> candidate, share {share:.3}",
            volume.updates
        );
        moved_total += moved;
        before = after;
    }
    let (sent, failures) = traffic.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(moved_total > 0);
    assert_eq!(router.reloads(&c, "failure").await, rejected);
    assert_eq!(router.reloads(&c, "success").await, (version - 1) as f64);
    eprintln!(
        "configmap: {} kubelet swaps ({} valid, {rejected} invalid), {sent} background requests and {} sweep requests, 0 failed",
        volume.updates,
        version - 1,
        USERS * (volume.updates as usize + 1)
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rapid_kubelet_swaps_never_expose_a_half_swapped_file_and_the_router_ends_on_the_last_one()
{
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let candidate = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let mut volume = Volume::new(&config_text(&best, &candidate, 1));
    let router = Served::start(&volume.path()).await;
    let c = client();
    let traffic = Traffic::start(&router.url, 3);
    // Swaps faster than the 50 ms poll and slower, interleaved: the poller may skip
    // some, but every read it makes is a whole file of one version, so nothing is
    // ever rejected (a half-swapped read would be a missing or mixed file).
    let mut last = String::new();
    for i in 0..40u32 {
        last = config_text(&best, &candidate, 2 + i * 2);
        volume.swap(&last);
        let pause = if i % 4 == 0 { 120 } else { 7 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    let hash = abgate_router::state::config_hash(&last);
    wait_for(
        "the last swap is applied",
        |v| v["hash"] == hash.as_str(),
        &router,
    )
    .await;
    let (sent, failures) = traffic.stop().await;
    let now = router.config(&c).await;
    assert_eq!(now["arms"][1]["weight"], 80.0);
    assert_eq!(
        router.reloads(&c, "failure").await,
        0.0,
        "{}",
        now["last_reload"]
    );
    assert!(failures.is_empty(), "{failures:?}");
    eprintln!(
        "rapid swaps: 40 swaps, {} applied, {sent} requests, 0 failed, 0 rejected",
        router.reloads(&c, "success").await
    );
    router.stop().await;
}
