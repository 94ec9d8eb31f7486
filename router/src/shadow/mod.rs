//! Shadow arms: a sample of one arm's served `/predict` users is mirrored to a model
//! no user sees, and the two answers are compared. The copy goes out on a task of its
//! own, after the client's answer, so the client never waits on the shadow and never
//! sees what it does; at most `max_in_flight` copies per shadow are in flight (the
//! rest are dropped and counted), each within the shadow's own timeout.
//!
//! Both transports call [`wanted`] (cheap, pure) and [`mirror`] (after the answer).

pub mod compare;
mod metrics;

use serde::Serialize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::config::{ArmConfig, RouterConfig, ShadowConfig, UpstreamConfig};
use crate::metrics::Source;
use crate::upstream::h1;
use crate::upstream::relay::{relay, Relay, Sink};
use crate::upstream::{self, release};
pub use metrics::{ShadowMetrics, ShadowResult, ShadowSeries};

pub use compare::sampled;

/// A shadow's answer (and a primary answer read whole to mirror) is read up to this
/// size.
pub const ANSWER_LIMIT: usize = 4 * 1024 * 1024;

/// The header marking a mirrored request.
const SHADOW_HEADER: &[u8] = crate::headers::SHADOW.as_bytes();

/// What outlives a reload of one shadow: the in-flight count (so the bound holds
/// across versions) and the primary's latency on mirrored requests.
#[derive(Default)]
pub struct ShadowStats {
    in_flight: AtomicUsize,
    primary_micros: AtomicU64,
    primary_count: AtomicU64,
}

/// One shadow of the active configuration.
pub struct ActiveShadow {
    /// Its configuration.
    pub config: ShadowConfig,
    /// Index of the arm it mirrors.
    pub of: usize,
    /// Its pre-resolved series.
    pub series: ShadowSeries,
    /// State shared across reloads.
    pub stats: Arc<ShadowStats>,
    /// Upstream settings of its copies (its own timeout).
    settings: UpstreamConfig,
}

/// The shadows of `config`, keeping the shared state of those `previous` had.
pub fn build(
    metrics: &ShadowMetrics,
    previous: &[ActiveShadow],
    config: &RouterConfig,
) -> Vec<ActiveShadow> {
    config
        .shadows
        .iter()
        .filter_map(|s| {
            let of = config.arm_index(&s.of)?;
            let stats = previous
                .iter()
                .find(|p| p.config.name == s.name)
                .map_or_else(Arc::default, |p| Arc::clone(&p.stats));
            let mut settings = config.upstream.clone();
            settings.request_timeout = s.timeout;
            settings.connect_timeout = settings.connect_timeout.min(s.timeout);
            Some(ActiveShadow {
                config: s.clone(),
                of,
                series: metrics.series(&s.name),
                stats,
                settings,
            })
        })
        .collect()
}

/// Whether a request answered by arm `served` is mirrored to any shadow: a sticky
/// key sampled by a shadow of that arm. Free when no shadow is configured.
pub fn wanted(
    shadows: &[ActiveShadow],
    served: Option<usize>,
    source: Source,
    key: Option<&[u8]>,
) -> bool {
    if shadows.is_empty() {
        return false;
    }
    match (served, key) {
        (Some(served), Some(key)) if source == Source::Sticky => shadows
            .iter()
            .any(|s| s.of == served && sampled(key, s.config.sample)),
        _ => false,
    }
}

/// A request to mirror, as the transport received it.
pub struct Mirrored<'a, H> {
    /// Request target (`/predict`, perhaps with a query).
    pub path: &'a [u8],
    /// The client's headers (hop-by-hop ones are dropped on the way).
    pub headers: H,
    /// The request id the primary got.
    pub request_id: &'a [u8],
    /// The request body.
    pub body: &'a [u8],
    /// The primary's (2xx) answer body, as the client got it; `None` when it was too
    /// large to keep a copy of.
    pub primary: Option<&'a [u8]>,
    /// How long the primary took, from request start to answer.
    pub primary_elapsed: Duration,
}

