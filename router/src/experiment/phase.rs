//! One phase of the experiment: per-arm statistics *by user* since the last change of
//! salt, arms or weights, and its summary.
//!
//! # What is recorded
//! * **Intention to treat.** A sticky prediction (its arm chosen by the hash of the
//!   user key) is recorded under the arm the hash **assigned**, whichever arm served
//!   it: a request that failover or a retry moved to another arm counts, with its
//!   status and latency, for the assigned arm, and as that arm's **crossover**. Feedback
//!   counts under the assigned arm of its prediction's user. Overrides (`X-Variant`)
//!   and anonymous requests are outside the comparisons and the SRM test (counted only
//!   as `excluded` of the arm that served them).
//! * **The user is the unit.** Every metric is kept as user-bucket sums
//!   ([`UserArmStats`]; bucket `XXH3_64(seed 1, key) mod 128`, a function of the key
//!   alone, the same on every replica) and compared with
//!   [`abgate_stats::compare_user_arms`]: a jackknife over buckets, each arm's variance
//!   floored at the pooled one (valid at any split), a t correction for few or unequal
//!   buckets. "Some comparison is `worse`" holds α over every metric × candidate arm
//!   ([`abgate_stats::family`]).
//! * **SRM** counts distinct sticky users per *assigned* arm in a bounded, consistent
//!   sample ([`super::users`]).
//!
//! # The request path
//! Each recording thread owns one of [`CELLS`] cells (picked once per thread, round
//! robin) and a recording locks only its own cell's mutex, so while at most [`CELLS`]
//! threads record (the router runs one worker per core) no lock is shared between
//! workers: a handful of additions and, for a sampled user not yet seen since the last
//! read, one insertion into the cell's pending set (which keeps its capacity across
//! reads, so it allocates only while it grows to its peak). Pending users are
//! moved into the phase's sample — and the sample thinned — only when the phase is
//! read (every [`super::TICK`] by the control task, and by `/api/experiment`), never
//! inside a request.
//!
//! # Memory
//! Per arm and cell, [`ARM_CELL_BYTES`] bytes: the bucket sums of the five metrics
//! (5 × 2,056 bytes: 128 buckets × (an `f64` sum + a `u64` count) + a sum of squares),
//! the latency histogram, feedback and crossover counts; with [`CELLS`] = 16 cells,
//! about 168 KB per arm, fixed for the phase. The user sample adds at most
//! `experiment.user_sample_cap` hashes in all, plus the pending sets of the cells in
//! use: per arm and cell, the most distinct sampled users that cell saw between two
//! reads (one second), never more than the cap.

use abgate_common::metrics::{quantile, LATENCY_BUCKETS};
use abgate_common::FeedbackType;
use abgate_stats::family::{any_worse, bonferroni_alpha, family_config};
use abgate_stats::{
    bucket_of, compare_user_arms, Metric, UserArmStats, UserCompareConfig, Verdict,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::srm::{SrmState, SrmView};
use super::users::{HashSet, Inserted, Padded, UserSample};

/// Cells of a phase's statistics (each recording thread uses one, picked round robin).
pub const CELLS: usize = 16;

/// Bytes of one arm's accumulators in one cell.
pub const ARM_CELL_BYTES: usize = std::mem::size_of::<ArmCell>();

static NEXT_CELL: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static CELL: usize = NEXT_CELL.fetch_add(1, Ordering::Relaxed) % CELLS;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The content id of a phase: 16 hex digits of XXH3_64 over the salt, then each arm's
/// name and weight (lengths prefixed, weights as IEEE-754 bits), so any replica with
/// the same experiment config computes the same id.
pub fn phase_id(salt: &str, variants: &[String], weights: &[f64]) -> String {
    let mut bytes = Vec::with_capacity(64);
    bytes.extend_from_slice(&(salt.len() as u64).to_le_bytes());
    bytes.extend_from_slice(salt.as_bytes());
    for (name, weight) in variants.iter().zip(weights) {
        bytes.extend_from_slice(&(name.len() as u64).to_le_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&weight.to_bits().to_le_bytes());
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
}

/// One arm's accumulators (in one cell, or merged): everything recorded for the
/// sticky users the hash assigned to the arm.
#[derive(Clone, Debug, Default)]
pub struct ArmCell {
    /// The comparison accumulators, by user bucket.
    pub stats: UserArmStats,
    /// Latency counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), plus +Inf.
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    /// Feedback counts in [`FeedbackType::ALL`] order.
    pub feedback: [u64; FeedbackType::ALL.len()],
    /// Assigned requests another arm served.
    pub crossed: u64,
    /// Answers the arm served outside the comparisons (overrides, anonymous users).
    pub excluded: u64,
}

impl ArmCell {
    fn merge(&mut self, other: &ArmCell) {
        self.stats.merge(&other.stats);
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        for (a, b) in self.feedback.iter_mut().zip(&other.feedback) {
            *a += b;
        }
        self.crossed += other.crossed;
        self.excluded += other.excluded;
    }

    /// Latency quantile `q`, interpolated in its bucket as PromQL does.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        let mut cumulative = 0;
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(upper, n)| {
                cumulative += n;
                (*upper, cumulative)
            })
            .collect();
        quantile(q, &buckets, self.buckets.iter().sum())
    }

    /// Assigned requests recorded.
    pub fn requests(&self) -> u64 {
        self.stats.errors.count()
    }

    /// The crossover share: assigned requests another arm served, over all.
    pub fn crossover_share(&self) -> Option<f64> {
        let n = self.requests();
        (n > 0).then(|| self.crossed as f64 / n as f64)
    }
}

