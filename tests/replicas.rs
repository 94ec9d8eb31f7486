//! N router replicas, no shared state: three routers in-process (port 0) with the same
//! config over the same arms give every user the same arm, and that arm is the one
//! the published rule (README test vectors, recomputed here from the formula) says.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use abgate_common::client::HttpClient;
use abgate_router::assignment::position;
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use support::*;

const REPLICAS: usize = 3;
const USERS: usize = 2000;

/// The README's rule, written out again: arms own consecutive slices of [0, 1) in
/// config order, sized by normalized weight; the last arm with weight closes at 1.
fn published_arm<'a>(arms: &[(&'a str, f64)], p: f64) -> &'a str {
    let total: f64 = arms.iter().map(|(_, w)| w).sum();
    let mut upper = 0.0;
    for (name, w) in arms {
        upper += w / total;
        if p < upper {
            return name;
        }
    }
    arms.iter().rev().find(|(_, w)| *w > 0.0).unwrap().0
}

/// The README's test vectors: (key, salt, position, arm at 90/10).
fn readme_vectors() -> Vec<(String, String, f64, String)> {
    let text = std::fs::read_to_string(repo().join("README.md")).unwrap();
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line
                .trim()
                .strip_prefix('|')?
                .strip_suffix('|')?
                .split('|')
                .map(str::trim)
                .collect();
            let [key, salt, p, arm] = cells.as_slice() else {
                return None;
            };
            let p: f64 = p.parse().ok()?;
            Some((
                key.trim_matches('`').to_string(),
                salt.trim_matches('`').to_string(),
                p,
                arm.to_string(),
            ))
        })
        .collect()
}

/// Asks every replica (by base URL) for every user's arm (by `X-Variant`), 16 users
/// at a time.
async fn arms_per_replica(replicas: &[String], prefix: &str) -> Vec<Vec<String>> {
    let mut answers = Vec::new();
    for replica in replicas {
        let mut arms = vec![String::new(); USERS];
        for chunk in (0..USERS).collect::<Vec<_>>().chunks(16) {
            let asks = chunk.iter().map(|&u| {
                let (url, user) = (format!("{replica}/predict"), format!("{prefix}-{u}"));
                tokio::spawn(async move {
                    let c = HttpClient::new(Duration::from_secs(10));
                    let r = c
                        .post_json(&url, &[("x-user-id", &user)], predict_body())
                        .await
                        .unwrap_or_else(|e| panic!("{user}: {e}"));
                    assert_eq!(r.status, StatusCode::OK, "{user}: {}", r.text());
                    (u, r.header("x-variant").unwrap_or("").to_string())
                })
            });
            for ask in asks.collect::<Vec<_>>() {
                let (u, arm) = ask.await.unwrap();
                arms[u] = arm;
            }
        }
        answers.push(arms);
    }
    answers
}

/// A router in-process on port 0 reading `path` (here: a ConfigMap volume's symlink).
/// Returns its URL and a sender that stops it.
async fn router_on(path: &std::path::Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let text = std::fs::read_to_string(path).unwrap();
    let config = abgate_router::RouterConfig::load(path).unwrap_or_else(|e| panic!("{e}"));
    let router = abgate_router::Router::new(config, abgate_router::state::config_hash(&text))
        .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(abgate_router::serve(router, listener, async {
        let _ = stopped.await;
    }));
    wait_ok(&format!("{url}/api/health"), Duration::from_secs(10)).await;
    (url, stop)
}

