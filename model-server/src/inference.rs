//! Runs forward passes: small requests right on the HTTP worker that parsed them
//! (a forward pass of a few rows costs a microsecond or two, less than handing it to
//! another thread and waking the request up again), larger ones on dedicated threads,
//! off the async workers.
//!
//! Requests for the threads queue jobs on a bounded channel (a full queue sheds the request with
//! 503 `overloaded` instead of growing memory). Each worker takes one job and, if
//! more are already waiting, drains them up to `max_batch_rows` (0 turns this off)
//! and runs them as one forward pass: batching happens only when requests are
//! actually concurrent, so an idle server adds no wait.

use abgate_common::{ApiError, ErrorKind};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

use crate::model::Model;

type Reply = oneshot::Sender<Result<Vec<f32>, String>>;

struct Job {
    values: Vec<f32>,
    rows: usize,
    reply: Reply,
}

/// Handle to the inference threads; dropping it stops them.
pub struct Inference {
    queue: SyncSender<Job>,
    capacity: usize,
    model: Arc<Model>,
    inline_rows: usize,
}

impl Inference {
    /// Starts `threads` workers sharing `model`, with room for `queue` waiting jobs;
    /// requests of up to `inline_rows` rows are computed by the caller instead.
    pub fn start(
        model: Arc<Model>,
        threads: usize,
        queue: usize,
        inline_rows: usize,
        max_batch_rows: usize,
    ) -> std::io::Result<Inference> {
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = Arc::clone(&rx);
            let model = Arc::clone(&model);
            std::thread::Builder::new()
                .name(format!("inference-{i}"))
                .spawn(move || worker(&model, &rx, max_batch_rows))?;
        }
        Ok(Inference {
            queue: tx,
            capacity: queue,
            model,
            inline_rows,
        })
    }

    /// Predicts `rows` rows (raw features, row after row). Every prediction is
    /// finite: one that is not makes the whole request an `internal` error.
    pub async fn predict(&self, values: Vec<f32>, rows: usize) -> Result<Vec<f32>, ApiError> {
        self.forward(values, rows).await.and_then(all_finite)
    }

    async fn forward(&self, values: Vec<f32>, rows: usize) -> Result<Vec<f32>, ApiError> {
        if rows <= self.inline_rows {
            return self
                .model
                .predict(values, rows)
                .map_err(|e| forward_failed(&e.to_string()));
        }
        let (reply, answer) = oneshot::channel();
        match self.queue.try_send(Job {
            values,
            rows,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(ApiError::new(
                    ErrorKind::Overloaded,
                    format!(
                        "inference queue is full ({} jobs waiting); retry later",
                        self.capacity
                    ),
                ))
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(ApiError::new(
                    ErrorKind::Internal,
                    "inference threads stopped",
                ))
            }
        }
        match answer.await {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(forward_failed(&e)),
            Err(_) => Err(ApiError::new(
                ErrorKind::Internal,
                "inference thread dropped the request",
            )),
        }
    }

    /// Capacity of the queue.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// `out`, unless a prediction in it is NaN or infinite (a model overflowing on an
/// extreme but finite input): never answered as `null`, never fed to a metric.
pub fn all_finite(out: Vec<f32>) -> Result<Vec<f32>, ApiError> {
    match out.iter().position(|p| !p.is_finite()) {
        None => Ok(out),
        Some(row) => Err(ApiError::new(
            ErrorKind::Internal,
            format!(
                "the model's prediction for row {row} is not finite ({}): the input is beyond what the model can compute",
                out[row]
            ),
        )),
    }
}

fn forward_failed(reason: &str) -> ApiError {
    ApiError::new(
        ErrorKind::Internal,
        format!("forward pass failed: {reason}"),
    )
}