/// One recording thread's cell: every arm's accumulators and the sampled users seen
/// since the last read.
struct Cell {
    arms: Vec<ArmCell>,
    pending: Vec<HashSet>,
}

/// Users assigned to one arm.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UsersFigure {
    /// Distinct sticky users in the sample, by the arm the hash assigned them.
    pub n: u64,
    /// Estimated distinct users assigned: `n / sample_fraction`.
    pub estimate: f64,
    /// The sampling fraction (1, ½, ¼, …).
    pub sample_fraction: f64,
}

/// Client-visible answers to the sticky users assigned to one arm (intention to treat:
/// whichever arm served them).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestsFigure {
    /// Requests answered.
    pub n: u64,
    /// Of which 5xx.
    pub errors: u64,
    /// `errors / n`.
    pub error_rate: Option<f64>,
}

/// Latency of one arm, in seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LatencyFigure {
    /// Requests timed.
    pub n: u64,
    /// Mean.
    pub mean: Option<f64>,
    /// Median, from the `prediction_duration_seconds` buckets.
    pub p50: Option<f64>,
    /// 95th percentile, from the same buckets.
    pub p95: Option<f64>,
}

/// Feedback counts of one arm.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FeedbackFigure {
    /// All feedback the arm accepted.
    pub n: u64,
    /// `feedback_type = "rating"`.
    pub rating: u64,
    /// `accurate`.
    pub accurate: u64,
    /// `too_high`.
    pub too_high: u64,
    /// `too_low`.
    pub too_low: u64,
}

/// A mean with its count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeanFigure {
    /// Observations.
    pub n: u64,
    /// Their mean.
    pub mean: Option<f64>,
}

/// A share with its count.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShareFigure {
    /// Trials (accurate + too_high + too_low).
    pub n: u64,
    /// accurate / n.
    pub value: Option<f64>,
}

/// Absolute error of predictions with ground truth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorFigure {
    /// Feedback whose arm answered an `absolute_error`.
    pub n: u64,
    /// Mean absolute error.
    pub mae: Option<f64>,
    /// Root mean squared error.
    pub rmse: Option<f64>,
}

/// The arm's assigned requests served by another arm (failover or a retry).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct CrossoverFigure {
    /// Assigned requests another arm served.
    pub n: u64,
    /// `n` over the arm's assigned requests; `null` before any.
    pub share: Option<f64>,
}

/// One arm's figures for a phase, each with its own `n`: the sticky users the hash
/// assigned to the arm and everything recorded for them (intention to treat).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ArmFigures {
    /// Arm name.
    pub variant: String,
    /// Configured weight in this phase.
    pub weight: f64,
    /// Configured share of users (normalised weight).
    pub share: f64,
    /// Distinct users served.
    pub users: UsersFigure,
    /// Requests and 5xx errors.
    pub requests: RequestsFigure,
    /// Latency.
    pub latency_seconds: LatencyFigure,
    /// Feedback counts by type.
    pub feedback: FeedbackFigure,
    /// Mean rating.
    pub rating: MeanFigure,
    /// Accurate share.
    pub accurate_share: ShareFigure,
    /// MAE and RMSE.
    pub absolute_error: ErrorFigure,
    /// Assigned requests another arm served.
    #[serde(default)]
    pub crossover: CrossoverFigure,
    /// Answers this arm served outside the comparisons and SRM (`X-Variant` overrides
    /// and anonymous requests).
    #[serde(default)]
    pub excluded: u64,
}

