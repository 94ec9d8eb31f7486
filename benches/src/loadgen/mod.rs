//! `loadgen`: an HTTP/1.1 load generator for abgate, with closed-loop and
//! coordinated-omission-corrected open-loop modes, per-arm latency from the
//! `X-Variant` header, a stickiness check and a sample-ratio-mismatch test.
//!
//! The binary (`src/bin/loadgen.rs`) parses a [`Config`], calls [`run`], and writes
//! the [`Report`] as text, JSON and optionally SVG.

pub mod closed_loop;
pub mod config;
pub mod conn;
pub mod error;
pub mod open_loop;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod srm;
pub mod stats;
pub mod svg;
pub mod worker;
pub mod workload;

pub use config::{Config, Mode};
pub use error::LoadgenError;
pub use report::Report;
pub use run::{run, RunOutput};
