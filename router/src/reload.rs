//! Live reload: the router re-reads its config file when its content changes (polled,
//! which works for in-place writes, renames and bind mounts alike) and on SIGHUP. A
//! valid file is swapped in atomically between requests; an invalid one is logged
//! with file, key and reason, counted, and the old config stays.

use std::sync::Arc;

use crate::config::RouterConfig;
use crate::metrics::ReloadResult;
use crate::state::{config_hash, Router};

/// What a reload attempt did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The file has not changed since the version in force.
    Unchanged,
    /// The file is empty (most likely being rewritten in place); try again later.
    Incomplete,
    /// A new version was applied.
    Applied(u64),
    /// The file was rejected; the message names file, key and reason.
    Rejected(String),
}

/// Reads the active config's file and applies it if it changed (or if `force`).
pub fn reload(router: &Router, force: bool) -> Outcome {
    let active = router.active();
    let path = active.config.path.clone();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            // A rename-based editor can leave a short gap with no file at all.
            if e.kind() == std::io::ErrorKind::NotFound && !force {
                return Outcome::Incomplete;
            }
            let message = format!("{}: cannot read: {e}", path.display());
            return reject(router, message);
        }
    };
    if text.trim().is_empty() {
        return Outcome::Incomplete;
    }
    let hash = config_hash(&text);
    if !force && (hash == active.hash || router.was_rejected(&hash)) {
        return Outcome::Unchanged;
    }
    match RouterConfig::parse(&path, &text) {
        Err(e) => {
            let outcome = reject(router, e.to_string());
            // Remember the rejected text so it is reported once, not at every poll.
            if let Outcome::Rejected(_) = &outcome {
                router.remember_rejected(hash);
            }
            outcome
        }
        Ok(config) => {
            if config.listen != active.config.listen {
                tracing::warn!(
                    file = %path.display(),
                    old = %active.config.listen,
                    new = %config.listen,
                    "`listen` cannot change without a restart; keeping the old address"
                );
            }
            let weights: Vec<String> = config
                .arms
                .iter()
                .map(|a| format!("{}={}", a.name, a.weight))
                .collect();
            router.apply(config, hash);
            let version = router.active().version;
            router.record_reload(ReloadResult::Success, None);
            tracing::info!(file = %path.display(), version, weights = %weights.join(" "), "config reloaded");
            Outcome::Applied(version)
        }
    }
}

fn reject(router: &Router, message: String) -> Outcome {
    tracing::error!(reason = %message, "config reload rejected; keeping the previous config");
    router.record_reload(ReloadResult::Failure, Some(message.clone()));
    Outcome::Rejected(message)
}

/// Polls the file every `reload.poll_interval_ms` and reloads on SIGHUP, forever.
pub async fn watch(router: Arc<Router>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; file polling still works");
            None
        }
    };
    loop {
        let poll = router.active().config.reload_poll;
        let forced = tokio::select! {
            () = tokio::time::sleep(poll) => false,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        };
        if forced {
            tracing::info!("SIGHUP received, reloading config");
        }
        reload(&router, forced);
    }
}