/// One comparison of an arm with the control.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ComparisonView {
    /// The metric (closed set).
    pub metric: Metric,
    /// The arm compared.
    pub variant: String,
    /// The control (the first arm).
    pub control: String,
    /// `mean(arm) − mean(control)`.
    pub estimate: Option<f64>,
    /// Lower end of the 95% anytime-valid confidence sequence.
    pub ci_low: Option<f64>,
    /// Upper end.
    pub ci_high: Option<f64>,
    /// Lower end of the fixed-horizon 95% interval (reference only: one look).
    pub fixed_low: Option<f64>,
    /// Upper end of the fixed-horizon interval.
    pub fixed_high: Option<f64>,
    /// `better`, `worse`, `no_difference_yet` or `not_enough_data`.
    pub verdict: Verdict,
    /// The smaller arm's count (what `experiment.min_samples` gates on).
    pub n: u64,
    /// Observations in the arm.
    pub n_arm: u64,
    /// Observations in the control.
    pub n_control: u64,
    /// The verdict at the family's level (α split over every metric × candidate arm):
    /// what "some comparison is `worse`" (`abgate report`'s exit 3) is decided on.
    #[serde(default = "not_enough_data")]
    pub family_verdict: Verdict,
    /// Non-empty user buckets of the arm.
    #[serde(default)]
    pub buckets_arm: usize,
    /// Non-empty user buckets of the control.
    #[serde(default)]
    pub buckets_control: usize,
    /// Effective number of (arm, control) pairs of independent observations (requests
    /// over the design effect); `null` until each arm has two buckets.
    #[serde(default)]
    pub effective_n: Option<f64>,
    /// Degrees of freedom of the interval's t correction (from the Kish effective
    /// bucket counts).
    #[serde(default)]
    pub degrees_of_freedom: Option<f64>,
}

fn not_enough_data() -> Verdict {
    Verdict::NotEnoughData
}

/// The one error budget: α over every comparison that can feed "some comparison is
/// `worse`".
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FamilyView {
    /// The family-wise α (0.05).
    pub alpha: f64,
    /// Comparisons sharing it: every metric × candidate arm.
    pub comparisons: usize,
    /// Each comparison's level, `alpha / comparisons` (Bonferroni).
    pub per_comparison_alpha: f64,
    /// Whether some comparison is `worse` at its family level.
    pub any_worse: bool,
}

impl Default for FamilyView {
    fn default() -> Self {
        FamilyView {
            alpha: 0.05,
            comparisons: 0,
            per_comparison_alpha: 0.05,
            any_worse: false,
        }
    }
}

/// Accepted feedback not counted in the phase.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct OutsideFigure {
    /// On a prediction made before the phase started.
    pub late: u64,
    /// Without the prediction's time (an arm that does not answer `predicted_at`).
    pub undated: u64,
}

/// Everything a phase says, at one moment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PhaseSummary {
    /// Phase number (1 at start-up, +1 per salt or weight change).
    pub phase: u64,
    /// The phase's content id: hex of a hash of the salt, the arm names and weights
    /// (the same on every replica).
    #[serde(default)]
    pub phase_id: String,
    /// Unix time it started.
    pub started_at: f64,
    /// Unix time it ended (`null` for the current phase).
    pub ended_at: Option<f64>,
    /// Per-arm figures, in config order.
    pub arms: Vec<ArmFigures>,
    /// The SRM test.
    pub srm: SrmView,
    /// Every arm after the first against the first, for every metric, by user.
    pub comparisons: Vec<ComparisonView>,
    /// The error budget "some comparison is `worse`" is decided on.
    #[serde(default)]
    pub family: FamilyView,
    /// Accepted feedback that was not counted in this phase.
    #[serde(default)]
    pub feedback_outside_phase: OutsideFigure,
}

/// The statistics of one phase (shared by every request of the config versions in it).
pub struct Phase {
    /// Phase number.
    pub number: u64,
    /// The content id ([`phase_id`]).
    pub id: String,
    /// Unix time it started.
    pub started_at: f64,
    /// Salt of the phase.
    pub salt: String,
    /// Arm names, in config order.
    pub variants: Vec<String>,
    /// Weights, in config order.
    pub weights: Vec<f64>,
    cells: Vec<Padded<Mutex<Cell>>>,
    users: UserSample,
    pending_cap: usize,
    srm: Mutex<SrmState>,
    tripped: Mutex<Vec<String>>,
    late: AtomicU64,
    undated: AtomicU64,
}

/// Where an accepted feedback belongs, by the time its prediction was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Made in this phase: counted.
    Counted,
    /// Made before this phase started: not counted (`late`).
    Late,
    /// The arm did not say when: not counted (`undated`).
    Undated,
}

impl Phase {
    /// A phase for arms `variants` with `weights`, sampling at most `user_sample_cap`
    /// users.
    pub fn new(
        number: u64,
        started_at: f64,
        salt: &str,
        variants: Vec<String>,
        weights: Vec<f64>,
        user_sample_cap: usize,
    ) -> Self {
        let arms = variants.len();
        let cell = || Cell {
            arms: vec![ArmCell::default(); arms],
            pending: (0..arms).map(|_| HashSet::default()).collect(),
        };
        Phase {
            number,
            id: phase_id(salt, &variants, &weights),
            started_at,
            salt: salt.to_string(),
            srm: Mutex::new(SrmState::new(&weights)),
            variants,
            weights,
            cells: (0..CELLS).map(|_| Padded(Mutex::new(cell()))).collect(),
            users: UserSample::new(arms, user_sample_cap),
            pending_cap: user_sample_cap.max(1),
            tripped: Mutex::new(Vec::new()),
            late: AtomicU64::new(0),
            undated: AtomicU64::new(0),
        }
    }

