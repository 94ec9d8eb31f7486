//! What a progressive rollout (`[rollout]`) remembers: its state, its step, when the
//! step started and every transition, kept in memory and in a small JSON state file
//! beside the config (`<config file name>.rollout.json`, written by an exclusive temp
//! file and a rename), so a restart resumes the same step. The decisions and the
//! changes they make are the control layer's (`control::rollout`); this module only
//! holds, persists and exports the state:
//!
//! * `abgate_rollout_step` — the candidate's percent of users at the current step
//!   (0 before the rollout starts and after a rollback; 100 once promoted);
//! * `abgate_rollout_state{state}` — 1 for the current state, 0 for the others;
//! * `abgate_rollout_record{rollout, revision, state, step, started_at}` — the
//!   record's [`Position`] (value: the Unix time its step started), what the replicas
//!   of a cluster read back from Prometheus to agree on one step
//!   (`control::rollout::adopt`). `rollout` is [`rollout_id`]; no label value comes
//!   from a request.

use prometheus::{Gauge, GaugeVec, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::config::RolloutConfig;

/// The family of each replica's [`Position`].
pub const RECORD: &str = "abgate_rollout_record";

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
    /// How many transitions the rollout has made (in cluster mode, across the
    /// replicas: a record adopted from another replica takes its revision), so a
    /// newer record is told from an older one.
    #[serde(default)]
    pub revision: u64,
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
            revision: 0,
            waiting: Vec::new(),
            last_users: 0,
        }
    }

    /// Where this record stands, to compare with other replicas'.
    pub fn position(&self) -> Position {
        Position {
            revision: self.revision,
            state: self.state,
            step: self.step,
            step_started_at: self.step_started_at,
            started_at: self.started_at,
            replicas: 1,
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

/// Where a rollout stands, as the replicas of a cluster compare it: what each exports
/// (`abgate_rollout_record`) and reads back from Prometheus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Position {
    /// The record's revision (transitions made).
    pub revision: u64,
    /// Its state.
    pub state: RolloutState,
    /// Its step index.
    pub step: usize,
    /// Unix time its step started.
    pub step_started_at: f64,
    /// Unix time the rollout started.
    pub started_at: f64,
    /// Replicas exporting it now (1 for this replica's own).
    pub replicas: usize,
}

impl Position {
    /// The order in which positions supersede each other, the same on every replica
    /// so they converge on one: a rollback above everything (a gate tripped or an
    /// operator aborted: a fact, like a recorded trip); then the higher revision;
    /// at equal revision (two replicas that moved on the same evidence, or an
    /// operator's command racing a decision) the state further along (running <
    /// paused < completed), then the higher step (users never move back), then the
    /// earlier start of the step.
    pub fn order(&self, other: &Position) -> Ordering {
        let rank = |s: RolloutState| match s {
            RolloutState::Pending => 0,
            RolloutState::Running => 1,
            RolloutState::Paused => 2,
            RolloutState::Completed => 3,
            RolloutState::RolledBack => 4,
        };
        let rolled = |p: &Position| p.state == RolloutState::RolledBack;
        rolled(self)
            .cmp(&rolled(other))
            .then(self.revision.cmp(&other.revision))
            .then(rank(self.state).cmp(&rank(other.state)))
            .then(self.step.cmp(&other.step))
            .then(other.step_started_at.total_cmp(&self.step_started_at))
    }

    /// Whether this position supersedes `other` (strictly).
    pub fn supersedes(&self, other: &Position) -> bool {
        self.order(other) == Ordering::Greater
    }
}

/// What a replica whose record stands at `own` does with the cluster's superseding
/// record (see [`adoption`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Adoption {
    /// Nothing supersedes this replica's own record.
    Keep,
    /// The same move was made elsewhere too: only the earlier starts are taken.
    Starts {
        /// The step's start to take.
        step_started_at: f64,
        /// The rollout's start to take.
        started_at: f64,
    },
    /// Take this position (a transition).
    Take(Position),
}

/// The earlier of two start times, 0 standing for "not started".
pub fn earliest(a: f64, b: f64) -> f64 {
    if a > 0.0 && b > 0.0 {
        a.min(b)
    } else {
        a.max(b)
    }
}

