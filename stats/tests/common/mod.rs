//! Seeded traffic generators shared by the by-user simulations: a fixed population of
//! users with lognormal or Zipf activity and per-user effects on every metric, or i.i.d.
//! requests (every request a new user), split between a control and a candidate.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use abgate_stats::buckets::BUCKETS;
use abgate_stats::user_comparison::UserArmStats;
use abgate_stats::{ArmStats, Metric};
use rand::rngs::SmallRng;
use rand::Rng;

/// Standard normal draw (Marsaglia's polar method, one of each pair).
pub fn normal(rng: &mut SmallRng) -> f64 {
    loop {
        let u: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let v: f64 = rng.random::<f64>() * 2.0 - 1.0;
        let s = u * u + v * v;
        if s > 0.0 && s < 1.0 {
            return u * (-2.0 * s.ln() / s).sqrt();
        }
    }
}

/// Gamma(shape, 1) draw: Marsaglia & Tsang (2000), with the `U^{1/a}` boost below 1.
pub fn gamma(rng: &mut SmallRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

/// Beta draw with the given mean and intra-class correlation `1/(a + b + 1)`.
pub fn beta_mean_icc(rng: &mut SmallRng, mean: f64, icc: f64) -> f64 {
    let total = 1.0 / icc - 1.0;
    let (a, b) = (mean * total, (1.0 - mean) * total);
    let x = gamma(rng, a);
    let y = gamma(rng, b);
    if x + y > 0.0 {
        x / (x + y)
    } else {
        mean
    }
}

/// Walker/Vose alias table: O(1) draws from a discrete distribution.
pub struct Alias {
    probability: Vec<f64>,
    alias: Vec<usize>,
}

impl Alias {
    /// The table for weights `w` (positive).
    pub fn new(w: &[f64]) -> Alias {
        let n = w.len();
        let total: f64 = w.iter().sum();
        let mut scaled: Vec<f64> = w.iter().map(|x| x * n as f64 / total).collect();
        let mut alias = vec![0usize; n];
        let mut probability = vec![1.0f64; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..n).partition(|&i| scaled[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            probability[s] = scaled[s];
            alias[s] = l;
            scaled[l] -= 1.0 - scaled[s];
            if scaled[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        Alias { probability, alias }
    }

    /// One draw.
    #[inline]
    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        let i = rng.random_range(0..self.probability.len());
        if rng.random::<f64>() < self.probability[i] {
            i
        } else {
            self.alias[i]
        }
    }
}

/// How users send requests.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activity {
    /// Every request comes from a new user.
    Iid,
    /// A fixed population whose request rates are lognormal(0, σ).
    Lognormal(f64),
    /// A fixed population whose request rates follow Zipf(s): rate ∝ 1/rank^s.
    Zipf(f64),
}

/// A traffic scenario: activity, population and per-user effects.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    /// Short name for the report.
    pub name: &'static str,
    /// Activity model.
    pub activity: Activity,
    /// Users in the fixed population.
    pub users: usize,
    /// Mean 5xx probability.
    pub error_rate: f64,
    /// ICC of the per-user 5xx probability (Beta).
    pub error_icc: f64,
    /// SD of the per-user latency log-offset u.
    pub latency_u: f64,
    /// SD of the per-user rating offset b.
    pub rating_b: f64,
    /// SD of ln s, the per-user absolute-error scale.
    pub abs_error_ln_sd: f64,
    /// ICC of the per-user `accurate` probability (Beta, mean 0.5).
    pub accurate_icc: f64,
}

impl Traffic {
    /// Every request a new user; the marginal distributions of the clustered scenarios.
    pub const IID: Traffic = Traffic {
        name: "iid",
        activity: Activity::Iid,
        users: 0,
        ..Traffic::HEAVY
    };
    /// Lognormal(σ = 1) activity over 1,300 users (Σm²/Σm ≈ 84 at 40k requests, the
    /// "moderate" clustering of the round-3 measurements), per-user effects on every
    /// metric.
    pub const MODERATE: Traffic = Traffic {
        name: "moderate",
        activity: Activity::Lognormal(1.0),
        users: 1_300,
        ..Traffic::HEAVY
    };
    /// Zipf(s = 1) activity over 10,000 users, per-user effects on every metric.
    pub const HEAVY: Traffic = Traffic {
        name: "heavy",
        activity: Activity::Zipf(1.0),
        users: 10_000,
        error_rate: 0.01,
        error_icc: 0.02,
        latency_u: 0.3,
        rating_b: 0.5,
        abs_error_ln_sd: 0.4,
        accurate_icc: 0.05,
    };
}

/// One user's traits.
#[derive(Clone, Copy, Debug)]
struct User {
    candidate: bool,
    bucket: usize,
    error_p: f64,
    latency_mu: f64,
    rating_b: f64,
    abs_scale: f64,
    accurate_q: f64,
}

const LATENCY_MEDIAN: f64 = 0.05;
const LATENCY_NOISE: f64 = 0.6;
const RATING_CENTRE: f64 = 3.2;
const ABS_ERROR_SCALE: f64 = 0.6;

/// One request's outcome, attributed to its user's arm and bucket.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    /// Whether the candidate (not the control) was assigned.
    pub candidate: bool,
    /// The user's bucket.
    pub bucket: usize,
    /// 5xx answer.
    pub error: bool,
    /// Latency in seconds.
    pub latency: f64,
    /// A rating feedback, if any.
    pub rating: Option<f64>,
    /// An accuracy feedback, if any.
    pub accurate: Option<bool>,
    /// An absolute error (feedback with `actual`), if any.
    pub abs_error: Option<f64>,
}