    /// Whether a config with this salt, these arms and weights continues this phase.
    pub fn continues(&self, salt: &str, variants: &[&str], weights: &[f64]) -> bool {
        self.salt == salt
            && self.variants.len() == variants.len()
            && self.variants.iter().zip(variants).all(|(a, b)| a == b)
            && self.weights == weights
    }

    fn with_cell<R>(&self, f: impl FnOnce(&mut Cell) -> R) -> R {
        let i = CELL.with(|c| *c);
        f(&mut lock(&self.cells[i % CELLS].0))
    }

    /// Records one client-visible answer. `user` is the sticky user's hash
    /// ([`super::users::user_hash`]) when the arm came from the hash (`None` for an
    /// override or an anonymous request: then only `excluded` of the serving arm is
    /// counted); the answer is recorded under the `assigned` arm (intention to treat),
    /// and as its crossover when another arm (`served`) answered.
    pub fn record_response(
        &self,
        assigned: usize,
        served: Option<usize>,
        user: Option<u64>,
        status: u16,
        latency: f64,
    ) {
        if assigned >= self.variants.len() {
            return;
        }
        let Some(hash) = user else {
            let arm = served.unwrap_or(assigned);
            self.with_cell(|cell| {
                if let Some(a) = cell.arms.get_mut(arm) {
                    a.excluded += 1;
                }
            });
            return;
        };
        let slot = LATENCY_BUCKETS.partition_point(|upper| *upper < latency);
        let sampled = self.users.sampled(hash);
        let crossed = served.is_some_and(|s| s != assigned);
        let cap = self.pending_cap;
        self.with_cell(|cell| {
            if let Some(a) = cell.arms.get_mut(assigned) {
                a.stats.record_response(bucket_of(hash), status, latency);
                a.buckets[slot] += 1;
                a.crossed += u64::from(crossed);
            }
            if sampled {
                if let Some(set) = cell.pending.get_mut(assigned) {
                    if set.len() < cap {
                        set.insert(hash);
                    }
                }
            }
        });
    }

    /// Where feedback on a prediction made at unix time `predicted_at` (the arm's
    /// clock; `None` when the arm did not say) belongs; late and undated feedback is
    /// counted here, as not counted.
    pub fn place_feedback(&self, predicted_at: Option<f64>) -> Placement {
        match predicted_at {
            Some(t) if t >= self.started_at => Placement::Counted,
            Some(_) => {
                self.late.fetch_add(1, Ordering::Relaxed);
                Placement::Late
            }
            None => {
                self.undated.fetch_add(1, Ordering::Relaxed);
                Placement::Undated
            }
        }
    }

    /// Records one accepted feedback on a prediction of this phase for the sticky user
    /// with hash `user`, under the arm the hash `assigned` them: its type, its rating,
    /// and the `absolute_error` the serving arm answered (feedback with `actual`).
    pub fn record_feedback(
        &self,
        assigned: usize,
        user: u64,
        kind: FeedbackType,
        rating: Option<f64>,
        absolute_error: Option<f64>,
    ) {
        let bucket = bucket_of(user);
        self.with_cell(|cell| {
            let Some(c) = cell.arms.get_mut(assigned) else {
                return;
            };
            c.feedback[kind as usize] += 1;
            match kind {
                FeedbackType::Rating => {
                    if let Some(r) = rating {
                        c.stats.record_rating(bucket, r);
                    }
                }
                FeedbackType::Accurate => c.stats.record_accuracy(bucket, true),
                FeedbackType::TooHigh | FeedbackType::TooLow => {
                    c.stats.record_accuracy(bucket, false)
                }
            }
            if let Some(e) = absolute_error {
                c.stats.record_absolute_error(bucket, e);
            }
        });
    }

    /// Moves the cells' pending users into the sample (thinning it, and continuing the
    /// SRM test across the thinning, when it exceeds its cap). Called with the SRM lock
    /// held, which serialises readers.
    fn drain_users(&self, srm: &mut SrmState) {
        let mut moved: Vec<u64> = Vec::new();
        let mut over = false;
        for c in &self.cells {
            for arm in 0..self.variants.len() {
                moved.clear();
                {
                    let mut cell = lock(&c.0);
                    if let Some(set) = cell.pending.get_mut(arm) {
                        moved.extend(set.drain());
                    }
                }
                for &hash in &moved {
                    over |= self.users.insert(arm, hash) == Inserted::OverCap;
                }
            }
        }
        if over {
            let before = self.users.counts();
            if self.users.thin() {
                srm.thin(&before, &self.users.counts());
            }
        }
    }

    /// The merged accumulators of every arm, in config order.
    pub fn snapshot(&self) -> Vec<ArmCell> {
        let mut all = vec![ArmCell::default(); self.variants.len()];
        for c in &self.cells {
            let cell = lock(&c.0);
            for (a, b) in all.iter_mut().zip(&cell.arms) {
                a.merge(b);
            }
        }
        all
    }

