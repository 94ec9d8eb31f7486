//! One experiment across three router replicas (issue 21), over real processes: three
//! `abgate router` processes in cluster mode (`experiment.prometheus_url`, a 1 s
//! tick), each with its config in the kubelet's ConfigMap layout (so a rollback is in
//! memory only, as on Kubernetes), behind HAProxy in `mode tcp` (round robin, a new
//! connection every few requests, so one user's requests reach several replicas),
//! real model servers, and Debian's `prometheus` scraping the routers every second.
//!
//! * The cluster's figures (Prometheus's sums) equal the sum of the three replicas'
//!   own exports exactly (counts exactly, sums to 1e-9 relative); every replica's
//!   `/api/experiment` shows them (`source` prometheus, 3 replicas), and
//!   `abgate report --prometheus` prints the same verdicts as every replica.
//! * A candidate failing 5% of its requests: every replica rolls it back within two
//!   ticks of the first; the users who got both arms are those with requests in that
//!   window (counted, and no user gets both arms outside it); after it, 0 candidate
//!   answers; a replica killed and restarted after the trip serves 0 candidate answers
//!   (it applies the recorded trip before it answers).
//! * Prometheus stopped: `source_up` 0 everywhere, no trip although the candidate now
//!   fails 20% of its requests, serving unchanged; Prometheus restarted: back within
//!   two ticks, and the cluster's guardrail then acts.
//!
//! * A progressive rollout over the three replicas: Prometheus stopped on its first
//!   step, no replica moves; every step and the promotion change the weights on every
//!   replica within a tick of each other (scheduled ahead: in practice within
//!   milliseconds); an operator's pause on one replica and resume on another reach
//!   all within two ticks; a pod replaced while paused answers on the cluster's step;
//!   no user ever moves back from the candidate to the control.
//!
//! Every measured number is printed (`--nocapture`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use abgate_common::client::HttpClient;
use bytes::Bytes;
use http::StatusCode;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

const NEEDS: &str = "needs prometheus and haproxy (.ci/run installs them)";
/// The cluster tick (`experiment.cluster_interval_ms`).
const TICK_MS: u64 = 1000;
const REPLICAS: usize = 3;
const CONCURRENCY: usize = 6;
const CANDIDATE: &str = "candidate_model";
const BEST: &str = "best_model";

/// The tests take turns: each runs ten processes on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn require(program: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(found, "{program}: {NEEDS}");
}

