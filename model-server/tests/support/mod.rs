//! The model server in-process on port 0, for the model server's integration tests:
//! start it on an arm's model, ask it, scrape it, stop it. Each test file adds the
//! requests of its own subject (`impl Server` blocks beside its tests).
#![allow(dead_code)]

use abgate_common::client::{HttpClient, Reply};
use abgate_model_server::ServerConfig;
use http::Method;
use prometheus_parse::{Scrape, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One wine's features, as `/predict` takes them.
pub const FEATURES: &str = r#"{"fixed_acidity": 7.4, "volatile_acidity": 0.7, "citric_acid": 0, "residual_sugar": 1.9, "chlorides": 0.076, "free_sulfur_dioxide": 11, "total_sulfur_dioxide": 34, "density": 0.9978, "ph": 3.51, "sulphates": 0.56, "alcohol": 9.4}"#;

/// A model server running in this process.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// A client for it.
    pub client: HttpClient,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The server of `arm`'s shipped model, with `extra` config lines.
    pub async fn start(arm: &str, extra: &str) -> Server {
        let text = format!(
            "variant = \"{arm}\"\nlisten = \"127.0.0.1:0\"\nmodel_dir = \"{}\"\nbody_limit_bytes = 65536\nmax_batch_size = 64\n{extra}",
            repo().join("models").join(arm).display()
        );
        let config =
            ServerConfig::parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        Self::start_with(config).await
    }

    /// The server of `config`, on a free port.
    pub async fn start_with(config: ServerConfig) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = abgate_model_server::run(config, listener, shutdown).await {
                panic!("server failed: {e}");
            }
        });
        Server {
            url,
            client: HttpClient::new(Duration::from_secs(10)),
            stop: Some(stop),
            done,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// One request.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl AsRef<[u8]>,
    ) -> Reply {
        let body = bytes::Bytes::copy_from_slice(body.as_ref());
        self.client
            .send(method, &format!("{}{path}", self.url), headers, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], b"").await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &str) -> Reply {
        self.post_with(path, &[], body).await
    }

    /// `POST path` with a JSON body and `headers`.
    pub async fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, path, &all, body).await
    }

    /// `/metrics`, parsed.
    pub async fn scrape(&self) -> Scrape {
        let text = self.get("/metrics").await.text();
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Asks it to stop without waiting: its URL, and the task to await for the end.
    pub fn begin_stop(mut self) -> (String, tokio::task::JoinHandle<()>) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (self.url, self.done)
    }

    /// Stops it and waits (up to 15 s) for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.done).await;
    }
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn counter(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}