/// Mirrors a request served by arm `served` to every shadow of that arm that samples
/// `key`: each copy (with `X-Shadow: 1` and the same `X-Request-Id`) is sent on a task
/// of this worker's runtime, compared and counted there; nothing is awaited here.
pub fn mirror<'h, H>(
    shadows: &[ActiveShadow],
    served: Option<usize>,
    source: Source,
    key: Option<&[u8]>,
    request: Mirrored<'_, H>,
) where
    H: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    if !wanted(shadows, served, source, key) || !is_predict(request.path) {
        return;
    }
    let (Some(served), Some(key)) = (served, key) else {
        return;
    };
    // An answer over the limit is not compared (the client had it whole regardless):
    // the copy is skipped and counted as dropped.
    let answer = request.primary.filter(|p| p.len() <= ANSWER_LIMIT);
    let mut primary: Option<Arc<[u8]>> = None;
    for shadow in shadows {
        if shadow.of != served || !sampled(key, shadow.config.sample) {
            continue;
        }
        let Some(answer) = answer else {
            shadow.series.result(ShadowResult::Dropped);
            continue;
        };
        let Some(slot) = InFlight::take(&shadow.stats, shadow.config.max_in_flight) else {
            shadow.series.result(ShadowResult::Dropped);
            continue;
        };
        let primary = Arc::clone(primary.get_or_insert_with(|| Arc::from(answer)));
        let mut out = Vec::with_capacity(1024 + request.body.len());
        let headers = request
            .headers
            .clone()
            .filter(|(n, _)| !n.eq_ignore_ascii_case(SHADOW_HEADER))
            .chain(std::iter::once((SHADOW_HEADER, &b"1"[..])));
        h1::write_request_head(
            &mut out,
            "POST",
            request.path,
            shadow.config.upstream.authority.as_str(),
            headers,
            request.request_id,
            request.body.len(),
        );
        out.extend_from_slice(request.body);
        let copy = Copy {
            arm: shadow.config.upstream.clone(),
            settings: shadow.settings.clone(),
            series: shadow.series.clone(),
            tolerance: shadow.config.tolerance,
            stats: Arc::clone(&shadow.stats),
            primary_elapsed: request.primary_elapsed,
            request_id: request.request_id.to_vec(),
        };
        tokio::spawn(async move {
            let _slot = slot;
            copy.run(&out, &primary).await;
        });
    }
}

fn is_predict(path: &[u8]) -> bool {
    let path = path.split(|b| *b == b'?').next().unwrap_or_default();
    path == b"/predict"
}

/// A slot among a shadow's copies in flight, released on drop (also when the task is
/// cancelled at shutdown).
struct InFlight(Arc<ShadowStats>);