    /// The merged accumulators of `arm`.
    pub fn arm(&self, arm: usize) -> ArmCell {
        self.snapshot().get(arm).cloned().unwrap_or_default()
    }

    /// Marks guardrail `name` as tripped in this phase; `false` if it already was.
    pub fn trip_once(&self, name: &str) -> bool {
        let mut tripped = lock(&self.tripped);
        if tripped.iter().any(|n| n == name) {
            return false;
        }
        tripped.push(name.to_string());
        true
    }

    /// Whether guardrail `name` tripped in this phase.
    pub fn has_tripped(&self, name: &str) -> bool {
        lock(&self.tripped).iter().any(|n| n == name)
    }

    /// Distinct sampled users per assigned arm and the sampling fraction, after moving
    /// the pending users in.
    pub fn users(&self) -> (Vec<u64>, f64) {
        let mut srm = lock(&self.srm);
        self.drain_users(&mut srm);
        (self.users.counts(), self.users.fraction())
    }

    /// Updates the SRM test with the current sample and reports it.
    pub fn srm(&self) -> SrmView {
        let mut srm = lock(&self.srm);
        self.drain_users(&mut srm);
        let counts = self.users.counts();
        srm.observe(&counts, &self.variants)
    }

    /// The number of comparisons that share the error budget of "some comparison is
    /// `worse`": every metric × candidate arm.
    pub fn family_size(&self) -> usize {
        Metric::ALL.len() * self.variants.len().saturating_sub(1)
    }

    /// Compares arm `arm` with the control (arm 0) on `metric` at level α/`family`
    /// (`family` = 1: the 95% comparison shown to people).
    pub fn compare_in(
        &self,
        snapshot: &[ArmCell],
        arm: usize,
        metric: Metric,
        min_samples: u64,
        family: usize,
    ) -> Option<ComparisonView> {
        let (control, candidate) = (snapshot.first()?, snapshot.get(arm)?);
        let config = family_config(
            &UserCompareConfig {
                min_samples,
                ..UserCompareConfig::default()
            },
            family,
        );
        let c = abgate_stats::compare_users(
            metric,
            candidate.stats.sums(metric),
            control.stats.sums(metric),
            &config,
        );
        let mut view = self.comparison_view(arm, &c);
        view.family_verdict = c.comparison.verdict;
        Some(view)
    }

    /// Compares arm `arm` with the control (arm 0) on `metric` (95%).
    pub fn compare(&self, arm: usize, metric: Metric, min_samples: u64) -> ComparisonView {
        let snapshot = self.snapshot();
        self.compare_in(&snapshot, arm, metric, min_samples, 1)
            .unwrap_or_else(|| {
                let empty = UserArmStats::new();
                let c = abgate_stats::compare_users(
                    metric,
                    empty.sums(metric),
                    empty.sums(metric),
                    &UserCompareConfig::default(),
                );
                self.comparison_view(arm, &c)
            })
    }

    fn comparison_view(&self, arm: usize, u: &abgate_stats::UserComparison) -> ComparisonView {
        let c = &u.comparison;
        ComparisonView {
            metric: c.metric,
            variant: self.variants.get(arm).cloned().unwrap_or_default(),
            control: self.variants.first().cloned().unwrap_or_default(),
            estimate: c.estimate,
            ci_low: c.ci_low,
            ci_high: c.ci_high,
            fixed_low: c.fixed_low,
            fixed_high: c.fixed_high,
            verdict: c.verdict,
            n: c.n(),
            n_arm: c.n_arm,
            n_control: c.n_control,
            family_verdict: c.verdict,
            buckets_arm: u.arm.map_or(0, |e| e.buckets),
            buckets_control: u.control.map_or(0, |e| e.buckets),
            effective_n: u.interval.map(|i| i.effective_n),
            degrees_of_freedom: u.interval.map(|i| i.degrees_of_freedom),
        }
    }

    /// Everything the phase says now (runs the SRM test on the current sample).
    pub fn summary(&self, min_samples: u64, ended_at: Option<f64>) -> PhaseSummary {
        self.summary_of(&self.snapshot(), min_samples, ended_at)
    }