#[test]
fn the_readme_test_vectors_follow_the_published_formula() {
    let vectors = readme_vectors();
    assert!(vectors.len() >= 5, "README test vectors: {vectors:?}");
    let arms = [("best_model", 90.0), ("candidate_model", 10.0)];
    for (key, salt, p, arm) in &vectors {
        let computed = position(salt, key);
        assert!(
            (computed - p).abs() < 1e-15,
            "{key}/{salt}: README says {p}, the router computes {computed}"
        );
        assert_eq!(published_arm(&arms, *p), arm, "{key}/{salt}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_router_replicas_with_one_config_give_each_of_2000_users_the_same_arm_the_published_rule_names(
) {
    let stubs = [
        StubArm::start(Duration::ZERO, StatusCode::OK).await,
        StubArm::start(Duration::ZERO, StatusCode::OK).await,
        StubArm::start(Duration::ZERO, StatusCode::OK).await,
    ];
    // Two configs: the shipped two-arm split, and three arms under another salt.
    let setups: [(&str, Vec<(&str, f64)>); 2] = [
        (
            "wine-2026-11",
            vec![("best_model", 70.0), ("candidate_model", 30.0)],
        ),
        (
            "replicas-salt",
            vec![
                ("best_model", 50.0),
                ("candidate_model", 30.0),
                ("third_model", 20.0),
            ],
        ),
    ];
    for (salt, arms) in &setups {
        let with_urls: Vec<(&str, &str, f64)> = arms
            .iter()
            .zip(&stubs)
            .map(|((name, w), stub)| (*name, stub.url.as_str(), *w))
            .collect();
        let text = router_toml(&with_urls, "failover = false", "")
            .replace("salt = \"wine-2026-11\"", &format!("salt = \"{salt}\""));
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            replicas.push(Arc::new(RouterHandle::start(&text).await));
        }
        let c = client();
        for r in &replicas {
            assert_eq!(r.get_json(&c, "/api/config").await["salt"], *salt);
        }
        let urls: Vec<String> = replicas.iter().map(|r| r.url.clone()).collect();
        let answers = arms_per_replica(&urls, "replica-user").await;
        let mut counts = vec![0usize; arms.len()];
        for u in 0..USERS {
            let user = format!("replica-user-{u}");
            let expected = published_arm(arms, position(salt, &user));
            for (i, replica) in answers.iter().enumerate() {
                assert_eq!(
                    replica[u], expected,
                    "replica {i} gave {user} {} (salt {salt}), the rule says {expected}",
                    replica[u]
                );
            }
            counts[arms.iter().position(|(n, _)| *n == expected).unwrap()] += 1;
        }
        let total: f64 = arms.iter().map(|(_, w)| w).sum();
        for ((name, w), n) in arms.iter().zip(&counts) {
            let share = *n as f64 / USERS as f64;
            assert!(
                (share - w / total).abs() < 0.05,
                "{name}: {share} of users for weight share {}",
                w / total
            );
        }
        eprintln!(
            "salt {salt}: {REPLICAS} replicas x {USERS} users agree with the rule; users per arm {:?}",
            arms.iter().map(|(n, _)| *n).zip(&counts).collect::<Vec<_>>()
        );
        for r in replicas {
            if let Ok(r) = Arc::try_unwrap(r) {
                r.stop().await;
            }
        }
    }
}

/// A ConfigMap volume as the kubelet lays it out: `router.toml -> ..data/router.toml`,
/// `..data -> ..<timestamp>` (see tests/configmap.rs for the full reproduction).
fn kubelet_volume(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let first = "..2026_12_01_10_00_00.000000000";
    std::fs::create_dir(dir.path().join(first)).unwrap();
    std::fs::write(dir.path().join(first).join("router.toml"), text).unwrap();
    std::os::unix::fs::symlink(first, dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/router.toml", dir.path().join("router.toml")).unwrap();
    dir
}

/// The kubelet's atomic update: new timestamped directory, `..data_tmp` renamed over
/// `..data`, the old directory deleted.
fn kubelet_swap(dir: &std::path::Path, text: &str) {
    let old = std::fs::read_link(dir.join("..data")).unwrap();
    let next = "..2026_12_01_10_00_01.000000000";
    std::fs::create_dir(dir.join(next)).unwrap();
    std::fs::write(dir.join(next).join("router.toml"), text).unwrap();
    std::os::unix::fs::symlink(next, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(dir.join(old)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_configmap_swap_reaches_all_three_replicas_and_they_agree_again_on_the_new_split() {
    let best = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let candidate = StubArm::start(Duration::ZERO, StatusCode::OK).await;
    let text = |w: f64| {
        router_toml(
            &[
                ("best_model", best.url.as_str(), 100.0 - w),
                ("candidate_model", candidate.url.as_str(), w),
            ],
            "failover = false",
            "",
        )
    };
    let volume = kubelet_volume(&text(10.0));
    let path = volume.path().join("router.toml");
    // Each replica reads the same mounted file, as pods of one Deployment do.
    let mut replicas = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..REPLICAS {
        let (url, stop) = router_on(&path).await;
        replicas.push(url);
        stops.push(stop);
    }
    let c = client();
    for r in &replicas {
        let config = c.get(&format!("{r}/api/config")).await.unwrap().json();
        assert_eq!(config["file"], path_str(&path));
    }
    let new_text = text(40.0);
    let hash = abgate_router::state::config_hash(&new_text);
    let swapped = std::time::Instant::now();
    kubelet_swap(volume.path(), &new_text);
    let mut reached = Vec::new();
    for r in &replicas {
        eventually(
            "the swap reaches the replica",
            Duration::from_secs(10),
            || {
                let (c, url, hash) = (c.clone(), format!("{r}/api/config"), hash.clone());
                async move {
                    c.get(&url)
                        .await
                        .map(|r| r.json()["hash"] == hash.as_str())
                        .unwrap_or(false)
                }
            },
        )
        .await;
        reached.push(swapped.elapsed());
    }
    let arms = [("best_model", 60.0), ("candidate_model", 40.0)];
    let answers = arms_per_replica(&replicas, "swap-user").await;
    for u in 0..USERS {
        let expected = published_arm(&arms, position("wine-2026-11", format!("swap-user-{u}")));
        for replica in &answers {
            assert_eq!(replica[u], expected, "swap-user-{u}");
        }
    }
    eprintln!(
        "one ConfigMap swap reached {REPLICAS} replicas (poll 50 ms) after {:?}; all {USERS} users agree at 60/40",
        reached
    );
    for stop in stops {
        let _ = stop.send(());
    }
}