impl InFlight {
    fn take(stats: &Arc<ShadowStats>, max: usize) -> Option<InFlight> {
        let previous = stats.in_flight.fetch_add(1, Ordering::AcqRel);
        let slot = InFlight(Arc::clone(stats));
        (previous < max).then_some(slot)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything a copy's task owns.
struct Copy {
    arm: ArmConfig,
    settings: UpstreamConfig,
    series: ShadowSeries,
    tolerance: f64,
    stats: Arc<ShadowStats>,
    primary_elapsed: Duration,
    /// The request id the copy carries (the shadow's answer must echo it, if any).
    request_id: Vec<u8>,
}

impl Copy {
    async fn run(self, request: &[u8], primary: &[u8]) {
        let started = Instant::now();
        let within = self.settings.request_timeout;
        let answer = tokio::time::timeout(within, self.exchange(request, started + within)).await;
        self.series
            .duration
            .observe(started.elapsed().as_secs_f64());
        let body = match answer {
            Ok(Some(body)) => body,
            _ => return self.series.result(ShadowResult::ShadowError),
        };
        let Some(diffs) = compare::differences(primary, &body) else {
            return self.series.result(ShadowResult::Unparseable);
        };
        for d in diffs {
            self.series.difference.observe(d);
            if d <= self.tolerance {
                self.series.agree.inc();
            } else {
                self.series.disagree.inc();
            }
        }
        let micros = u64::try_from(self.primary_elapsed.as_micros()).unwrap_or(u64::MAX);
        self.stats
            .primary_micros
            .fetch_add(micros, Ordering::Relaxed);
        self.stats.primary_count.fetch_add(1, Ordering::Relaxed);
        self.series.result(ShadowResult::Compared);
    }

    /// The shadow's 2xx answer body, or `None` for any failure.
    async fn exchange(&self, request: &[u8], deadline: Instant) -> Option<Vec<u8>> {
        let (mut upstream, head) = upstream::exchange(
            &self.arm,
            &self.settings,
            request,
            &self.request_id,
            |_, _| {},
        )
        .await
        .map_err(|e| tracing::debug!(shadow = %self.arm.name, error = %e, "shadow failed"))
        .ok()?;
        let mut body = Vec::new();
        let mut sink = Sink::Buffer {
            body: &mut body,
            limit: ANSWER_LIMIT,
        };
        match relay(&mut upstream, head.framing, &mut sink, deadline).await {
            Relay::Done => release(upstream, &head, &self.settings),
            _ => return None,
        }
        head.status.is_success().then_some(body)
    }
}

/// `/api/shadows`: every shadow's figures.
#[derive(Serialize)]
pub struct ShadowsView {
    shadows: Vec<ShadowView>,
}

/// Quantiles and mean of the absolute differences (`null` before any comparison).
#[derive(Serialize)]
struct Difference {
    mean: Option<f64>,
    p50: Option<f64>,
    p90: Option<f64>,
}

#[derive(Serialize)]
struct ShadowView {
    name: String,
    of: String,
    url: String,
    sample: f64,
    tolerance: f64,
    max_in_flight: usize,
    in_flight: usize,
    compared: u64,
    shadow_errors: u64,
    dropped: u64,
    unparseable: u64,
    agreements: u64,
    disagreements: u64,
    /// Share of compared predictions within the tolerance.
    agreement_share: Option<f64>,
    absolute_difference: Difference,
    /// Mean time of the shadow's answers.
    shadow_latency_seconds: Option<f64>,
    /// Mean time of the primary's answers to the same (compared) requests.
    primary_latency_seconds: Option<f64>,
}

/// The figures of the active shadows.
pub fn view(shadows: &[ActiveShadow]) -> ShadowsView {
    ShadowsView {
        shadows: shadows.iter().map(shadow_view).collect(),
    }
}

fn shadow_view(s: &ActiveShadow) -> ShadowView {
    use prometheus::core::Collector;
    let series = &s.series;
    let (agree, disagree) = (series.agree.get(), series.disagree.get());
    let total = agree + disagree;
    let h = &series.difference;
    let buckets: Vec<(f64, u64)> = h
        .collect()
        .first()
        .and_then(|mf| mf.get_metric().first())
        .map(|m| {
            m.get_histogram()
                .get_bucket()
                .iter()
                .map(|b| (b.upper_bound(), b.cumulative_count()))
                .collect()
        })
        .unwrap_or_default();
    let n = h.get_sample_count();
    let quantile = |q| abgate_common::metrics::quantile(q, &buckets, n);
    let mean = |sum: f64, count: u64| (count > 0).then(|| sum / count as f64);
    let primary_count = s.stats.primary_count.load(Ordering::Relaxed);
    let primary_micros = s.stats.primary_micros.load(Ordering::Relaxed);
    ShadowView {
        name: s.config.name.clone(),
        of: s.config.of.clone(),
        url: s.config.url.clone(),
        sample: s.config.sample,
        tolerance: s.config.tolerance,
        max_in_flight: s.config.max_in_flight,
        in_flight: s
            .stats
            .in_flight
            .load(Ordering::Relaxed)
            .min(s.config.max_in_flight),
        compared: series.count(ShadowResult::Compared),
        shadow_errors: series.count(ShadowResult::ShadowError),
        dropped: series.count(ShadowResult::Dropped),
        unparseable: series.count(ShadowResult::Unparseable),
        agreements: agree,
        disagreements: disagree,
        agreement_share: mean(agree as f64, total),
        absolute_difference: Difference {
            mean: mean(h.get_sample_sum(), n),
            p50: quantile(0.5),
            p90: quantile(0.9),
        },
        shadow_latency_seconds: mean(
            series.duration.get_sample_sum(),
            series.duration.get_sample_count(),
        ),
        primary_latency_seconds: mean(primary_micros as f64 / 1e6, primary_count),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Router;
    use std::path::Path;

    fn router_with(extra: &str) -> Arc<Router> {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[experiment]\nsalt = \"s\"\n\
             [[arms]]\nname = \"best_model\"\nurl = \"http://127.0.0.1:6001\"\nweight = 50\n\
             [[arms]]\nname = \"candidate_model\"\nurl = \"http://127.0.0.1:6002\"\nweight = 50\n\
             [[shadows]]\nname = \"shadow_model\"\nurl = \"http://127.0.0.1:6003\"\nof = \"best_model\"\n{extra}"
        );
        let config =
            RouterConfig::parse(Path::new("r.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        Router::new(config, String::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_sticky_users_served_by_the_mirrored_arm_are_wanted() {
        let router = router_with("sample = 1.0\n");
        let active = router.active();
        assert!(wanted(
            &active.shadows,
            Some(0),
            Source::Sticky,
            Some(&b"u"[..])
        ));
        assert!(
            !wanted(&active.shadows, Some(1), Source::Sticky, Some(&b"u"[..])),
            "another arm"
        );
        assert!(
            !wanted(&active.shadows, None, Source::Sticky, Some(&b"u"[..])),
            "no arm served"
        );
        assert!(
            !wanted(&active.shadows, Some(0), Source::Anonymous, None),
            "anonymous"
        );
        assert!(
            !wanted(&active.shadows, Some(0), Source::Override, Some(&b"u"[..])),
            "override"
        );
        let none = router_with("sample = 0.0\n");
        assert!(!wanted(
            &none.active().shadows,
            Some(0),
            Source::Sticky,
            Some(&b"u"[..])
        ));
    }

    #[test]
    fn copies_beyond_max_in_flight_are_refused_and_slots_come_back_on_drop() {
        let stats = Arc::new(ShadowStats::default());
        let slots: Vec<InFlight> = (0..3).filter_map(|_| InFlight::take(&stats, 3)).collect();
        assert_eq!(slots.len(), 3);
        assert!(InFlight::take(&stats, 3).is_none());
        assert_eq!(
            stats.in_flight.load(Ordering::Relaxed),
            3,
            "a refusal holds no slot"
        );
        drop(slots);
        assert_eq!(stats.in_flight.load(Ordering::Relaxed), 0);
        assert!(InFlight::take(&stats, 3).is_some());
    }

    #[test]
    fn a_reload_keeps_a_shadows_in_flight_count_and_series() {
        let router = router_with("sample = 0.5\n");
        let before = Arc::clone(&router.active().shadows[0].stats);
        let mut config = router.active().config.clone();
        config.shadows[0].sample = 0.25;
        router.apply(config, String::new());
        let active = router.active();
        assert!(Arc::ptr_eq(&before, &active.shadows[0].stats));
        assert!((active.shadows[0].config.sample - 0.25).abs() < 1e-12);
        let text = router.metrics.common.encode();
        let text = String::from_utf8_lossy(&text);
        for result in ShadowResult::ALL {
            let series = format!(
                "abgate_shadow_requests_total{{result=\"{}\",shadow=\"shadow_model\"}} 0",
                result.as_str()
            );
            assert!(text.contains(&series), "{series} missing");
        }
    }
}