/// Debian's Prometheus in the foreground, scraping `targets` every second.
struct Prometheus {
    url: String,
    port: u16,
    config: PathBuf,
    data: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(targets: &[u16]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        let list: Vec<String> = targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: router\n    static_configs:\n      - targets: [{}]\n",
                list.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let mut p = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            port,
            data: dir.path().join("data"),
            config,
            child: None,
            _dir: dir,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", self.config.display()))
            .arg(format!("--storage.tsdb.path={}", self.data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus ({e}): {NEEDS}"));
        self.child = Some(child);
        wait_ok(&format!("{}/-/ready", self.url), Duration::from_secs(30)).await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Instant query: the result vector.
    async fn query(&self, c: &HttpClient, q: &str) -> Vec<Value> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(q));
        let r = c.get(&url).await.unwrap_or_else(|e| panic!("{e}"));
        let body = r.json();
        assert_eq!(body["status"], "success", "{q}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
    }
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One replica: an `abgate router` process whose config is a ConfigMap-style symlink
/// (`router.toml -> ..data/router.toml`: a rollback stays in memory), its audit log
/// beside it.
struct Replica {
    name: String,
    port: u16,
    url: String,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Replica {
    fn create(name: &str, text: &str) -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_12_05_10_00_00.000000001");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("router.toml"), text).unwrap();
        std::os::unix::fs::symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink(
            Path::new("..data").join("router.toml"),
            dir.path().join("router.toml"),
        )
        .unwrap();
        let port = free_port();
        Replica {
            name: name.to_string(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child: None,
        }
    }

    /// Starts the process; returns once it answers `/api/health` with 200.
    async fn start(&mut self) {
        self.child = Some(spawn_router(
            &self.dir.path().join("router.toml"),
            self.port,
        ));
        wait_ok(&format!("{}/api/health", self.url), Duration::from_secs(30)).await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The audit log's trips.
    fn trips(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("abgate-audit.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn experiment(&self, c: &HttpClient) -> Value {
        c.get(&format!("{}/api/experiment", self.url))
            .await
            .map(|r| r.json())
            .unwrap_or(Value::Null)
    }

    async fn weights(&self, c: &HttpClient) -> Vec<f64> {
        let config = c
            .get(&format!("{}/api/config", self.url))
            .await
            .map(|r| r.json())
            .unwrap_or(Value::Null);
        config["arms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x["weight"].as_f64().unwrap_or(-1.0))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn metrics(&self, c: &HttpClient) -> String {
        c.get(&format!("{}/metrics", self.url))
            .await
            .map(|r| r.text())
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// HAProxy in `mode tcp`, round robin over the replicas, killed on drop.
struct Haproxy {
    url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    async fn start(replicas: &[Replica]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 4096\n  nbthread 1\n\
             defaults\n  mode tcp\n  timeout connect 500ms\n  timeout client 30s\n  timeout server 30s\n\
             \x20 retries 2\n  option redispatch 1\n\
             frontend service\n  bind 127.0.0.1:{port}\n  default_backend routers\n\
             backend routers\n  balance roundrobin\n  option tcp-check\n\
             \x20 default-server check inter 200 fall 1 rise 1\n"
        );
        for r in replicas {
            cfg.push_str(&format!("  server {} 127.0.0.1:{}\n", r.name, r.port));
        }
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, &cfg).unwrap();
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("haproxy ({e}): {NEEDS}"));
        let proxy = Haproxy {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        wait_ok(
            &format!("{}/api/health", proxy.url),
            Duration::from_secs(15),
        )
        .await;
        proxy
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One answer through HAProxy: when it was sent, the user, the arm that answered.
#[derive(Clone, Debug)]
struct Answer {
    sent: f64,
    user: u64,
    variant: String,
    status: u16,
}

/// Load through HAProxy: `CONCURRENCY` clients over `users` users, a new connection
/// every 5 requests (so one user's requests reach several replicas).
struct Traffic {
    running: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Traffic {
    fn start(url: &str, users: u64) -> Traffic {
        let running = Arc::new(AtomicBool::new(true));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let tasks = (0..CONCURRENCY)
            .map(|_| {
                let (running, answers, next, url) = (
                    Arc::clone(&running),
                    Arc::clone(&answers),
                    Arc::clone(&next),
                    url.to_string(),
                );
                tokio::spawn(async move {
                    let mut c = HttpClient::new(Duration::from_secs(10));
                    let mut sent = 0u64;
                    while running.load(Ordering::Relaxed) {
                        if sent % 5 == 0 {
                            c = HttpClient::new(Duration::from_secs(10));
                        }
                        sent += 1;
                        // Users cycle with a stride, so each comes back every `users`
                        // requests (from any client, on any connection).
                        let user = next.fetch_add(1, Ordering::Relaxed) % users;
                        let at = now();
                        let key = format!("user-{user}");
                        let r = c
                            .post_json(
                                &format!("{url}/predict"),
                                &[("x-user-id", key.as_str())],
                                predict_body(),
                            )
                            .await;
                        let Ok(r) = r else { continue };
                        let variant = r.header("x-variant").unwrap_or("").to_string();
                        answers.lock().unwrap().push(Answer {
                            sent: at,
                            user,
                            variant,
                            status: r.status.as_u16(),
                        });
                    }
                })
            })
            .collect();
        Traffic {
            running,
            answers,
            tasks,
        }
    }

    async fn stop(self) -> Vec<Answer> {
        self.running.store(false, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let answers = self.answers.lock().unwrap().clone();
        answers
    }

    fn snapshot(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }
}

/// A replica's config; `allowance` is its guardrail's `max_degradation` (the phase
/// is the same whatever it is: salt, arms and weights).
fn router_text(prometheus: &str, best: &str, candidate: &str, allowance: f64) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\n\
         [experiment]\nname = \"cluster\"\nsalt = \"wine-2026-11\"\nmin_samples = 100\n\
         prometheus_url = \"{prometheus}\"\ncluster_interval_ms = {TICK_MS}\n\
         [[arms]]\nname = \"{BEST}\"\nurl = \"{best}\"\nweight = 50\n\
         [[arms]]\nname = \"{CANDIDATE}\"\nurl = \"{candidate}\"\nweight = 50\n\
         [[guardrails]]\nname = \"candidate_errors\"\nmetric = \"error_rate\"\narm = \"{CANDIDATE}\"\n\
         max_degradation = {allowance}\naction = \"rollback\"\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 5000\nunhealthy_threshold = 3\nhealthy_threshold = 1\n\
         [upstream]\nconnect_timeout_ms = 5000\n[reload]\npoll_interval_ms = 250\n"
    )
}

/// Everything a test runs: two model servers (the candidate's behind a faulty front),
/// Prometheus, three replicas and HAProxy.
struct Cluster {
    _best: ArmProcess,
    _candidate: ArmProcess,
    front: FaultyFront,
    prometheus: Prometheus,
    replicas: Vec<Replica>,
    proxy: Haproxy,
}

impl Cluster {
    /// `allowances`: each replica's guardrail allowance.
    async fn start(allowances: [f64; REPLICAS]) -> Cluster {
        Cluster::start_with(|prometheus, best, candidate, i| {
            router_text(prometheus, best, candidate, allowances[i])
        })
        .await
    }

    /// Each replica's config from `text(prometheus, best, candidate, replica)`.
    async fn start_with(text: impl Fn(&str, &str, &str, usize) -> String) -> Cluster {
        require("prometheus");
        require("haproxy");
        let started = Instant::now();
        let (best, candidate) = tokio::join!(ArmProcess::start(BEST), ArmProcess::start(CANDIDATE));
        let front = FaultyFront::start(&candidate.url).await;
        let mut replicas: Vec<Replica> = (0..REPLICAS)
            .map(|i| Replica::create(&format!("r{i}"), ""))
            .collect();
        let ports: Vec<u16> = replicas.iter().map(|r| r.port).collect();
        let prometheus = Prometheus::start(&ports).await;
        for (i, r) in replicas.iter_mut().enumerate() {
            let text = text(&prometheus.url, &best.url, &front.url, i);
            let data = std::fs::read_link(r.dir.path().join("..data")).unwrap();
            std::fs::write(r.dir.path().join(data).join("router.toml"), &text).unwrap();
        }
        for r in &mut replicas {
            r.start().await;
        }
        let proxy = Haproxy::start(&replicas).await;
        eprintln!(
            "setup: 2 model servers, Prometheus, {REPLICAS} routers, HAProxy in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        Cluster {
            _best: best,
            _candidate: candidate,
            front,
            prometheus,
            replicas,
            proxy,
        }
    }

    /// Waits until every replica reads fresh cluster figures from all replicas.
    async fn all_fresh(&self, within: Duration) {
        let c = client();
        for r in &self.replicas {
            eventually(
                &format!("{} reads fresh figures of {REPLICAS} replicas", r.name),
                within,
                || {
                    let (c, r) = (c.clone(), r);
                    async move {
                        let e = r.experiment(&c).await;
                        e["source"] == "prometheus"
                            && e["source_up"] == true
                            && e["replicas"] == REPLICAS as u64
                    }
                },
            )
            .await;
        }
    }
}

/// `{phase_id, variant, metric, bucket} -> value` of `family` in a Prometheus text.
fn series(text: &str, family: &str) -> BTreeMap<Vec<(String, String)>, f64> {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = BTreeMap::new();
    for s in scrape.samples.iter().filter(|s| s.metric == family) {
        let v = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let mut labels: Vec<(String, String)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        *out.entry(labels).or_insert(0.0) += v;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and haproxy (.ci/run installs them)"]
async fn the_clusters_figures_are_the_sum_of_the_replicas_and_every_surface_shows_the_same_verdicts(
) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cluster = Cluster::start([0.01; REPLICAS]).await;
    let c = client();
    let traffic = Traffic::start(&cluster.proxy.url, 3000);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let answers = traffic.stop().await;
    let failed = answers.iter().filter(|a| a.status != 200).count();
    assert_eq!(failed, 0, "failed answers");
    // One user's requests reached several replicas: the same user on both arms never.
    let mut arms_of: HashMap<u64, HashSet<&str>> = HashMap::new();
    for a in &answers {
        arms_of
            .entry(a.user)
            .or_default()
            .insert(a.variant.as_str());
    }
    assert!(arms_of.values().all(|s| s.len() == 1));
    eprintln!(
        "traffic: {} requests of {} users through HAProxy",
        answers.len(),
        arms_of.len()
    );

    // Prometheus's sums equal the replicas' own exports summed, once it has scraped
    // every replica after the last request.
    let families = [
        "abgate_experiment_count_total",
        "abgate_experiment_sum_total",
    ];
    let checked;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut own: [BTreeMap<Vec<(String, String)>, f64>; 2] = Default::default();
        for r in &cluster.replicas {
            let text = r.metrics(&c).await;
            for (i, f) in families.iter().enumerate() {
                for (k, v) in series(&text, f) {
                    *own[i].entry(k).or_insert(0.0) += v;
                }
            }
        }
        let mut theirs: [BTreeMap<Vec<(String, String)>, f64>; 2] = Default::default();
        for (i, f) in families.iter().enumerate() {
            for s in cluster
                .prometheus
                .query(
                    &c,
                    &format!("sum by (phase_id, variant, metric, bucket) ({f})"),
                )
                .await
            {
                let mut labels: Vec<(String, String)> = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                labels.sort();
                let v: f64 = s["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                theirs[i].insert(labels, v);
            }
        }
        let counts_equal = own[0] == theirs[0];
        let sums_equal = own[1].len() == theirs[1].len()
            && own[1].iter().all(|(k, v)| {
                theirs[1]
                    .get(k)
                    .is_some_and(|t| (t - v).abs() <= 1e-9 * v.abs().max(1e-300))
            });
        if counts_equal && sums_equal {
            checked = own[0].len();
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's sums never equalled the replicas': {} vs {} count series",
            own[0].len(),
            theirs[0].len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(checked > 100, "{checked} series");
    let text = cluster.replicas[0].metrics(&c).await;
    let exported: Vec<usize> = [
        "abgate_experiment_count_total",
        "abgate_experiment_sum_total",
        "abgate_experiment_sum_squares_total",
        "abgate_experiment_srm_evalue",
        "abgate_experiment_arm_weight",
        "abgate_guardrail_tripped",
    ]
    .iter()
    .map(|f| series(&text, f).len())
    .collect();
    eprintln!(
        "series exported by one replica (count, sum, sum_squares, srm_evalue, arm_weight, tripped): {exported:?} = {}",
        exported.iter().sum::<usize>()
    );
    eprintln!(
        "cluster = sum of replicas: {checked} count series equal exactly, and their sums to 1e-9"
    );

    // Every replica shows the cluster's figures: requests = all the answers.
    let total = answers.len() as u64;
    for r in &cluster.replicas {
        eventually(
            &format!("{} shows the cluster's {total} requests", r.name),
            Duration::from_secs(10),
            || {
                let (c, r) = (c.clone(), r);
                async move {
                    let e = r.experiment(&c).await;
                    let n: u64 = e["arms"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|x| x["requests"]["n"].as_u64().unwrap_or(0))
                                .sum()
                        })
                        .unwrap_or(0);
                    n == total && e["replicas"] == REPLICAS as u64 && e["source_up"] == true
                }
            },
        )
        .await;
    }

    // `abgate report --prometheus`: the same verdicts as every replica.
    let out = Command::new(abgate())
        .args([
            "report",
            "--prometheus",
            &cluster.prometheus.url,
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "abgate report: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "prometheus");
    assert_eq!(report["replicas"], REPLICAS as u64);
    let verdicts = |v: &Value| -> Vec<(String, String, String, u64)> {
        v["comparisons"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["metric"].as_str().unwrap_or("").to_string(),
                    c["verdict"].as_str().unwrap_or("").to_string(),
                    c["family_verdict"].as_str().unwrap_or("").to_string(),
                    c["n"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let reported = verdicts(&report);
    assert_eq!(reported.len(), 5, "{report}");
    for r in &cluster.replicas {
        let e = r.experiment(&c).await;
        assert_eq!(verdicts(&e), reported, "{}", r.name);
        assert_eq!(e["srm"]["alarm"], report["srm"]["alarm"], "{}", r.name);
        assert_eq!(e["phase_id"], report["phase_id"]);
    }
    let text = Command::new(abgate())
        .args(["report", "--prometheus", &cluster.prometheus.url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("3 replica(s) through Prometheus"), "{text}");
    eprintln!(
        "report --prometheus: {:?}; the same on all {REPLICAS} replicas ({:.1}s)",
        reported,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and haproxy (.ci/run installs them)"]
async fn a_failing_candidate_is_rolled_back_on_every_replica_within_two_ticks_and_after_a_restart()
{
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    // r2's own guardrail allows 90 points, so it never trips on the figures itself: it
    // rolls back only by applying the trip another replica recorded.
    let mut cluster = Cluster::start([0.01, 0.01, 0.9]).await;
    let c = client();
    cluster.all_fresh(Duration::from_secs(10)).await;
    cluster.front.fail_every(20); // 5% of the candidate's requests fail
    let traffic = Traffic::start(&cluster.proxy.url, 2000);
    // Until every replica has rolled back.
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let mut all = true;
        for r in &cluster.replicas {
            all &= r.weights(&c).await == vec![50.0, 0.0];
        }
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every replica rolled back within 45 s: {:?}",
            cluster
                .replicas
                .iter()
                .map(Replica::trips)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = traffic.stop().await;

    let trips: Vec<(String, f64, String)> = cluster
        .replicas
        .iter()
        .map(|r| {
            let t = r.trips();
            assert_eq!(t.len(), 1, "{}: one trip: {t:?}", r.name);
            (
                r.name.clone(),
                t[0]["time"].as_f64().unwrap(),
                t[0]["origin"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let first = trips.iter().map(|t| t.1).fold(f64::MAX, f64::min);
    let last = trips.iter().map(|t| t.1).fold(f64::MIN, f64::max);
    let spread = last - first;
    eprintln!(
        "trips: {:?}; from the first replica's trip to the last: {:.3}s (tick {TICK_MS} ms)",
        trips
            .iter()
            .map(|(n, t, o)| format!("{n} +{:.3}s ({o})", t - first))
            .collect::<Vec<_>>(),
        spread
    );
    assert!(
        spread <= 2.0 * TICK_MS as f64 / 1000.0,
        "every replica within two ticks of the first: {spread:.3}s"
    );
    // The first trip is decided on the cluster's figures; r2 only applies records (the
    // others may do either, whichever their next tick sees first).
    let origins: Vec<&str> = trips.iter().map(|t| t.2.as_str()).collect();
    assert_eq!(origins[2], "replica", "{trips:?}");
    assert!(
        trips.iter().any(|t| t.1 == first && t.2 == "cluster"),
        "{trips:?}"
    );

    // Users who got both arms in the window: the candidate's users who got the control
    // from a replica that had rolled back and then the candidate again from one that
    // had not yet (the sticky promise broken); every such flip lies inside the window
    // (with 0.2 s for requests in flight), and no user gets both arms outside it.
    const FLIGHT: f64 = 0.2;
    let (from, to) = (first - FLIGHT, last + FLIGHT);
    let candidate_users: HashSet<u64> = answers
        .iter()
        .filter(|a| a.variant == CANDIDATE)
        .map(|a| a.user)
        .collect();
    let mut by_user: HashMap<u64, Vec<&Answer>> = HashMap::new();
    for a in &answers {
        by_user.entry(a.user).or_default().push(a);
    }
    let active_in_window = candidate_users
        .iter()
        .filter(|u| by_user[u].iter().any(|a| a.sent >= from && a.sent <= to))
        .count();
    let mut flipped = 0;
    for u in &candidate_users {
        let mut mine = by_user[u].clone();
        mine.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        assert!(
            !mine.iter().any(|a| a.variant == BEST && a.sent < from),
            "user {u} got the control before any trip"
        );
        let first_best = mine.iter().find(|a| a.variant == BEST).map(|a| a.sent);
        if let Some(b) = first_best {
            let back: Vec<&&Answer> = mine
                .iter()
                .filter(|a| a.variant == CANDIDATE && a.sent > b)
                .collect();
            if !back.is_empty() {
                flipped += 1;
                assert!(
                    b >= from && back.iter().all(|a| a.sent <= to),
                    "user {u} got both arms outside the window"
                );
            }
        }
    }
    let late = answers
        .iter()
        .filter(|a| a.sent > to && a.variant == CANDIDATE)
        .count();
    let after = answers.iter().filter(|a| a.sent > to).count();
    assert_eq!(late, 0, "candidate answers after the last trip");
    assert!(after > 100, "only {after} answers after the last trip");
    assert!(
        flipped <= active_in_window,
        "{flipped} users got both arms, more than the {active_in_window} candidate users active in the window"
    );
    eprintln!(
        "{} requests; {} candidate users; {flipped} got both arms in the {spread:.3}s window (of {active_in_window} candidate users with a request in it); 0 candidate answers in the {after} requests after it",
        answers.len(),
        candidate_users.len(),
    );

    // A replica killed and restarted after the trip (its ConfigMap still says 50/50)
    // applies the recorded trip before it answers: 0 candidate answers.
    let r = &mut cluster.replicas[0];
    r.kill();
    let restarted = Instant::now();
    r.start().await;
    let ready = restarted.elapsed();
    let direct = HttpClient::new(Duration::from_secs(10));
    let mut candidate_answers = 0;
    for u in candidate_users.iter().take(200) {
        let reply = direct
            .post_json(
                &format!("{}/predict", r.url),
                &[("x-user-id", &format!("user-{u}"))],
                predict_body(),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        candidate_answers += usize::from(reply.header("x-variant") == Some(CANDIDATE));
    }
    assert_eq!(candidate_answers, 0, "candidate answers after the restart");
    assert_eq!(r.weights(&c).await, vec![50.0, 0.0]);
    let applied: Vec<Value> = r.trips();
    assert_eq!(
        applied.last().and_then(|t| t["origin"].as_str()),
        Some("replica"),
        "{applied:?}"
    );
    eprintln!(
        "restarted replica ready in {:.2}s with the rollback applied; 0 candidate answers to 200 of the candidate's users ({:.1}s in all)",
        ready.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and haproxy (.ci/run installs them)"]
async fn without_prometheus_nothing_acts_and_serving_is_unchanged_and_it_comes_back_within_two_ticks(
) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let mut cluster = Cluster::start([0.01; REPLICAS]).await;
    let c = client();
    let traffic = Traffic::start(&cluster.proxy.url, 2000);
    cluster.all_fresh(Duration::from_secs(10)).await;

    cluster.prometheus.kill();
    let stopped = Instant::now();
    for r in &cluster.replicas {
        eventually(
            &format!("{} says its source is down", r.name),
            Duration::from_secs(5),
            || {
                let (c, r) = (c.clone(), r);
                async move {
                    let e = r.experiment(&c).await;
                    e["source_up"] == false
                        && e["reason"]
                            .as_str()
                            .is_some_and(|s| s.contains("unreachable"))
                        && metric(&r.metrics(&c).await, "abgate_experiment_source_up", &[]) == 0.0
                }
            },
        )
        .await;
    }
    eprintln!(
        "Prometheus stopped: every replica source_up 0 after {:.2}s",
        stopped.elapsed().as_secs_f64()
    );
    // The candidate now fails 20% of its requests: a single node would trip in
    // seconds; without the cluster's figures nothing acts.
    cluster.front.fail_every(5);
    let from = now();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let answers = traffic.snapshot();
    let served: Vec<&Answer> = answers.iter().filter(|a| a.sent > from + 1.0).collect();
    let candidate = served.iter().filter(|a| a.variant == CANDIDATE).count();
    let errors = served.iter().filter(|a| a.status >= 500).count();
    for r in &cluster.replicas {
        assert_eq!(r.weights(&c).await, vec![50.0, 50.0], "{}", r.name);
        assert!(r.trips().is_empty(), "{}: {:?}", r.name, r.trips());
        let e = r.experiment(&c).await;
        assert_eq!(e["source_up"], false);
        assert!(e["guardrails"][0]["state"] != "tripped", "{e}");
    }
    assert!(
        candidate * 3 > served.len() && errors > 0,
        "serving unchanged: {candidate} of {} answers by the candidate, {errors} errors",
        served.len()
    );
    eprintln!(
        "without Prometheus for 6 s: no trip, weights 50/50 on every replica, {candidate} of {} answers by the candidate ({errors} of them 500)",
        served.len()
    );

    // Prometheus back: every replica fresh within two ticks of its first scrape of
    // them (Prometheus applies its targets up to 5 s after it is ready).
    let restarted_at = now();
    cluster.prometheus.spawn().await;
    let ready = now() - restarted_at;
    let newest = format!("max(timestamp(abgate_experiment_srm_evalue)) > {restarted_at}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.prometheus.query(&c, &newest).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the routers again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let scraped = Instant::now();
    let scraped_after = now() - restarted_at;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = 0;
        for r in &cluster.replicas {
            let e = r.experiment(&c).await;
            fresh += usize::from(e["source_up"] == true && e["replicas"] == REPLICAS as u64);
        }
        if fresh == REPLICAS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fresh} of {REPLICAS} replicas back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = scraped.elapsed().as_secs_f64();
    eprintln!(
        "Prometheus restarted: ready after {ready:.2}s, first scrape of the routers after {scraped_after:.2}s, every replica source_up 1 {back:.2}s after that"
    );
    // Two ticks after the first scrape of a router, plus a second: the other routers'
    // first scrapes come up to a scrape interval (1 s) later, and the replicas' ticks
    // and this test's polling share two cores with Prometheus, HAProxy and the arms.
    assert!(
        back <= 2.0 * TICK_MS as f64 / 1000.0 + 1.0,
        "back {back:.2}s after the first scrape: more than two ticks and a scrape interval"
    );
    // And the cluster's guardrail acts again: the failing candidate is rolled back.
    for r in &cluster.replicas {
        eventually(
            &format!("{} rolls the candidate back", r.name),
            Duration::from_secs(30),
            || {
                let (c, r) = (c.clone(), r);
                async move { r.weights(&c).await == vec![50.0, 0.0] }
            },
        )
        .await;
    }
    let _ = traffic.stop().await;
    let e = cluster.replicas[0].experiment(&c).await;
    let history_trip = &e["guardrails"][0]["last_trip"];
    eprintln!(
        "after the restart the cluster's guardrail tripped ({}); {:.1}s in all",
        history_trip["origin"],
        started.elapsed().as_secs_f64()
    );
}

const TOKEN: &str = "cluster-admin-token-0123456789";

/// A replica's config for a rollout: the candidate at 0, ramped through 5, 25 and 50%
/// (then promoted) on its error-rate gate (5 points), a 3 s hold and 30 users a step.
fn rollout_text(prometheus: &str, best: &str, candidate: &str) -> String {
    let text = router_text(prometheus, best, candidate, 0.05)
        .replacen("weight = 50\n", "weight = 100\n", 1)
        .replacen("weight = 50\n", "weight = 0\n", 1);
    format!(
        "{text}[rollout]\narm = \"{CANDIDATE}\"\nsteps = [5, 25, 50]\nmin_step_seconds = 3\n\
         min_users_per_step = 30\non_complete = \"promote\"\n[admin]\ntoken = \"{TOKEN}\"\n"
    )
}

/// Every replica's rollout, polled: each change of (state, step, the candidate's
/// percent of users in force) with when it was first seen.
#[derive(Default)]
struct Watch {
    /// (Unix time, replica, state, step, percent)
    changes: Vec<(f64, usize, String, u64, f64)>,
    now: Vec<(String, u64, f64)>,
}

impl Watch {
    async fn poll(&mut self, c: &HttpClient, replicas: &[Replica]) {
        self.now.resize(replicas.len(), (String::new(), 0, -1.0));
        for (i, r) in replicas.iter().enumerate() {
            let v = c
                .get(&format!("{}/api/rollout", r.url))
                .await
                .map(|r| r.json())
                .unwrap_or(Value::Null);
            let (Some(state), Some(step), Some(percent)) = (
                v["state"].as_str(),
                v["step"].as_u64(),
                v["percent"].as_f64(),
            ) else {
                continue;
            };
            let seen = (state.to_string(), step, percent);
            if self.now[i] != seen {
                self.changes
                    .push((now(), i, state.to_string(), step, percent));
                self.now[i] = seen;
            }
        }
    }

    /// Polls every 100 ms until `done` holds for every replica's (state, step,
    /// percent).
    async fn until(
        &mut self,
        c: &HttpClient,
        replicas: &[Replica],
        what: &str,
        within: Duration,
        done: impl Fn(&str, u64, f64) -> bool,
    ) {
        let deadline = Instant::now() + within;
        loop {
            self.poll(c, replicas).await;
            if self.now.len() == replicas.len() && self.now.iter().all(|(s, k, p)| done(s, *k, *p))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}: {:?}",
                self.now
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// For each replica, when it was first seen with `pred` true at or after `since`;
    /// the first and the last replica's times.
    fn spread(&self, since: f64, pred: impl Fn(&str, u64, f64) -> bool) -> Option<(f64, f64)> {
        let mut first: BTreeMap<usize, f64> = BTreeMap::new();
        for (t, i, s, k, p) in &self.changes {
            if *t >= since && pred(s, *k, *p) {
                first.entry(*i).or_insert(*t);
            }
        }
        if first.len() < REPLICAS {
            return None;
        }
        let lo = first.values().copied().fold(f64::MAX, f64::min);
        let hi = first.values().copied().fold(f64::MIN, f64::max);
        Some((lo, hi))
    }
}

/// `POST /api/rollout/<action>` on one replica, with the Bearer `token` if any.
async fn command(
    c: &HttpClient,
    replica: &Replica,
    action: &str,
    token: Option<&str>,
) -> abgate_common::client::Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    c.send(
        http::Method::POST,
        &format!("{}/api/rollout/{action}", replica.url),
        &headers,
        Bytes::new(),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus and haproxy (.ci/run installs them)"]
async fn a_rollout_moves_every_replica_to_the_same_step_within_two_ticks_and_a_restart_takes_the_clusters_step(
) {
    let _serial = SERIAL.lock().await;
    let started = Instant::now();
    let cluster = Cluster::start_with(|prometheus, best, candidate, _| {
        rollout_text(prometheus, best, candidate)
    })
    .await;
    let mut cluster = cluster;
    let c = client();
    let traffic = Traffic::start(&cluster.proxy.url, 3000);
    let mut watch = Watch::default();
    let moving = |s: &str| s == "running" || s == "paused" || s == "completed";

    // Prometheus stopped on the first step: nothing acts on stale figures, no
    // replica advances although the hold (3 s) passes; back, the ramp goes on.
    watch
        .until(
            &c,
            &cluster.replicas,
            "every replica on 5%",
            Duration::from_secs(60),
            |s, k, p| s == "running" && k == 0 && (p - 5.0).abs() < 1e-9,
        )
        .await;
    cluster.prometheus.kill();
    tokio::time::sleep(Duration::from_millis(3 * TICK_MS)).await;
    let dark = now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    watch.poll(&c, &cluster.replicas).await;
    assert!(
        watch.now.iter().all(|(s, k, _)| s == "running" && *k == 0),
        "a replica moved on stale figures: {:?}",
        watch.now
    );
    assert!(
        !watch
            .changes
            .iter()
            .any(|(t, ..)| *t >= dark - 3.0 * TICK_MS as f64 / 1000.0),
        "{:?}",
        watch.changes
    );
    let v = c
        .get(&format!("{}/api/rollout", cluster.replicas[1].url))
        .await
        .unwrap()
        .json();
    assert!(v["waiting_for"].to_string().contains("not fresh"), "{v}");
    eprintln!(
        "Prometheus down 8 s on the first step: no replica moved; waiting for: {}",
        v["waiting_for"]
    );
    cluster.prometheus.spawn().await;

    // The ramp, to its second step on every replica.
    watch
        .until(
            &c,
            &cluster.replicas,
            "every replica at 25%",
            Duration::from_secs(90),
            |s, k, p| moving(s) && k >= 1 && p >= 25.0 - 1e-9,
        )
        .await;

    // An operator pauses on one replica; another refuses a command without the token.
    let unauthorized = command(&c, &cluster.replicas[1], "pause", None).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED);
    let paused_at = now();
    let r = command(&c, &cluster.replicas[0], "pause", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    watch
        .until(
            &c,
            &cluster.replicas,
            "every replica paused",
            Duration::from_secs(30),
            |s, _, _| s == "paused",
        )
        .await;
    let paused_step = watch.now[0].1;
    assert!(
        watch.now.iter().all(|(_, k, _)| *k == paused_step),
        "{:?}",
        watch.now
    );

    // A replica replaced while paused: a new pod (its ConfigMap's weights, 100/0, no
    // state file) takes the cluster's position before it answers.
    let r2 = &mut cluster.replicas[2];
    r2.kill();
    let _ = std::fs::remove_file(r2.dir.path().join("router.toml.rollout.json"));
    let restarted = Instant::now();
    r2.start().await;
    let ready = restarted.elapsed();
    let v = c
        .get(&format!("{}/api/rollout", r2.url))
        .await
        .unwrap()
        .json();
    let want = [5.0, 25.0, 50.0][paused_step as usize];
    assert_eq!(
        (v["state"].as_str(), v["step"].as_u64()),
        (Some("paused"), Some(paused_step)),
        "{v}"
    );
    assert_eq!(r2.weights(&c).await, vec![100.0 - want, want]);
    let adopted = v["history"]
        .as_array()
        .and_then(|h| h.last())
        .cloned()
        .unwrap_or_default();
    assert_eq!(adopted["by"], "cluster", "{v}");

    // Resumed on another replica; then the ramp to the end.
    let resumed_at = now();
    let r = command(&c, &cluster.replicas[1], "resume", Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    watch
        .until(
            &c,
            &cluster.replicas,
            "every replica resumed",
            Duration::from_secs(30),
            |s, _, _| s != "paused",
        )
        .await;
    watch
        .until(
            &c,
            &cluster.replicas,
            "every replica promoted",
            Duration::from_secs(120),
            |s, _, p| s == "completed" && p >= 100.0 - 1e-9,
        )
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let answers = traffic.stop().await;
    for r in &cluster.replicas {
        assert_eq!(r.weights(&c).await, vec![0.0, 100.0], "{}", r.name);
    }

    // Every move on every replica (as polled every 100 ms): a step or the promotion
    // is scheduled ahead, so the replicas change their weights at the same moment;
    // an operator's command reaches the others through Prometheus (a scrape, then a
    // read: two ticks here).
    let tick = TICK_MS as f64 / 1000.0;
    let mut windows: Vec<(String, f64, f64)> = Vec::new();
    for (k, share) in [(2, 25.0), (3, 50.0)] {
        if let Some((lo, hi)) = watch.spread(0.0, |_, _, p| p >= share - 1e-9) {
            windows.push((format!("step {k}"), lo, hi));
        }
    }
    let (lo, hi) = watch
        .spread(paused_at, |s, _, _| s == "paused")
        .unwrap_or((paused_at, f64::MAX));
    windows.push(("pause".into(), lo, hi));
    let (lo, hi) = watch
        .spread(resumed_at, |s, _, _| s != "paused")
        .unwrap_or((resumed_at, f64::MAX));
    windows.push(("resume".into(), lo, hi));
    let (lo, hi) = watch
        .spread(resumed_at, |_, _, p| p >= 100.0 - 1e-9)
        .unwrap_or((resumed_at, f64::MAX));
    windows.push(("promotion".into(), lo, hi));
    for (what, lo, hi) in &windows {
        eprintln!("{what}: every replica within {:.3}s of the first", hi - lo);
    }
    eprintln!(
        "pause: the last replica paused {:.3}s after the command; restarted replica ready in {:.2}s on the cluster's step",
        windows.iter().find(|w| w.0 == "pause").map_or(0.0, |w| w.2 - paused_at),
        ready.as_secs_f64()
    );
    for (what, lo, hi) in &windows {
        // Scheduled weights: within a tick (the polling and a busy machine); commands:
        // two ticks, plus the polling and the queries.
        let bound = if what == "pause" || what == "resume" {
            2.0 * tick + 1.5
        } else {
            tick
        };
        assert!(
            hi - lo <= bound,
            "{what}: the replicas moved {:.3}s apart (bound {bound:.1}s)",
            hi - lo
        );
    }

    // No user ever moves back from the candidate to the control, whichever replicas
    // their requests reach (every user seen; the replicas change their weights at the
    // same moment).
    let mut by_user: HashMap<u64, Vec<&Answer>> = HashMap::new();
    for a in answers.iter().filter(|a| a.status == 200) {
        by_user.entry(a.user).or_default().push(a);
    }
    let mut candidate_users = 0usize;
    for (u, mine) in &mut by_user {
        mine.sort_by(|a, b| a.sent.total_cmp(&b.sent));
        let Some(first) = mine.iter().position(|a| a.variant == CANDIDATE) else {
            continue;
        };
        candidate_users += 1;
        let back: Vec<f64> = mine[first..]
            .iter()
            .filter(|a| a.variant == BEST)
            .map(|a| a.sent)
            .collect();
        assert!(
            back.is_empty(),
            "user {u} moved back to the control at {back:?} (first candidate answer at {:.3}; moves {windows:?})",
            mine[first].sent
        );
    }
    eprintln!(
        "{} answers, {} users, {candidate_users} saw the candidate, none of them the control afterwards; promoted in {:.1}s",
        answers.len(),
        by_user.len(),
        started.elapsed().as_secs_f64()
    );
}