/// The pure rule of cluster mode: what a replica at `own` takes from `best`, the
/// record that supersedes every other the cluster has. Equal revisions can differ in
/// step (two replicas' decisions racing an operator's command): then the higher step
/// stands in the state taken, so no user moves back.
pub fn adoption(own: &Position, best: &Position) -> Adoption {
    if !best.supersedes(own) {
        return Adoption::Keep;
    }
    if best.revision == own.revision && best.state == own.state && best.step == own.step {
        return Adoption::Starts {
            step_started_at: best.step_started_at,
            started_at: earliest(own.started_at, best.started_at),
        };
    }
    let moving = |s: RolloutState| {
        matches!(
            s,
            RolloutState::Running | RolloutState::Paused | RolloutState::Completed
        )
    };
    let mut take = best.clone();
    if moving(own.state) && moving(best.state) && own.step > best.step {
        take.step = own.step;
        take.step_started_at = own.step_started_at;
    }
    take.started_at = earliest(own.started_at, best.started_at);
    Adoption::Take(take)
}

/// The rollout's id in the cluster: the experiment's name and salt with the
/// rollout's arm and steps, hashed (hex, so it can go into a query as it is). A
/// rollout run again after it ended needs a new experiment name (or salt) in cluster
/// mode: Prometheus remembers the old one's records for 30 days.
pub fn rollout_id(experiment: &str, salt: &str, config: &RolloutConfig) -> String {
    let steps: Vec<String> = config.steps.iter().map(|s| format!("{s}")).collect();
    crate::config::config_hash(&format!(
        "{experiment}\n{salt}\n{}\n{}",
        config.arm,
        steps.join(",")
    ))
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
    /// `abgate_rollout_record{rollout, revision, state, step, started_at}`.
    pub record: GaugeVec,
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
        let record = GaugeVec::new(
            Opts::new(
                RECORD,
                "Progressive rollout: this replica's record (revision, state, step, start), valued with the Unix time its step started; replicas in cluster mode read it back to agree on one step",
            ),
            &["rollout", "revision", "state", "step", "started_at"],
        )?;
        registry.register(Box::new(step.clone()))?;
        registry.register(Box::new(state.clone()))?;
        registry.register(Box::new(record.clone()))?;
        Ok(RolloutGauges {
            step,
            state,
            record,
        })
    }

    /// Shows `record` of the rollout `id` (nothing when there is no rollout: every
    /// state 0, no record; a pending record is not exported).
    pub fn show(&self, id: &str, record: Option<&Record>, promoted: bool) {
        self.record.reset();
        if let Some(r) = record.filter(|r| r.state != RolloutState::Pending) {
            let (revision, step) = (r.revision.to_string(), r.step.to_string());
            let started = format!("{:.3}", r.started_at);
            self.record
                .with_label_values(&[id, &revision, r.state.as_str(), &step, &started])
                .set(r.step_started_at);
        }
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
    seen: Mutex<Option<Seen>>,
    /// The Prometheus families.
    pub gauges: RolloutGauges,
}

impl Ramp {
    /// No record yet; the families are registered in `registry`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Ok(Ramp {
            record: Mutex::new(None),
            seen: Mutex::new(None),
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

    /// The last read of the cluster's records (cluster mode; `None` before the first
    /// read that answered).
    pub fn seen(&self) -> Option<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keeps a read of the cluster's records.
    pub fn set_seen(&self, seen: Option<Seen>) {
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = seen;
    }
}

/// One read of the rollout's records from Prometheus (cluster mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Seen {
    /// The rollout's id.
    pub rollout: String,
    /// Unix time of the read.
    pub read_at: f64,
    /// Every record any replica exported in the last 30 days, the one that
    /// supersedes the others first.
    pub positions: Vec<Position>,
}

impl Seen {
    /// The record that supersedes every other, if any.
    pub fn best(&self) -> Option<&Position> {
        self.positions.first()
    }

