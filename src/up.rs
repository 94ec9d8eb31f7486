//! `abgate up`: the whole local stack as OS processes — one model server per arm
//! (and per shadow arm) that has a `<name>.toml` next to `router.toml`, then the
//! router — with log
//! lines prefixed by process name, restarts with backoff when a child dies, and an
//! orderly stop (router first, then the arms) on Ctrl-C or SIGTERM.

use abgate_common::client::HttpClient;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How long a child gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
/// How long to wait for a child to answer its health URL at start.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// A child that ran this long before dying restarts with the shortest backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct ChildSpec {
    name: String,
    args: Vec<String>,
    health_url: String,
}

fn local_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    format!("http://{host}:{}", addr.port())
}

/// Starts the stack from `config_dir` and supervises it until a stop signal.
pub async fn run(config_dir: PathBuf) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let router_file = config_dir.join("router.toml");
    let router = abgate_router::RouterConfig::load(&router_file).map_err(|e| e.to_string())?;
    let mut arms = Vec::new();
    // Arms, then shadow arms: both are ordinary model servers.
    let servers = router
        .arms
        .iter()
        .map(|a| (&a.name, &a.url))
        .chain(router.shadows.iter().map(|s| (&s.name, &s.url)));
    for (name, url) in servers {
        let file = config_dir.join(format!("{name}.toml"));
        if !file.exists() {
            tracing::info!(arm = %name, url = %url, "no {} here; expecting the model server to run elsewhere", file.display());
            continue;
        }
        let config = abgate_model_server::ServerConfig::load(&file).map_err(|e| e.to_string())?;
        arms.push(ChildSpec {
            name: config.variant.clone(),
            args: vec!["model-server".into(), "--config".into(), path_arg(&file)],
            health_url: format!("{}/api/health", local_url(config.listen)),
        });
    }
    let router_spec = ChildSpec {
        name: "router".into(),
        args: vec!["router".into(), "--config".into(), path_arg(&router_file)],
        health_url: format!("{}/api/health", local_url(router.listen)),
    };

    let (stop_arms, arms_stopping) = watch::channel(false);
    let (stop_router, router_stopping) = watch::channel(false);
    let mut arm_tasks = Vec::new();
    for spec in &arms {
        arm_tasks.push(tokio::spawn(supervise(
            exe.clone(),
            spec.clone(),
            arms_stopping.clone(),
        )));
    }
    let shutdown = abgate_common::http::shutdown_signal();
    tokio::pin!(shutdown);
    let client = HttpClient::new(Duration::from_secs(2));
    let started = tokio::select! {
        () = wait_ready(&client, &arms, true) => {
            let task = tokio::spawn(supervise(exe.clone(), router_spec.clone(), router_stopping));
            tokio::select! {
                () = wait_ready(&client, std::slice::from_ref(&router_spec), false) => Some(task),
                () = &mut shutdown => { let _ = stop_router.send(true); let _ = task.await; None }
            }
        }
        () = &mut shutdown => None,
    };
    if let Some(router_task) = started {
        let live = live_weights(&client, &router).await;
        print_banner(&router, &router_file, &arms, &live);
        shutdown.await;
        tracing::info!("stopping the router, then the arms");
        let _ = stop_router.send(true);
        let _ = router_task.await;
    }
    let _ = stop_arms.send(true);
    for task in arm_tasks {
        let _ = task.await;
    }
    tracing::info!("all processes stopped");
    Ok(())
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

