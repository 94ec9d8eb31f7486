//! Command-line configuration of `loadgen` and the small parsers it needs
//! (durations like `10s`/`500ms`, weights like `best_model=90,candidate_model=10`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Each connection sends its next request as soon as the previous answer
    /// arrives: measures maximum throughput.
    Closed,
    /// Requests are scheduled at a constant rate; latency is measured from each
    /// request's intended send time (coordinated-omission corrected).
    Open,
}

impl Mode {
    /// The mode's name as written on the command line and in the JSON report.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
        }
    }
}

/// `loadgen` options. See `benches/README.md`, section "loadgen".
#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "HTTP/1.1 load generator for abgate: closed loop or coordinated-omission-corrected open loop, per-arm latency, stickiness and SRM checks"
)]
pub struct Config {
    /// Base URL of the router (or any arm): http://host[:port]
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,

    /// closed: next request as soon as the answer arrives; open: constant --rate.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,

    /// Number of keep-alive connections (exact: one task and one TCP connection each).
    #[arg(long, default_value_t = 50)]
    pub connections: usize,

    /// How long to generate load (e.g. 10s, 500ms, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Open loop: requests per second over all connections.
    #[arg(long)]
    pub rate: Option<f64>,

    /// Size of the user pool (`user-0` .. `user-N-1`, sent as X-User-Id, cycled).
    #[arg(long, default_value_t = 10_000)]
    pub users: u32,

    /// Share of requests sent as POST /feedback for a recent prediction (0..1).
    #[arg(long, default_value_t = 0.0)]
    pub feedback_ratio: f64,

    /// Configured split, e.g. best_model=90,candidate_model=10: enables the SRM test.
    #[arg(long, value_parser = parse_weights)]
    pub weights: Option<Weights>,

    /// SRM significance level: the run fails when the SRM p-value is below it.
    #[arg(long, default_value_t = 0.001)]
    pub srm_alpha: f64,

    /// Per-request timeout (connect + answer + body).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,

    /// Runtime worker threads (default: the number of cores).
    #[arg(long)]
    pub threads: Option<usize>,

    /// Write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Write an SVG chart of latency by percentile per arm to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,

    /// Exit non-zero if any request failed or any user was seen on two arms.
    #[arg(long)]
    pub fail_on_errors: bool,

    /// Do not print the once-per-second progress line on stderr.
    #[arg(long)]
    pub no_progress: bool,
}

impl Config {
    /// Checks the combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.users == 0 {
            return Err("--users must be at least 1".into());
        }
        if self.duration.is_zero() {
            return Err("--duration must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.feedback_ratio) {
            return Err("--feedback-ratio must be within 0..1".into());
        }
        if !(self.srm_alpha > 0.0 && self.srm_alpha < 1.0) {
            return Err("--srm-alpha must be within (0, 1)".into());
        }
        match (self.mode, self.rate) {
            (Mode::Open, None) => Err("--mode open needs --rate".into()),
            (Mode::Open, Some(r)) if !(r.is_finite() && r > 0.0) => {
                Err("--rate must be a positive number".into())
            }
            (Mode::Closed, Some(_)) => Err("--rate only applies to --mode open".into()),
            _ => Ok(()),
        }
    }

    /// Worker threads to give the runtime.
    pub fn worker_threads(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }
}

/// Configured arm weights, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights(pub Vec<(String, f64)>);

impl Weights {
    /// Normalized shares (sum 1), in the order given.
    pub fn shares(&self) -> Vec<(String, f64)> {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        self.0
            .iter()
            .map(|(n, w)| (n.clone(), if total > 0.0 { w / total } else { 0.0 }))
            .collect()
    }
}

/// Parses `name=weight[,name=weight...]`; weights are non-negative, at least one
/// positive, names unique.
pub fn parse_weights(s: &str) -> Result<Weights, String> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("{part:?}: empty arm name"));
        }
        let w: f64 = w
            .trim()
            .parse()
            .map_err(|e| format!("{part:?}: weight: {e}"))?;
        if !(w.is_finite() && w >= 0.0) {
            return Err(format!("{part:?}: weight must be a finite number >= 0"));
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(format!("arm {name:?} given twice"));
        }
        out.push((name.to_string(), w));
    }
    if out.is_empty() {
        return Err("no arms given".into());
    }
    if out.iter().all(|(_, w)| *w == 0.0) {
        return Err("at least one weight must be positive".into());
    }
    Ok(Weights(out))
}

/// Parses a duration: a number with unit `ms`, `s`, `m` or `h` (a bare number is
/// seconds), e.g. `10s`, `1.5s`, `500ms`, `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit (ms, s, m, h)"))?;
    let secs = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("{s:?}: unknown unit {other:?} (ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5x").is_err());
    }

    #[test]
    fn weights_parse_and_normalize() {
        let w = parse_weights("best_model=90,candidate_model=10").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            w.shares(),
            vec![
                ("best_model".to_string(), 0.9),
                ("candidate_model".to_string(), 0.1)
            ]
        );
        assert!(parse_weights("a=1,a=2").is_err());
        assert!(parse_weights("a=0").is_err());
        assert!(parse_weights("a").is_err());
        assert!(parse_weights("a=-1").is_err());
    }

    #[test]
    fn open_mode_needs_rate() {
        let c =
            Config::try_parse_from(["loadgen", "--mode", "open"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.validate().is_err());
        let c = Config::try_parse_from(["loadgen", "--mode", "open", "--rate", "1000"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.validate(), Ok(()));
    }
}