fn worker(model: &Model, rx: &Mutex<Receiver<Job>>, max_batch_rows: usize) {
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => jobs.push(job),
                Err(_) => return,
            }
            let mut rows = jobs[0].rows;
            while rows < max_batch_rows {
                match rx.try_recv() {
                    Ok(job) => {
                        rows += job.rows;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        if jobs.len() == 1 {
            if let Some(job) = jobs.pop() {
                let out = model
                    .predict(job.values, job.rows)
                    .map_err(|e| e.to_string());
                let _ = job.reply.send(out);
            }
            continue;
        }
        let total: usize = jobs.iter().map(|j| j.rows).sum();
        let mut values = Vec::with_capacity(jobs.iter().map(|j| j.values.len()).sum());
        for job in &jobs {
            values.extend_from_slice(&job.values);
        }
        match model.predict(values, total) {
            Ok(out) => {
                let mut offset = 0;
                for job in jobs.drain(..) {
                    let part = out
                        .get(offset..offset + job.rows)
                        .map(<[f32]>::to_vec)
                        .ok_or_else(|| "forward pass returned too few rows".to_string());
                    offset += job.rows;
                    let _ = job.reply.send(part);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn model() -> Arc<Model> {
        shipped("candidate_model")
    }

    fn shipped(name: &str) -> Arc<Model> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join(name);
        Arc::new(Model::load(&dir).unwrap_or_else(|e| panic!("{e}")))
    }

    fn row(i: usize) -> Vec<f32> {
        (0..11).map(|j| (i * 11 + j) as f32 * 0.1).collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_requests_batched_on_the_threads_each_get_their_own_rows_back() {
        let model = model();
        let inference = Arc::new(
            Inference::start(Arc::clone(&model), 1, 1024, 0, 64).unwrap_or_else(|e| panic!("{e}")),
        );
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let inference = Arc::clone(&inference);
                let rows = 1 + i % 3;
                tokio::spawn(async move {
                    let values: Vec<f32> = (0..rows).flat_map(|r| row(i + r)).collect();
                    (i, rows, inference.predict(values, rows).await)
                })
            })
            .collect();
        for task in tasks {
            let (i, rows, got) = task.await.unwrap_or_else(|e| panic!("{e}"));
            let got = got.unwrap_or_else(|e| panic!("{e}"));
            let alone: Vec<f32> = (0..rows)
                .flat_map(|r| model.predict(row(i + r), 1).unwrap_or_default())
                .collect();
            assert_eq!(got.len(), rows);
            for (g, a) in got.iter().zip(&alone) {
                assert!((g - a).abs() < 1e-4, "request {i}: {got:?} vs {alone:?}");
            }
        }
    }

    #[test]
    fn a_prediction_that_is_not_finite_is_an_internal_error() {
        assert_eq!(all_finite(vec![5.0, 6.5]), Ok(vec![5.0, 6.5]));
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = all_finite(vec![5.0, bad]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Internal);
            assert!(err.message.contains("row 1"), "{}", err.message);
        }
    }

    #[tokio::test]
    async fn an_overflowing_row_fails_inline_and_on_the_threads() {
        // ReLU layers pass an overflow on (the candidate's tanh would saturate it).
        let model = shipped("best_model");
        // Up to 1 row inline, more on the thread.
        let inference =
            Inference::start(Arc::clone(&model), 1, 4, 1, 64).unwrap_or_else(|e| panic!("{e}"));
        let mut bad = row(1);
        bad[7] = 1e38;
        let out = model.predict(bad.clone(), 1).unwrap_or_default();
        assert!(!out[0].is_finite(), "precondition: {out:?}");
        let inline = inference.predict(bad.clone(), 1).await;
        assert_eq!(inline.map_err(|e| e.kind), Err(ErrorKind::Internal));
        let values: Vec<f32> = row(2).into_iter().chain(bad).collect();
        let threaded = inference.predict(values, 2).await;
        assert_eq!(threaded.map_err(|e| e.kind), Err(ErrorKind::Internal));
    }

    #[tokio::test]
    async fn inline_and_threaded_forward_passes_give_the_models_own_answer() {
        let model = model();
        // Up to 2 rows inline, more on the thread.
        let inference =
            Inference::start(Arc::clone(&model), 1, 1, 2, 64).unwrap_or_else(|e| panic!("{e}"));
        let small = inference.predict(row(1), 1).await.unwrap_or_default();
        assert_eq!(small, model.predict(row(1), 1).unwrap_or_default());
        let values: Vec<f32> = (0..5).flat_map(row).collect();
        let large = inference
            .predict(values.clone(), 5)
            .await
            .unwrap_or_default();
        assert_eq!(large, model.predict(values, 5).unwrap_or_default());
    }
}