/// The traffic of one experiment: its population (drawn once) and a request stream.
pub struct Experiment {
    traffic: Traffic,
    candidate_share: f64,
    users: Vec<User>,
    alias: Option<Alias>,
    /// Added to the candidate's 5xx probability (power simulations).
    pub candidate_error_shift: f64,
    /// Σm²/Σm bookkeeping: requests per user.
    requests_per_user: Vec<u32>,
}

fn draw_user(rng: &mut SmallRng, t: &Traffic, candidate_share: f64) -> User {
    User {
        candidate: rng.random::<f64>() < candidate_share,
        bucket: rng.random_range(0..BUCKETS),
        error_p: beta_mean_icc(rng, t.error_rate, t.error_icc),
        latency_mu: LATENCY_MEDIAN.ln() + t.latency_u * normal(rng),
        rating_b: t.rating_b * normal(rng),
        abs_scale: (ABS_ERROR_SCALE.ln() + t.abs_error_ln_sd * normal(rng)).exp(),
        accurate_q: beta_mean_icc(rng, 0.5, t.accurate_icc),
    }
}

impl Experiment {
    /// A new experiment: draws the population (activity, arm, bucket and effects of every
    /// user) for `traffic` with the candidate receiving `candidate_share` of users.
    pub fn new(rng: &mut SmallRng, traffic: Traffic, candidate_share: f64) -> Experiment {
        let (users, alias) = match traffic.activity {
            Activity::Iid => (Vec::new(), None),
            Activity::Lognormal(sigma) => {
                let weights: Vec<f64> = (0..traffic.users)
                    .map(|_| (sigma * normal(rng)).exp())
                    .collect();
                let users = (0..traffic.users)
                    .map(|_| draw_user(rng, &traffic, candidate_share))
                    .collect();
                (users, Some(Alias::new(&weights)))
            }
            Activity::Zipf(s) => {
                let weights: Vec<f64> = (1..=traffic.users).map(|r| (r as f64).powf(-s)).collect();
                let users = (0..traffic.users)
                    .map(|_| draw_user(rng, &traffic, candidate_share))
                    .collect();
                (users, Some(Alias::new(&weights)))
            }
        };
        let n = users.len();
        Experiment {
            traffic,
            candidate_share,
            users,
            alias,
            candidate_error_shift: 0.0,
            requests_per_user: vec![0; n],
        }
    }