async fn wait_ready(client: &HttpClient, specs: &[ChildSpec], need_ok: bool) {
    let deadline = Instant::now() + READY_TIMEOUT;
    for spec in specs {
        loop {
            match client.get(&spec.health_url).await {
                Ok(reply) if reply.status.is_success() || !need_ok => {
                    tracing::info!(process = %spec.name, url = %spec.health_url, "ready");
                    break;
                }
                _ if Instant::now() > deadline => {
                    tracing::warn!(process = %spec.name, url = %spec.health_url, "not ready after {READY_TIMEOUT:?}; continuing");
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The weights in force in the running router (`GET /api/config`): a rollout's step
/// or a recorded rollback may have changed them since the file was read. Empty when
/// the router does not answer.
async fn live_weights(
    client: &HttpClient,
    router: &abgate_router::RouterConfig,
) -> Vec<(String, f64)> {
    let url = format!("{}/api/config", local_url(router.listen));
    let Ok(reply) = client.get(&url).await else {
        return Vec::new();
    };
    reply.json()["arms"]
        .as_array()
        .map(|arms| {
            arms.iter()
                .filter_map(|a| Some((a["name"].as_str()?.to_string(), a["weight"].as_f64()?)))
                .collect()
        })
        .unwrap_or_default()
}

fn print_banner(
    router: &abgate_router::RouterConfig,
    router_file: &Path,
    arms: &[ChildSpec],
    live: &[(String, f64)],
) {
    let front = local_url(router.listen);
    println!();
    println!("abgate is up");
    println!(
        "  router            {front}   (edit {} to move traffic live)",
        router_file.display()
    );
    for arm in &router.arms {
        let managed = if arms.iter().any(|a| a.name == arm.name) {
            ""
        } else {
            "  (not started here)"
        };
        let weight = live
            .iter()
            .find(|(name, _)| name == &arm.name)
            .map_or(arm.weight, |(_, w)| *w);
        println!("  {:<17} {}   weight {weight}{managed}", arm.name, arm.url);
    }
    for shadow in &router.shadows {
        let managed = if arms.iter().any(|a| a.name == shadow.name) {
            ""
        } else {
            "  (not started here)"
        };
        println!(
            "  {:<17} {}   shadow of {}, {}% of its users{managed}",
            shadow.name,
            shadow.url,
            shadow.of,
            shadow.sample * 100.0
        );
    }
    println!("try:");
    println!(
        "  curl -s {front}/predict -H 'Content-Type: application/json' -H 'X-User-Id: alice' \\\n    -d '{{\"features\": {{\"fixed_acidity\": 7.4, \"volatile_acidity\": 0.7, \"citric_acid\": 0, \"residual_sugar\": 1.9, \"chlorides\": 0.076, \"free_sulfur_dioxide\": 11, \"total_sulfur_dioxide\": 34, \"density\": 0.9978, \"ph\": 3.51, \"sulphates\": 0.56, \"alcohol\": 9.4}}}}' -i"
    );
    println!("  curl -s {front}/api/config");
    if !router.shadows.is_empty() {
        println!("  curl -s {front}/api/shadows");
    }
    if router.rollout.is_some() {
        println!("  curl -s {front}/api/rollout        (the progressive rollout; the status page is {front}/)");
    }
    println!("Ctrl-C stops everything.");
    println!();
}

/// Runs one child until told to stop, restarting it with backoff when it dies.
async fn supervise(exe: PathBuf, spec: ChildSpec, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(500);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut child = match Command::new(&exe)
            .args(&spec.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(process = %spec.name, error = %e, "cannot start; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        tracing::info!(process = %spec.name, pid = ?child.id(), "started");
        prefix_output(&spec.name, &mut child);
        let started = Instant::now();
        tokio::select! {
            status = child.wait() => {
                if *stop.borrow() {
                    return;
                }
                if started.elapsed() > STABLE_AFTER {
                    backoff = Duration::from_millis(500);
                }
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(process = %spec.name, %status, "exited; restarting in {backoff:?}");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            _ = stop.changed() => {
                terminate(&spec.name, &mut child).await;
                return;
            }
        }
    }
}

fn prefix_output(name: &str, child: &mut Child) {
    if let Some(out) = child.stdout.take() {
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("[{name}] {line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[{name}] {line}");
            }
        });
    }
}

async fn terminate(name: &str, child: &mut Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => {
            let status = status
                .map(|s| s.to_string())
                .unwrap_or_else(|e| e.to_string());
            tracing::info!(process = %name, %status, "stopped");
        }
        Err(_) => {
            tracing::warn!(process = %name, "did not stop within {STOP_GRACE:?}; killing");
            let _ = child.kill().await;
        }
    }
}

/// `abgate healthcheck`: succeeds if `url` answers 200.
pub async fn probe(url: &str) -> Result<(), String> {
    let reply = HttpClient::new(Duration::from_secs(3)).get(url).await?;
    if reply.status.is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered {}: {}", reply.status, reply.text()))
    }
}
