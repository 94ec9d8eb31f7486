//! Test harness shared by the integration tests: real model-server processes on free
//! ports, the router in-process on port 0, stub arms for fault injection.
#![allow(dead_code)]

use abgate_common::client::{HttpClient, Reply};
use abgate_router::{Router, RouterConfig};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::Full;
use hyper::body::Incoming;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub const FEATURES: &str = r#"{"fixed_acidity": 7.4, "volatile_acidity": 0.7, "citric_acid": 0, "residual_sugar": 1.9, "chlorides": 0.076, "free_sulfur_dioxide": 11, "total_sulfur_dioxide": 34, "density": 0.9978, "ph": 3.51, "sulphates": 0.56, "alcohol": 9.4}"#;

pub fn predict_body() -> String {
    format!("{{\"features\": {FEATURES}}}")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn abgate() -> &'static str {
    env!("CARGO_BIN_EXE_abgate")
}

/// A port nobody listens on right now (bind to 0, read, release). Only used where a
/// separate process must be told its port up front.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

pub fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(15))
}

/// Polls `url` until it answers 200.
pub async fn wait_ok(url: &str, within: Duration) {
    let c = HttpClient::new(Duration::from_secs(1));
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = c.get(url).await {
            if r.status == StatusCode::OK {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `check` holds.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real `abgate model-server` process, killed on drop.
pub struct ArmProcess {
    pub name: String,
    pub port: u16,
    pub url: String,
    child: Option<Child>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl ArmProcess {
    pub async fn start(arm: &str) -> ArmProcess {
        Self::start_on(arm, free_port()).await
    }

    pub async fn start_on(arm: &str, port: u16) -> ArmProcess {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let config = dir.path().join(format!("{arm}.toml"));
        std::fs::write(
            &config,
            format!(
                "variant = \"{arm}\"\nlisten = \"127.0.0.1:{port}\"\nmodel_dir = \"{}\"\nshutdown_grace_ms = 3000\n",
                repo().join("models").join(arm).display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut arm_process = ArmProcess {
            name: arm.to_string(),
            port,
            url: format!("http://127.0.0.1:{port}"),
            child: None,
            config,
            _dir: dir,
        };
        arm_process.spawn().await;
        arm_process
    }

    async fn spawn(&mut self) {
        let child = Command::new(abgate())
            .args(["model-server", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        self.child = Some(child);
        wait_ok(&format!("{}/api/health", self.url), Duration::from_secs(30)).await;
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }
}

impl Drop for ArmProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A listener on a free loopback port, and its `http://` URL.
pub async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    (listener, url)
}

/// Router config text for `arms` (name, url, weight) with test-friendly timings.
///
/// Health checks run every 200 ms and one failed check marks an arm down, so a killed
/// arm (refused at once) is noticed quickly; but a check waits up to 5 s for an answer,
/// and (unless the test has an `[upstream]` table of its own) a connection to an arm
/// may take 5 s too. On a busy machine a healthy arm, or the router itself, can be off
/// the CPU for longer than the defaults' few hundred ms, and a check or a connection
/// timing out marks the arm down: with one arm (or failover off) requests then fail.
pub fn router_toml(arms: &[(&str, &str, f64)], extra_top: &str, extra_tables: &str) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\n{extra_top}\n[experiment]\nname = \"test\"\nsalt = \"wine-2026-11\"\n"
    );
    for (name, url, weight) in arms {
        text.push_str(&format!(
            "[[arms]]\nname = \"{name}\"\nurl = \"{url}\"\nweight = {weight}\n"
        ));
    }
    if !extra_tables.contains("[health]") {
        text.push_str("[health]\ninterval_ms = 200\ntimeout_ms = 5000\nunhealthy_threshold = 1\nhealthy_threshold = 1\n");
    }
    if !extra_tables.contains("[upstream]") {
        text.push_str("[upstream]\nconnect_timeout_ms = 5000\n");
    }
    if !extra_tables.contains("[reload]") {
        text.push_str("[reload]\npoll_interval_ms = 50\n");
    }
    text.push_str(extra_tables);
    text
}

/// The router, in-process on port 0, reading its config from a temp file.
pub struct RouterHandle {
    pub url: String,
    pub router: Arc<Router>,
    pub file: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl RouterHandle {
    pub async fn start(text: &str) -> RouterHandle {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("router.toml");
        std::fs::write(&file, text).unwrap_or_else(|e| panic!("{e}"));
        let config = RouterConfig::load(&file).unwrap_or_else(|e| panic!("{e}"));
        let router = Router::new(config, abgate_router::state::config_hash(text))
            .unwrap_or_else(|e| panic!("{e}"));
        let (listener, url) = listen().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let served = Arc::clone(&router);
        let done = tokio::spawn(async move {
            abgate_router::serve(served, listener, async {
                let _ = stopped.await;
            })
            .await;
        });
        let handle = RouterHandle {
            url,
            router,
            file,
            stop: Some(stop),
            done: Some(done),
            _dir: dir,
        };
        // Ready once it answers at all (health may be 503 when every arm is down).
        let c = HttpClient::new(Duration::from_secs(2));
        eventually("router answers", Duration::from_secs(10), || {
            let c = c.clone();
            let u = format!("{}/api/config", handle.url);
            async move { c.get(&u).await.is_ok() }
        })
        .await;
        handle
    }

    /// Replaces the config file atomically (write + rename, as editors do).
    pub fn rewrite(&self, text: &str) {
        let tmp = self.file.with_extension("toml.tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("{e}"));
        std::fs::rename(&tmp, &self.file).unwrap_or_else(|e| panic!("{e}"));
    }

    pub async fn predict(&self, c: &HttpClient, user: &str) -> Reply {
        c.post_json(
            &format!("{}/predict", self.url),
            &[("x-user-id", user)],
            predict_body(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The router's `/metrics` text.
    pub async fn metrics(&self, c: &HttpClient) -> String {
        c.get(&format!("{}/metrics", self.url))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
    }

    /// Waits until config version `version` is active.
    pub async fn wait_for_version(&self, version: u64, what: &str) {
        let c = HttpClient::new(Duration::from_secs(2));
        eventually(what, Duration::from_secs(10), || {
            let (c, url) = (c.clone(), format!("{}/api/config", self.url));
            async move {
                c.get(&url)
                    .await
                    .map(|r| r.json()["version"] == version)
                    .unwrap_or(false)
            }
        })
        .await;
    }

    pub async fn get_json(&self, c: &HttpClient, path: &str) -> serde_json::Value {
        c.get(&format!("{}{path}", self.url))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), d).await;
        }
    }
}

/// The value of a sample in Prometheus text (sum over series matching `labels`).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("{e}"));
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A stub arm for fault injection: healthy `/api/health`, and `/predict` answered by
/// `behaviour` after `delay`.
pub struct StubArm {
    pub url: String,
    received: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

impl StubArm {
    pub async fn start(delay: Duration, status: StatusCode) -> StubArm {
        let (listener, url) = listen().await;
        let (stop, stopped) = oneshot::channel::<()>();
        let received = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&received);
        tokio::spawn(abgate_common::http::serve(
            listener,
            move |req: Request<Incoming>| {
                let counted = Arc::clone(&counted);
                async move {
                    if req.uri().path() == "/api/health" {
                        return Response::new(Full::new(Bytes::from_static(
                            b"{\"status\":\"healthy\"}",
                        )));
                    }
                    counted.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let mut r = Response::new(Full::new(Bytes::from_static(
                        b"{\"prediction\": 1.0, \"variant\": \"stub\"}",
                    )));
                    *r.status_mut() = status;
                    r
                }
            },
            async {
                let _ = stopped.await;
            },
            abgate_common::http::ServeOptions {
                shutdown_grace: Duration::from_millis(100),
                ..Default::default()
            },
        ));
        StubArm {
            url,
            received,
            stop: Some(stop),
        }
    }

    /// `/predict` requests received so far (counted on arrival, before the delay).
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for StubArm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// Resident memory of a process, in KiB (from /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Spawns `abgate router --config <config>` listening on `port` (the environment
/// overrides the file's `listen`), quiet; the caller waits for it to answer.
pub fn spawn_router(config: &Path, port: u16) -> Child {
    Command::new(abgate())
        .args(["router", "--config"])
        .arg(config)
        .env("ABGATE_ROUTER_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start the router: {e}"))
}

/// A real `abgate router` process on a free port, killed on drop.
pub struct RouterProcess {
    pub url: String,
    pub file: PathBuf,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl RouterProcess {
    /// Starts the router binary with `text` (whose `listen` must be `127.0.0.1:0`; it
    /// is replaced by a free port).
    pub async fn start(text: &str) -> RouterProcess {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let file = dir.path().join("router.toml");
        let port = free_port();
        std::fs::write(
            &file,
            text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(abgate())
            .args(["router", "--config"])
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!("http://127.0.0.1:{port}");
        let router = RouterProcess {
            url,
            file,
            child: Some(child),
            _dir: dir,
        };
        let c = HttpClient::new(Duration::from_secs(2));
        eventually("router process answers", Duration::from_secs(30), || {
            let (c, u) = (c.clone(), format!("{}/api/config", router.url));
            async move { c.get(&u).await.is_ok() }
        })
        .await;
        router
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A stub arm answering `/predict` 200, except every `fail_every`-th request (counted
/// per process) with 500; feedback is acknowledged without `absolute_error`.
pub struct FlakyArm {
    /// Its URL.
    pub url: String,
    /// `/predict` requests answered so far.
    pub served: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
}

impl FlakyArm {
    /// Arm `name`, failing every `fail_every`-th prediction (0: never).
    pub async fn start(name: &'static str, fail_every: u64) -> FlakyArm {
        let (listener, url) = listen().await;
        let served = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel::<()>();
        let counter = Arc::clone(&served);
        tokio::spawn(abgate_common::http::serve(
            listener,
            move |req: Request<Incoming>| {
                let counter = Arc::clone(&counter);
                async move {
                    let path = req.uri().path().to_string();
                    let _ = req.into_body().collect().await;
                    if path == "/api/health" {
                        return Response::new(Full::new(Bytes::from_static(
                            b"{\"status\":\"healthy\"}",
                        )));
                    }
                    if path == "/feedback" {
                        return Response::new(Full::new(Bytes::from(format!(
                            "{{\"status\":\"recorded\",\"variant\":\"{name}\"}}"
                        ))));
                    }
                    let i = counter.fetch_add(1, Ordering::Relaxed) + 1;
                    if fail_every > 0 && i % fail_every == 0 {
                        let mut r = Response::new(Full::new(Bytes::from_static(
                            b"{\"error\":{\"type\":\"internal\",\"message\":\"injected\"}}",
                        )));
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        return r;
                    }
                    Response::new(Full::new(Bytes::from(format!(
                        "{{\"prediction\": 5.5, \"prediction_id\": \"{name}-1-{i}\", \"variant\": \"{name}\"}}"
                    ))))
                }
            },
            async {
                let _ = stopped.await;
            },
            abgate_common::http::ServeOptions {
                shutdown_grace: Duration::from_millis(100),
                ..Default::default()
            },
        ));
        FlakyArm {
            url,
            served,
            stop: Some(stop),
        }
    }
}

impl Drop for FlakyArm {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A model server behind a front that answers 500 (`internal`) to every
/// `fail_every`-th `/predict` (counted per process, so independent of the user; 0:
/// none, settable while it runs) and forwards everything else, echoing the request id
/// as the arm would: the same model, `1 / fail_every` worse on errors.
pub struct FaultyFront {
    /// Its URL.
    pub url: String,
    fail_every: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl FaultyFront {
    /// A front to `upstream`, failing nothing yet.
    pub async fn start(upstream: &str) -> FaultyFront {
        let (listener, url) = listen().await;
        let fail_every = Arc::new(AtomicU64::new(0));
        let seen = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let upstream = upstream.to_string();
        let (every, client) = (
            Arc::clone(&fail_every),
            HttpClient::new(Duration::from_secs(10)),
        );
        tokio::spawn(abgate_common::http::serve(
            listener,
            move |req: Request<Incoming>| {
                let (every, seen, client, upstream) = (
                    Arc::clone(&every),
                    Arc::clone(&seen),
                    client.clone(),
                    upstream.clone(),
                );
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let header = |n: &str| {
                        parts
                            .headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let request_id = header("x-request-id");
                    let n = every.load(Ordering::Relaxed);
                    if parts.uri.path() == "/predict"
                        && n > 0
                        && seen.fetch_add(1, Ordering::Relaxed) % n == 0
                    {
                        let mut r = Response::new(Full::new(Bytes::from_static(
                            b"{\"error\":{\"type\":\"internal\",\"message\":\"injected\"}}",
                        )));
                        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                        if let Ok(v) = http::HeaderValue::from_str(&request_id) {
                            r.headers_mut().insert("x-request-id", v);
                        }
                        return r;
                    }
                    let mut headers: Vec<(String, String)> = Vec::new();
                    for name in ["content-type", "x-request-id", "x-user-id"] {
                        let v = header(name);
                        if !v.is_empty() {
                            headers.push((name.to_string(), v));
                        }
                    }
                    let refs: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let target = format!("{upstream}{}", parts.uri.path());
                    match client
                        .send(parts.method.clone(), &target, &refs, body)
                        .await
                    {
                        Ok(reply) => {
                            let mut r = Response::new(Full::new(reply.body));
                            *r.status_mut() = reply.status;
                            for (k, v) in &reply.headers {
                                if !["content-length", "transfer-encoding", "connection"]
                                    .contains(&k.as_str())
                                {
                                    r.headers_mut().insert(k.clone(), v.clone());
                                }
                            }
                            r
                        }
                        Err(_) => {
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::BAD_GATEWAY;
                            r
                        }
                    }
                }
            },
            async {
                let _ = stopped.await;
            },
            abgate_common::http::ServeOptions {
                shutdown_grace: Duration::from_millis(100),
                ..Default::default()
            },
        ));
        FaultyFront {
            url,
            fail_every,
            stop: Some(stop),
        }
    }

    /// Fails every `n`-th prediction from now on (0: none).
    pub fn fail_every(&self, n: u64) {
        self.fail_every.store(n, Ordering::Relaxed);
    }
}

impl Drop for FaultyFront {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