    /// The next request.
    #[inline]
    pub fn request(&mut self, rng: &mut SmallRng) -> Request {
        let t = &self.traffic;
        let user = match &self.alias {
            Some(alias) => {
                let i = alias.sample(rng);
                self.requests_per_user[i] += 1;
                self.users[i]
            }
            None => {
                // A new user every request: the same marginal distributions, drawn cheaply.
                let candidate = rng.random::<f64>() < self.candidate_share;
                let error_p = t.error_rate;
                User {
                    candidate,
                    bucket: rng.random_range(0..BUCKETS),
                    error_p,
                    latency_mu: LATENCY_MEDIAN.ln() + t.latency_u * normal(rng),
                    rating_b: t.rating_b * normal(rng),
                    abs_scale: (ABS_ERROR_SCALE.ln() + t.abs_error_ln_sd * normal(rng)).exp(),
                    accurate_q: 0.5,
                }
            }
        };
        let shift = if user.candidate {
            self.candidate_error_shift
        } else {
            0.0
        };
        let mut r = Request {
            candidate: user.candidate,
            bucket: user.bucket,
            error: rng.random::<f64>() < user.error_p + shift,
            latency: (user.latency_mu + LATENCY_NOISE * normal(rng)).exp(),
            ..Request::default()
        };
        if rng.random::<f64>() < 0.3 {
            if rng.random::<f64>() < 0.25 {
                let x = (RATING_CENTRE + user.rating_b + normal(rng)).round();
                r.rating = Some(x.clamp(1.0, 5.0));
            } else {
                r.accurate = Some(rng.random::<f64>() < user.accurate_q);
            }
            if rng.random::<f64>() < 1.0 / 3.0 {
                r.abs_error = Some((user.abs_scale * normal(rng)).abs());
            }
        }
        r
    }

    /// Σm²/Σm over users so far (size-weighted mean requests per user); 1 for i.i.d.
    pub fn weighted_cluster_size(&self) -> f64 {
        let (mut s1, mut s2) = (0.0f64, 0.0f64);
        for &m in &self.requests_per_user {
            s1 += f64::from(m);
            s2 += f64::from(m) * f64::from(m);
        }
        if s1 > 0.0 {
            s2 / s1
        } else {
            1.0
        }
    }
}

/// Both arms' state, by user (bucket sums) and by request (the round-2 accumulators).
#[derive(Clone, Default)]
pub struct Arms {
    /// By user: control, candidate.
    pub users: [UserArmStats; 2],
    /// By request: control, candidate.
    pub requests: [ArmStats; 2],
}

impl Arms {
    /// Records one request in both states.
    #[inline]
    pub fn record(&mut self, r: &Request) {
        let i = usize::from(r.candidate);
        let status = if r.error { 500 } else { 200 };
        self.users[i].record_response(r.bucket, status, r.latency);
        self.requests[i].record_response(status, r.latency);
        if let Some(x) = r.rating {
            self.users[i].record_rating(r.bucket, x);
            self.requests[i].record_rating(x);
        }
        if let Some(a) = r.accurate {
            self.users[i].record_accuracy(r.bucket, a);
            self.requests[i].record_accuracy(a);
        }
        if let Some(e) = r.abs_error {
            self.users[i].record_absolute_error(r.bucket, e);
            self.requests[i].record_absolute_error(e);
        }
    }
}

/// Nominal rate plus three binomial standard deviations for `runs` runs.
pub fn allowance(rate: f64, runs: usize) -> f64 {
    rate + 3.0 * (rate * (1.0 - rate) / runs as f64).sqrt()
}

/// Index of a metric in [`Metric::ALL`].
pub fn metric_index(metric: Metric) -> usize {
    Metric::ALL.iter().position(|&m| m == metric).unwrap()
}