    /// [`Phase::summary`] from a [`Phase::snapshot`].
    pub fn summary_of(
        &self,
        cells: &[ArmCell],
        min_samples: u64,
        ended_at: Option<f64>,
    ) -> PhaseSummary {
        let srm = self.srm();
        let fraction = self.users.fraction();
        let total: f64 = self.weights.iter().sum();
        let arms = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let weight = self.weights.get(i).copied().unwrap_or(0.0);
                figures(
                    self.variants.get(i).cloned().unwrap_or_default(),
                    weight,
                    if total > 0.0 { weight / total } else { 0.0 },
                    srm.observed.get(i).copied().unwrap_or(0),
                    fraction,
                    c,
                )
            })
            .collect();
        let config = UserCompareConfig {
            min_samples,
            ..UserCompareConfig::default()
        };
        let k = self.family_size();
        let family_cfg = family_config(&config, k);
        let mut comparisons = Vec::new();
        let mut family_worse = Vec::new();
        if let Some(control) = cells.first() {
            for (i, arm) in cells.iter().enumerate().skip(1) {
                let shown = compare_user_arms(&arm.stats, &control.stats, &config);
                let family = compare_user_arms(&arm.stats, &control.stats, &family_cfg);
                for (s, f) in shown.iter().zip(&family) {
                    let mut view = self.comparison_view(i, s);
                    view.family_verdict = f.comparison.verdict;
                    comparisons.push(view);
                }
                family_worse.push(any_worse(family.iter().map(|f| &f.comparison)));
            }
        }
        let alpha = config.boundary.alpha();
        PhaseSummary {
            phase: self.number,
            phase_id: self.id.clone(),
            started_at: self.started_at,
            ended_at,
            arms,
            srm,
            comparisons,
            family: FamilyView {
                alpha,
                comparisons: k,
                per_comparison_alpha: bonferroni_alpha(alpha, k),
                any_worse: family_worse.iter().any(|w| *w),
            },
            feedback_outside_phase: OutsideFigure {
                late: self.late.load(Ordering::Relaxed),
                undated: self.undated.load(Ordering::Relaxed),
            },
        }
    }
}

