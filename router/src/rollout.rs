//! What a progressive rollout (`[rollout]`) remembers: its state, its step, when the
//! step started and every transition, kept in memory and in a small JSON state file
//! beside the config (`<config file name>.rollout.json`, written by an exclusive temp
//! file and a rename), so a restart resumes the same step. The decisions and the
//! changes they make are the control layer's (`control::rollout`); this module only
//! holds, persists and exports the state:
//!
//! * `abgate_rollout_step` — the candidate's percent of users at the current step
//!   (0 before the rollout starts and after a rollback; 100 once promoted);
//! * `abgate_rollout_state{state}` — 1 for the current state, 0 for the others.

use prometheus::{Gauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::config::RolloutConfig;

/// Transitions kept in the record (the oldest are dropped).
pub const MAX_HISTORY: usize = 100;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Configured, not started yet (the first tick starts it).
    Pending,
    /// On a step, waiting for the evidence to advance.
    Running,
    /// Stopped by an operator (or by weights changed outside the rollout); the
    /// current weights stay.
    Paused,
    /// The last step was shown not worse: promoted or held (`on_complete`).
    Completed,
    /// A gate tripped, or an operator aborted: the candidate's weight is 0.
    RolledBack,
}

impl RolloutState {
    /// Every state, in a stable order (the label values).
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Pending,
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Completed,
        RolloutState::RolledBack,
    ];

    /// The snake_case name (the `state` label value).
    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutState::Pending => "pending",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
            RolloutState::RolledBack => "rolled_back",
        }
    }

    /// Whether the rollout is over (nothing more happens until the state file is
    /// removed or the rollout's arm or steps change).
    pub const fn is_final(self) -> bool {
        matches!(self, RolloutState::Completed | RolloutState::RolledBack)
    }
}

/// One transition, as kept in the history and appended to the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transition {
    /// Unix time.
    pub time: f64,
    /// Always `rollout` (tells the line apart from a guardrail trip in the audit log).
    #[serde(default = "rollout_event")]
    pub event: String,
    /// The candidate arm.
    pub arm: String,
    /// State before.
    pub from: RolloutState,
    /// State after.
    pub to: RolloutState,
    /// Step index after (into `steps`).
    pub step: usize,
    /// The candidate's percent of users after.
    pub percent: f64,
    /// Why, for a person.
    pub reason: String,
    /// Who: `controller` or `operator`.
    pub by: String,
    /// Weights after, by arm.
    pub weights: Vec<(String, f64)>,
    /// The phase the evidence came from (content id), if any.
    #[serde(default)]
    pub phase_id: String,
    /// Candidate users seen on the step the decision was taken on.
    #[serde(default)]
    pub candidate_users: u64,
    /// How the change reached the config file: `written`, `in_memory_only` or `none`.
    pub file: String,
    /// Why the file was not written, if it was not.
    #[serde(default)]
    pub note: Option<String>,
}

fn rollout_event() -> String {
    "rollout".into()
}

/// The rollout's persisted state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The candidate arm of the rollout this record belongs to.
    pub arm: String,
    /// Its steps (a record for other steps is a different rollout and is not resumed).
    pub steps: Vec<f64>,
    /// Current state.
    pub state: RolloutState,
    /// Current step index.
    pub step: usize,
    /// Unix time the current step started (0 while pending).
    pub step_started_at: f64,
    /// Unix time the rollout started (its first step; 0 while pending): the phases
    /// since then are its evidence.
    #[serde(default)]
    pub started_at: f64,
    /// Transitions, oldest first (at most [`MAX_HISTORY`]).
    pub history: Vec<Transition>,
    /// What the next decision waits for (not persisted).
    #[serde(skip)]
    pub waiting: Vec<String>,
    /// Candidate users on the step at the last decision (not persisted): the users
    /// exposed when a guardrail rolls the candidate back between two decisions.
    #[serde(skip)]
    pub last_users: u64,
}

impl Record {
    /// A pending record for `config`.
    pub fn pending(config: &RolloutConfig) -> Record {
        Record {
            arm: config.arm.clone(),
            steps: config.steps.clone(),
            state: RolloutState::Pending,
            step: 0,
            step_started_at: 0.0,
            started_at: 0.0,
            history: Vec::new(),
            waiting: Vec::new(),
            last_users: 0,
        }
    }

    /// Whether this record is about `config`'s rollout (same arm and steps).
    pub fn is_for(&self, config: &RolloutConfig) -> bool {
        self.arm == config.arm && self.steps == config.steps
    }

    /// The candidate's percent of users at the current step, as the state says
    /// (0 pending or rolled back).
    pub fn percent(&self, promoted: bool) -> f64 {
        match self.state {
            RolloutState::Pending | RolloutState::RolledBack => 0.0,
            RolloutState::Completed if promoted => 100.0,
            _ => self.steps.get(self.step).copied().unwrap_or(0.0),
        }
    }
}

/// The state file of the config at `config_path`: `<file name>.rollout.json` beside it.
pub fn state_path(config_path: &Path) -> PathBuf {
    let name = config_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "router.toml".into());
    config_path.with_file_name(format!("{name}.rollout.json"))
}

/// Reads the record in `path`; `Ok(None)` when there is no file.
pub fn load(path: &Path) -> Result<Option<Record>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| format!("{}: not a rollout state: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `record` to `path` atomically.
pub fn save(path: &Path, record: &Record) -> Result<(), String> {
    let text = serde_json::to_string_pretty(record).map_err(|e| e.to_string())?;
    crate::config::edit::write_file(path, &text)
}

/// The rollout's families.
#[derive(Clone)]
pub struct RolloutGauges {
    /// `abgate_rollout_step`: the candidate's percent of users now.
    pub step: Gauge,
    /// `abgate_rollout_state{state}`.
    pub state: IntGaugeVec,
}

impl RolloutGauges {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let step = Gauge::new(
            "abgate_rollout_step",
            "Progressive rollout: the candidate's percent of users at the current step (0 pending or rolled back, 100 promoted)",
        )?;
        let state = IntGaugeVec::new(
            Opts::new(
                "abgate_rollout_state",
                "Progressive rollout: 1 for the current state (pending, running, paused, completed, rolled_back), 0 for the others",
            ),
            &["state"],
        )?;
        registry.register(Box::new(step.clone()))?;
        registry.register(Box::new(state.clone()))?;
        Ok(RolloutGauges { step, state })
    }

    /// Shows `record` (nothing when there is no rollout: every state 0).
    pub fn show(&self, record: Option<&Record>, promoted: bool) {
        for s in RolloutState::ALL {
            let on = record.is_some_and(|r| r.state == s);
            self.state
                .with_label_values(&[s.as_str()])
                .set(i64::from(on));
        }
        self.step.set(record.map_or(0.0, |r| r.percent(promoted)));
    }
}

/// The rollout's state in memory, with its gauges.
pub struct Ramp {
    record: Mutex<Option<Record>>,
    /// The Prometheus families.
    pub gauges: RolloutGauges,
}

impl Ramp {
    /// No record yet; the families are registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Ramp {
            record: Mutex::new(None),
            gauges: RolloutGauges::new(registry)?,
        })
    }

    /// The record, locked (`None`: no rollout has run since start-up and no state
    /// file was found).
    pub fn lock(&self) -> MutexGuard<'_, Option<Record>> {
        self.record
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
