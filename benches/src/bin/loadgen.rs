//! `loadgen`: HTTP/1.1 load generator for abgate (closed loop or
//! coordinated-omission-corrected open loop). See `benches/README.md`.
//!
//! Exit codes: 0 ok; 1 the run failed its checks (`--fail-on-errors`, SRM);
//! 2 bad options or the run could not be carried out.

use std::process::ExitCode;

use abgate_bench::loadgen::{run, svg, Config, LoadgenError, RunOutput};
use clap::Parser;

fn main() -> ExitCode {
    let cfg = Config::parse();
    if let Err(e) = cfg.validate() {
        eprintln!("loadgen: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime
        .block_on(run(&cfg))
        .and_then(|out| write_outputs(&cfg, &out).map(|()| out))
    {
        Ok(out) => {
            print!("{}", out.report.render_text());
            let failures = out.report.failures(cfg.fail_on_errors);
            for f in &failures {
                eprintln!("loadgen: FAIL: {f}");
            }
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

fn write_outputs(cfg: &Config, out: &RunOutput) -> Result<(), LoadgenError> {
    if let Some(path) = &cfg.json {
        let mut json = serde_json::to_vec_pretty(&out.report)?;
        json.push(b'\n');
        std::fs::write(path, json).map_err(|source| LoadgenError::Write {
            path: path.clone(),
            source,
        })?;
    }
    if let Some(path) = &cfg.svg {
        let mut series: Vec<(&str, &hdrhistogram::Histogram<u64>)> = out
            .stats
            .arms
            .iter()
            .map(|a| (a.name.as_str(), &a.latency))
            .collect();
        series.sort_by(|a, b| a.0.cmp(b.0));
        series.push(("all answers", &out.stats.overall));
        let title = format!(
            "abgate latency by percentile ({} loop{}, {} connections)",
            out.report.mode,
            out.report
                .requested_rate
                .map(|r| format!(" at {r:.0} req/s"))
                .unwrap_or_default(),
            out.report.connections
        );
        std::fs::write(path, svg::render(&title, &series)).map_err(|source| {
            LoadgenError::Write {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(())
}