fn figures(
    variant: String,
    weight: f64,
    share: f64,
    users: u64,
    fraction: f64,
    c: &ArmCell,
) -> ArmFigures {
    let s = &c.stats;
    let fb = |t: FeedbackType| c.feedback[t as usize];
    let requests = s.errors.count();
    let errors = s.errors.sum().round() as u64;
    let ae = &s.absolute_error;
    ArmFigures {
        variant,
        weight,
        share,
        users: UsersFigure {
            n: users,
            estimate: users as f64 / fraction,
            sample_fraction: fraction,
        },
        requests: RequestsFigure {
            n: requests,
            errors,
            error_rate: s.value(Metric::ErrorRate),
        },
        latency_seconds: LatencyFigure {
            n: s.latency_seconds.count(),
            mean: s.value(Metric::LatencyMeanSeconds),
            p50: c.latency_quantile(0.5),
            p95: c.latency_quantile(0.95),
        },
        feedback: FeedbackFigure {
            n: c.feedback.iter().sum(),
            rating: fb(FeedbackType::Rating),
            accurate: fb(FeedbackType::Accurate),
            too_high: fb(FeedbackType::TooHigh),
            too_low: fb(FeedbackType::TooLow),
        },
        rating: MeanFigure {
            n: s.rating.count(),
            mean: s.value(Metric::Rating),
        },
        accurate_share: ShareFigure {
            n: s.accuracy.count(),
            value: s.value(Metric::AccurateShare),
        },
        absolute_error: ErrorFigure {
            n: ae.count(),
            mae: s.value(Metric::AbsoluteError),
            rmse: (ae.count() > 0).then(|| (ae.sum_sq() / ae.count() as f64).sqrt()),
        },
        crossover: CrossoverFigure {
            n: c.crossed,
            share: c.crossover_share(),
        },
        excluded: c.excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::users::user_hash;

    fn phase(weights: [f64; 2]) -> Phase {
        Phase::new(
            1,
            0.0,
            "s",
            vec!["best_model".into(), "candidate_model".into()],
            weights.to_vec(),
            100_000,
        )
    }

    fn user(i: u64) -> Option<u64> {
        Some(user_hash(format!("user-{i}")))
    }

    #[test]
    fn responses_and_feedback_land_in_their_figures() {
        let p = phase([50.0, 50.0]);
        let a = user_hash("a");
        p.record_response(0, Some(0), Some(a), 200, 0.002);
        p.record_response(0, Some(0), Some(a), 503, 0.004);
        // An override and an anonymous request: outside comparisons and SRM.
        p.record_response(1, Some(1), None, 404, 0.02);
        p.record_response(0, Some(1), None, 200, 0.02);
        p.record_feedback(0, a, FeedbackType::Rating, Some(4.0), None);
        p.record_feedback(0, a, FeedbackType::Accurate, None, Some(0.5));
        p.record_feedback(0, a, FeedbackType::TooLow, None, Some(1.5));
        let s = p.summary(100, None);
        let f = &s.arms[0];
        assert_eq!(f.users.n, 1);
        assert_eq!((f.requests.n, f.requests.errors), (2, 1));
        assert_eq!(f.requests.error_rate, Some(0.5));
        assert_eq!(f.latency_seconds.n, 2);
        assert!((f.latency_seconds.mean.unwrap_or(0.0) - 0.003).abs() < 1e-12);
        let p50 = f.latency_seconds.p50.unwrap_or(0.0);
        assert!((0.0025..=0.005).contains(&p50), "{p50}");
        assert_eq!(f.feedback.n, 3);
        assert_eq!(
            (f.feedback.rating, f.feedback.accurate, f.feedback.too_low),
            (1, 1, 1)
        );
        assert_eq!(f.rating.mean, Some(4.0));
        assert_eq!(f.accurate_share.value, Some(0.5));
        assert_eq!(f.absolute_error.mae, Some(1.0));
        let rmse = f.absolute_error.rmse.unwrap_or(0.0);
        assert!((rmse - (1.25f64).sqrt()).abs() < 1e-12);
        assert_eq!((f.crossover.n, f.crossover.share), (0, Some(0.0)));
        // Both excluded answers were served by the candidate.
        assert_eq!((f.excluded, s.arms[1].excluded), (0, 2));
        assert_eq!(s.arms[1].requests.n, 0);
        assert_eq!(s.arms[1].users.n, 0);
        assert_eq!(s.srm.observed, vec![1, 0]);
        assert_eq!(s.comparisons.len(), Metric::ALL.len());
        assert!(s
            .comparisons
            .iter()
            .all(|c| c.verdict == Verdict::NotEnoughData
                && c.family_verdict == Verdict::NotEnoughData
                && c.variant == "candidate_model"));
        assert_eq!(s.family.comparisons, 5);
        assert!((s.family.per_comparison_alpha - 0.01).abs() < 1e-15);
        assert_eq!(s.phase_id, phase_id("s", &p.variants, &p.weights));
    }

    #[test]
    fn cells_written_from_several_threads_add_up() {
        let p = std::sync::Arc::new(phase([50.0, 50.0]));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let p = std::sync::Arc::clone(&p);
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let u = Some(user_hash(format!("{t}-{i}")));
                        p.record_response(1, Some(1), u, 200, 0.001);
                        // The same user again: one user.
                        p.record_response(1, Some(1), u, 200, 0.001);
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let s = p.summary(100, None);
        assert_eq!(s.arms[1].requests.n, 8000);
        assert_eq!(s.arms[1].users.n, 4000);
        assert_eq!(s.srm.observed, vec![0, 4000]);
    }

    #[test]
    fn the_sample_is_thinned_on_read_and_stays_under_its_cap() {
        let p = Phase::new(
            1,
            0.0,
            "s",
            vec!["a".into(), "b".into()],
            vec![50.0, 50.0],
            500,
        );
        for i in 0..5000 {
            p.record_response(
                (i % 2) as usize,
                Some((i % 2) as usize),
                user(i),
                200,
                0.001,
            );
            if i % 700 == 0 {
                let _ = p.srm();
            }
        }
        let (counts, fraction) = p.users();
        let sampled: u64 = counts.iter().sum();
        assert!(sampled <= 500 && fraction < 1.0, "{counts:?} {fraction}");
        let estimate = sampled as f64 / fraction;
        assert!((estimate - 5000.0).abs() < 1000.0, "{estimate}");
        assert!(!p.srm().alarm);
    }

    #[test]
    fn a_phase_continues_only_with_the_same_salt_arms_and_weights() {
        let p = phase([50.0, 50.0]);
        let arms = ["best_model", "candidate_model"];
        assert!(p.continues("s", &arms, &[50.0, 50.0]));
        assert!(!p.continues("t", &arms, &[50.0, 50.0]));
        assert!(!p.continues("s", &arms, &[50.0, 0.0]));
        assert!(!p.continues("s", &["best_model", "other"], &[50.0, 50.0]));
    }

    #[test]
    fn the_phase_id_is_a_function_of_salt_arms_and_weights() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let id = phase_id("s", &names(&["a", "b"]), &[90.0, 10.0]);
        assert_eq!(id.len(), 16);
        assert_eq!(id, phase_id("s", &names(&["a", "b"]), &[90.0, 10.0]));
        for other in [
            phase_id("t", &names(&["a", "b"]), &[90.0, 10.0]),
            phase_id("s", &names(&["a", "c"]), &[90.0, 10.0]),
            phase_id("s", &names(&["a", "b"]), &[90.0, 0.0]),
            phase_id("s", &names(&["ab", ""]), &[90.0, 10.0]),
        ] {
            assert_ne!(id, other);
        }
        // Fixed: the same on every replica and every release.
        assert_eq!(
            phase_id("s", &names(&["a", "b"]), &[90.0, 10.0]),
            phase(90.0, 10.0).id
        );
        fn phase(a: f64, b: f64) -> Phase {
            Phase::new(7, 1.0, "s", vec!["a".into(), "b".into()], vec![a, b], 10)
        }
    }

    #[test]
    fn a_clear_error_rise_is_worse_and_trips_once() {
        let p = phase([50.0, 50.0]);
        for i in 0..5000 {
            p.record_response(
                0,
                Some(0),
                user(i),
                if i % 100 == 0 { 500 } else { 200 },
                0.001,
            );
            let j = i + 100_000;
            p.record_response(
                1,
                Some(1),
                user(j),
                if i % 10 == 0 { 500 } else { 200 },
                0.001,
            );
        }
        let c = p.compare(1, Metric::ErrorRate, 100);
        assert_eq!(c.verdict, Verdict::Worse);
        assert!(c.ci_low.unwrap_or(0.0) > 0.0);
        assert!(c.buckets_arm > 100 && c.buckets_control > 100);
        let s = p.summary(100, None);
        assert!(s.family.any_worse);
        assert!(p.trip_once("g") && !p.trip_once("g") && p.has_tripped("g"));
    }

    /// Intention to treat: a candidate whose connections break 5% of the time, each
    /// broken request retried on the control. The retries that mend the request still
    /// cost the user the broken attempt (here 300 ms); those that do not (a fifth of
    /// them, as when the control is busy or the break comes late) end in a 502. By
    /// served arm the candidate looks flawless; by assigned arm it is `worse` on
    /// error_rate and latency, and its crossover is ≈ 5%.
    #[test]
    fn a_candidate_breaking_connections_is_worse_by_assigned_arm() {
        let itt = phase([50.0, 50.0]);
        let served_view = phase([50.0, 50.0]);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        for i in 0..20_000u64 {
            let u = user(i % 4000); // 4000 users, 5 requests each
            let assigned = usize::from(i % 4000 >= 2000);
            let control_status = if next() < 0.01 { 500 } else { 200 };
            let (served, status, latency) = if assigned == 1 && next() < 0.05 {
                // Broken on the candidate, retried on the control.
                let mended = next() < 0.8;
                (0, if mended { control_status } else { 502 }, 0.300 + 0.010)
            } else {
                (assigned, control_status, 0.010 + 0.002 * next())
            };
            itt.record_response(assigned, Some(served), u, status, latency);
            // What served-arm attribution would have recorded.
            served_view.record_response(served, Some(served), u, status, latency);
        }
        let by_assigned = itt.summary(100, None);
        let by_served = served_view.summary(100, None);
        let verdict = |s: &PhaseSummary, m: Metric| {
            s.comparisons
                .iter()
                .find(|c| c.metric == m)
                .map(|c| c.family_verdict)
        };
        assert_eq!(
            verdict(&by_assigned, Metric::ErrorRate),
            Some(Verdict::Worse),
            "{:?}",
            by_assigned.comparisons[0]
        );
        assert_eq!(
            verdict(&by_assigned, Metric::LatencyMeanSeconds),
            Some(Verdict::Worse)
        );
        assert!(by_assigned.family.any_worse);
        assert_ne!(verdict(&by_served, Metric::ErrorRate), Some(Verdict::Worse));
        let share = by_assigned.arms[1].crossover.share.unwrap_or(0.0);
        assert!((0.04..0.06).contains(&share), "{share}");
        assert_eq!(by_assigned.arms[0].crossover.n, 0);
        // SRM by assigned users stays quiet (the split is fine; only serving moved).
        assert!(!by_assigned.srm.alarm, "{:?}", by_assigned.srm);
    }

    #[test]
    fn overrides_and_anonymous_requests_stay_out_of_comparisons_and_srm() {
        let p = phase([90.0, 10.0]);
        for i in 0..10_000u64 {
            let assigned = usize::from(i % 10 == 0);
            p.record_response(assigned, Some(assigned), user(i), 200, 0.01);
        }
        let before = p.summary(100, None);
        // Heavy traffic forced onto the candidate, all failing, and anonymous users.
        for _ in 0..5_000 {
            p.record_response(1, Some(1), None, 500, 2.0);
            p.record_response(0, Some(0), None, 500, 2.0);
        }
        let after = p.summary(100, None);
        assert_eq!(before.comparisons, after.comparisons);
        assert_eq!(before.srm.observed, after.srm.observed);
        assert!(!after.srm.alarm);
        assert_eq!(after.arms[1].excluded, 5_000);
        assert_eq!(after.arms[1].requests, before.arms[1].requests);
    }

    #[test]
    fn late_and_undated_feedback_are_not_counted() {
        let p = Phase::new(
            2,
            1000.0,
            "s",
            vec!["a".into(), "b".into()],
            vec![1.0, 1.0],
            10,
        );
        assert_eq!(p.place_feedback(Some(1000.5)), Placement::Counted);
        assert_eq!(p.place_feedback(Some(999.0)), Placement::Late);
        assert_eq!(p.place_feedback(None), Placement::Undated);
        let s = p.summary(100, None);
        assert_eq!(
            s.feedback_outside_phase,
            OutsideFigure {
                late: 1,
                undated: 1
            }
        );
    }

    #[test]
    fn memory_per_arm_is_fixed() {
        // 5 metrics × (128 buckets × 16 bytes + 8) plus histogram and counters.
        const { assert!(ARM_CELL_BYTES >= 5 * 2056 && ARM_CELL_BYTES < 5 * 2056 + 512) };
        eprintln!(
            "{ARM_CELL_BYTES} bytes per arm and cell, {} per arm",
            ARM_CELL_BYTES * CELLS
        );
    }
}
