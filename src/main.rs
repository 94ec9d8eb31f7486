//! The `abgate` binary: thin glue that parses the command line, sets up logging and
//! hands over to the crates (`up`, `router`, `model-server`, `train`, `check`,
//! `healthcheck`).

mod up;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "abgate",
    version,
    about = "A/B traffic-splitting gateway for ML models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the whole local stack: both model servers and the router.
    Up {
        /// Directory holding router.toml, best_model.toml and candidate_model.toml.
        #[arg(long, default_value = "config")]
        config_dir: PathBuf,
    },
    /// Run the router (the front door).
    Router {
        /// Router config file.
        #[arg(long, default_value = "config/router.toml")]
        config: PathBuf,
    },
    /// Run one model server (one arm).
    ModelServer {
        /// Model server config file.
        #[arg(long, default_value = "config/best_model.toml")]
        config: PathBuf,
    },
    /// Train a model and write its directory.
    Train {
        /// Training config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Validate a router config like `nginx -t`; with --active, show who would move.
    Check {
        /// The config file to check.
        config: PathBuf,
        /// The config currently in use, to compare against.
        #[arg(long)]
        active: Option<PathBuf>,
    },
    /// Print the experiment analysis of a running router (SRM, per-arm figures,
    /// comparisons with intervals and verdicts), or with `--prometheus` the cluster's
    /// (every replica's sums, no router needed). Exit status 0, or 3 when the SRM test
    /// alarms, any comparison is `worse`, or the router's rollout was rolled back.
    Report {
        /// The router's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Output format: text, json or markdown.
        #[arg(long, default_value = "text")]
        format: abgate_router::report::Format,
        /// Read the cluster's state from this Prometheus (e.g. http://prometheus:9090)
        /// instead of asking a router.
        #[arg(long)]
        prometheus: Option<String>,
        /// With `--prometheus`: the phase to report (default: the current one, the
        /// phase with the freshest samples).
        #[arg(long)]
        phase_id: Option<String>,
        /// With `--prometheus`: observations per arm before a verdict (the routers'
        /// `experiment.min_samples`).
        #[arg(long, default_value_t = 100)]
        min_samples: u64,
    },
    /// Exit 0 if the URL answers 200 (for container health checks).
    Healthcheck {
        /// Health URL.
        #[arg(long, default_value = "http://127.0.0.1:8080/api/health")]
        url: String,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout())
        && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

/// A forward pass over a handful of rows is faster on one thread than with candle's
/// thread pool (see DESIGN.md); parallelism comes from concurrent requests instead.
fn single_threaded_forward_passes() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Servers run one single-threaded runtime per worker thread (see
/// `abgate_common::http::serve_on_threads`); this is the first one.
fn serving_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    single_threaded_forward_passes();
    init_logging();
    if let Command::Report {
        url,
        format,
        prometheus,
        phase_id,
        min_samples,
    } = &cli.command
    {
        return report(
            url,
            *format,
            prometheus.as_deref(),
            phase_id.as_deref(),
            *min_samples,
        );
    }
    let result: Result<(), String> = match cli.command {
        Command::Train { config } => abgate_model_server::train::TrainConfig::load(&config)
            .and_then(|c| {
                abgate_model_server::train::train(&c, |line| println!("{line}")).map(|r| {
                    let v = &r.spec.validation;
                    println!(
                        "wrote {}: validation RMSE {:.4} MAE {:.4} (predict-the-mean: RMSE {:.4} MAE {:.4})",
                        r.output_dir.display(),
                        v.rmse,
                        v.mae,
                        v.baseline_rmse,
                        v.baseline_mae
                    );
                })
            })
            .map_err(|e| e.to_string()),
        Command::ModelServer { config } => serving_runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(model_server(config))),
        Command::Router { config } => serving_runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(router(config))),
        Command::Check { config, active } => {
            abgate_router::check::run(&config, active.as_deref()).map(|report| print!("{report}"))
                .map_err(|e| e.to_string())
        }
        Command::Up { config_dir } => runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(up::run(config_dir))),
        Command::Report { .. } => Ok(()),
        Command::Healthcheck { url } => runtime()
            .map_err(|e| e.to_string())
            .and_then(|rt| rt.block_on(up::probe(&url))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn report(
    url: &str,
    format: abgate_router::report::Format,
    prometheus: Option<&str>,
    phase_id: Option<&str>,
    min_samples: u64,
) -> ExitCode {
    let fetched = runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            match prometheus {
                Some(p) => {
                    abgate_router::report::from_prometheus(p, phase_id, min_samples, format).await
                }
                None => abgate_router::report::fetch(url, format).await,
            }
        })
        .map_err(|e| e.to_string())
    });
    match fetched {
        Ok(report) => {
            print!("{}", report.output);
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn model_server(config: PathBuf) -> Result<(), String> {
    let config = abgate_model_server::ServerConfig::load(&config).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    abgate_model_server::run(config, listener, abgate_common::http::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn router(config: PathBuf) -> Result<(), String> {
    let config = abgate_router::RouterConfig::load(&config).map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    abgate_router::run(config, listener, abgate_common::http::shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
