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

/// How long a file that fails to parse is given to settle (an editor may still be
/// writing it in place) before the failure is reported.
const SETTLE: std::time::Duration = std::time::Duration::from_millis(30);

/// Reads the active config's file and applies it if it changed (or if `force`). A
/// file that fails to parse is read again after a short pause: if it changed
/// meanwhile it was caught mid-write, and the newer text is judged instead.
pub async fn reload(router: &Router, force: bool) -> Outcome {
    let mut outcome = reload_once(router, force);
    for _ in 0..5 {
        let Outcome::Rejected(_) = &outcome else {
            break;
        };
        let seen = router.active().config.path.clone();
        let before = std::fs::read(&seen).unwrap_or_default();
        tokio::time::sleep(SETTLE).await;
        if std::fs::read(&seen).unwrap_or_default() == before {
            break;
        }
        outcome = reload_once(router, force);
    }
    if let Outcome::Rejected(message) = &outcome {
        tracing::error!(reason = %message, "config reload rejected; keeping the previous config");
        router.record_reload(ReloadResult::Failure, Some(message.clone()));
    }
    outcome
}

fn reload_once(router: &Router, force: bool) -> Outcome {
    // A guardrail rollback edits the file and applies it under the same lock.
    let _edit = router.edit_lock();
    let active = router.active();
    let path = active.config.path.clone();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            // A rename-based editor can leave a short gap with no file at all.
            if e.kind() == std::io::ErrorKind::NotFound && !force {
                return Outcome::Incomplete;
            }
            return Outcome::Rejected(format!("{}: cannot read: {e}", path.display()));
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
            // Remember the rejected text so it is reported once, not at every poll.
            router.remember_rejected(hash);
            Outcome::Rejected(e.to_string())
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
        let poll = router.active().config.reload.poll_interval;
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
        reload(&router, forced).await;
    }
}
