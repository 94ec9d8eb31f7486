//! One request, start to finish, on one connection: pick prediction or feedback,
//! build it, send it, and record the outcome in the connection's [`TaskStats`].
//! Shared by the closed and open loops; they differ only in `intended`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Method, Request};
use serde::Deserialize;
use tokio::time::Instant;

use super::conn::{with_timeout, Connection, SendError, Target};
use super::error::LoadgenError;
use super::progress::Progress;
use super::stats::{record, TaskStats};
use super::workload::{user_id, Workload};

/// A send later than this behind its intended time counts as a late send.
pub const LATE_THRESHOLD: Duration = Duration::from_millis(1);

/// Read-only state shared by all connection tasks.
#[derive(Debug)]
pub struct Shared {
    /// Where to send.
    pub target: Target,
    /// What to send.
    pub workload: Workload,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Progress counters.
    pub progress: Arc<Progress>,
    /// Whether latency is measured from a schedule (open loop).
    pub open_loop: bool,
}

#[derive(Deserialize)]
struct PredictionBody {
    prediction_id: Option<String>,
}

/// A connection task's request loop state.
pub struct Worker {
    shared: Arc<Shared>,
    conn: Connection,
    stats: TaskStats,
    /// Most recent successful prediction on this connection: (id, user).
    last_prediction: Option<(String, u32)>,
    feedback_sent: u64,
}

impl Worker {
    /// A worker over `conn` (possibly already connected).
    pub fn new(shared: Arc<Shared>, conn: Connection) -> Result<Self, LoadgenError> {
        Ok(Worker {
            shared,
            conn,
            stats: TaskStats::new()?,
            last_prediction: None,
            feedback_sent: 0,
        })
    }

    /// Mutable access to the statistics (to count unsent requests).
    pub fn stats_mut(&mut self) -> &mut TaskStats {
        &mut self.stats
    }

    /// The statistics gathered.
    pub fn into_stats(self) -> TaskStats {
        self.stats
    }

    /// Sends request `k`, whose latency is measured from `intended`.
    pub async fn request(&mut self, k: u64, intended: Instant) -> Result<(), LoadgenError> {
        let shared = Arc::clone(&self.shared);
        let workload = &shared.workload;
        // A prediction takes one feedback, from its own user (the arm refuses a repeat
        // with 409 and another user's with 403).
        let (user, feedback, body) = match self.last_prediction.take() {
            Some((id, user)) if workload.is_feedback(k) => {
                let body = workload.feedback_body(&id, self.feedback_sent)?;
                self.feedback_sent += 1;
                (user, true, body)
            }
            kept => {
                self.last_prediction = kept;
                (workload.user_of(k), false, workload.predict_body(k))
            }
        };
        self.stats.requests += 1;
        let Ok(req) = build_request(&shared.target, feedback, user, body) else {
            // Cannot happen with the ids and bodies we build; counted, not raised.
            self.stats.connection_errors += 1;
            shared.progress.finish(true);
            return Ok(());
        };

        let conn = &mut self.conn;
        let result = with_timeout(shared.timeout, async {
            conn.ready().await?;
            let sent = Instant::now();
            conn.send(req).await.map(|r| (sent, r))
        })
        .await;

        let (sent, resp) = match result {
            Ok(ok) => ok,
            Err(SendError::Timeout) => {
                self.conn.reset();
                self.stats.timeouts += 1;
                shared.progress.finish(true);
                return Ok(());
            }
            Err(SendError::Connection) => {
                self.stats.connection_errors += 1;
                shared.progress.finish(true);
                // Do not spin on a refused port.
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Ok(());
            }
        };
        let latency = Instant::now().saturating_duration_since(intended);
        if shared.open_loop {
            let lag = sent.saturating_duration_since(intended);
            record(&mut self.stats.send_lag, lag);
            if lag > LATE_THRESHOLD {
                self.stats.late_sends += 1;
            }
        }
        record(&mut self.stats.overall, latency);

        let status = resp.status();
        if !status.is_success() {
            *self.stats.status_errors.entry(status.as_u16()).or_insert(0) += 1;
            shared.progress.finish(true);
            return Ok(());
        }
        shared.progress.finish(false);
        if feedback {
            record(&mut self.stats.feedback, latency);
            return Ok(());
        }
        match resp
            .headers()
            .get("x-variant")
            .and_then(|v| v.to_str().ok())
        {
            Some(arm) => self.stats.record_prediction(arm, user, latency)?,
            None => self.stats.missing_variant += 1,
        }
        if workload.has_feedback() {
            if let Ok(PredictionBody {
                prediction_id: Some(id),
            }) = serde_json::from_slice(resp.body())
            {
                self.last_prediction = Some((id, user));
            }
        }
        Ok(())
    }
}

fn build_request(
    target: &Target,
    feedback: bool,
    user: u32,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let path = if feedback { "/feedback" } else { "/predict" };
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(HOST, target.host.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .header("x-user-id", user_id(user))
        .body(Full::new(body))
}