    /// The highest revision any replica has reached.
    pub fn revision(&self) -> u64 {
        self.positions.iter().map(|p| p.revision).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;

    fn rollout(arm: &str, steps: Vec<f64>) -> RolloutConfig {
        RolloutConfig {
            arm: arm.into(),
            steps,
            min_step: std::time::Duration::from_secs(1),
            min_users_per_step: 1,
            gates: Vec::new(),
            on_complete: crate::config::OnComplete::Promote,
            max_exposed_users: None,
        }
    }

    fn at(revision: u64, state: RolloutState, step: usize, started: f64) -> Position {
        Position {
            revision,
            state,
            step,
            step_started_at: started,
            started_at: 1.0,
            replicas: 1,
        }
    }

    #[test]
    fn positions_supersede_in_one_order_on_every_replica() {
        use RolloutState::*;
        // A rollback above any revision.
        assert!(at(1, RolledBack, 0, 5.0).supersedes(&at(9, Running, 2, 5.0)));
        assert!(!at(9, Completed, 2, 5.0).supersedes(&at(1, RolledBack, 0, 5.0)));
        // Then the revision.
        assert!(at(4, Running, 0, 5.0).supersedes(&at(3, Paused, 2, 1.0)));
        // At one revision: running < paused < completed, then the step, then the
        // earlier start.
        assert!(at(4, Paused, 1, 5.0).supersedes(&at(4, Running, 2, 1.0)));
        assert!(at(4, Completed, 0, 5.0).supersedes(&at(4, Paused, 2, 1.0)));
        assert!(at(4, Running, 2, 5.0).supersedes(&at(4, Running, 1, 1.0)));
        assert!(at(4, Running, 2, 1.0).supersedes(&at(4, Running, 2, 5.0)));
        assert!(!at(4, Running, 2, 1.0).supersedes(&at(4, Running, 2, 1.0)));
        // A total order: sorting any permutation gives one first.
        let mut all = [
            at(4, Running, 2, 5.0),
            at(1, RolledBack, 0, 9.0),
            at(4, Running, 2, 1.0),
            at(5, Pending, 0, 0.0),
        ];
        all.sort_by(|a, b| b.order(a));
        assert_eq!(all[0].state, RolledBack);
        assert_eq!(all[1].revision, 5);
        assert!((all[2].step_started_at - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_rollout_id_is_hex_and_changes_with_the_experiment_arm_and_steps() {
        let config = rollout;
        let a = rollout_id("wine", "s", &config("c", vec![1.0, 5.0]));
        assert!(!a.is_empty() && a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, rollout_id("wine", "s", &config("c", vec![1.0, 5.0])));
        assert_ne!(a, rollout_id("wine2", "s", &config("c", vec![1.0, 5.0])));
        assert_ne!(a, rollout_id("wine", "t", &config("c", vec![1.0, 5.0])));
        assert_ne!(a, rollout_id("wine", "s", &config("d", vec![1.0, 5.0])));
        assert_ne!(a, rollout_id("wine", "s", &config("c", vec![1.0, 10.0])));
    }

    #[test]
    fn a_pending_record_is_not_exported_and_a_started_one_is_one_series() {
        let registry = Registry::new();
        let gauges = RolloutGauges::new(&registry).unwrap_or_else(|e| panic!("{e}"));
        let config = rollout("c", vec![1.0, 5.0]);
        let mut r = Record::pending(&config);
        gauges.show("ab12", Some(&r), true);
        assert!(gauges.record.collect()[0].get_metric().is_empty());
        r.state = RolloutState::Running;
        r.revision = 3;
        r.step = 1;
        r.step_started_at = 1234.5;
        r.started_at = 1000.25;
        gauges.show("ab12", Some(&r), true);
        r.revision = 4;
        gauges.show("ab12", Some(&r), true);
        let families = gauges.record.collect();
        let metrics = families[0].get_metric();
        assert_eq!(metrics.len(), 1);
        let labels: Vec<(&str, &str)> = metrics[0]
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        assert_eq!(
            labels,
            [
                ("revision", "4"),
                ("rollout", "ab12"),
                ("started_at", "1000.250"),
                ("state", "running"),
                ("step", "1")
            ]
        );
        assert!((metrics[0].get_gauge().get_value() - 1234.5).abs() < 1e-9);
    }
}
