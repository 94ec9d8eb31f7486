//! Runs forward passes on dedicated threads, off the async workers.
//!
//! Requests queue jobs on a bounded channel (a full queue sheds the request with
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
}

impl Inference {
    /// Starts `threads` workers sharing `model`, with room for `queue` waiting jobs.
    pub fn start(
        model: Arc<Model>,
        threads: usize,
        queue: usize,
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
        })
    }

    /// Predicts `rows` rows (raw features, row after row).
    pub async fn predict(&self, values: Vec<f32>, rows: usize) -> Result<Vec<f32>, ApiError> {
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
            Ok(Err(e)) => Err(ApiError::new(
                ErrorKind::Internal,
                format!("forward pass failed: {e}"),
            )),
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
