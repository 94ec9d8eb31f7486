//! Cluster mode, validated: `experiment.prometheus_url` (absent: a single node, the
//! router's own state) and `experiment.cluster_interval_ms`.

use http::Uri;
use std::time::Duration;

/// The default of `experiment.cluster_interval_ms`.
pub const DEFAULT_CLUSTER_INTERVAL_MS: u64 = 5_000;

/// The shortest `experiment.cluster_interval_ms` (Prometheus scrapes every second at
/// best; reading faster only reads the same samples again).
pub const MIN_CLUSTER_INTERVAL_MS: u64 = 200;

/// Data older than this many intervals is stale: nothing acts on it.
pub const STALE_INTERVALS: u32 = 3;

/// Cluster mode: every replica reads the cluster's state for its phase from the
/// Prometheus that scrapes them all.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClusterConfig {
    /// Base URL of the Prometheus HTTP API (`experiment.prometheus_url`), without a
    /// trailing slash, e.g. `http://prometheus:9090`.
    pub prometheus_url: String,
    /// How often the cluster's state is read (`experiment.cluster_interval_ms`).
    #[serde(rename = "cluster_interval_ms", serialize_with = "millis")]
    pub interval: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ClusterConfig {
    /// Data whose newest sample is older than this is stale.
    pub fn stale_after(&self) -> Duration {
        self.interval * STALE_INTERVALS
    }
}

/// Validates the two keys (cluster mode needs `experiment.statistics`: the state it
/// shares); errors are (key path, reason). An empty URL is single-node mode (`None`).
pub fn validate_cluster(
    prometheus_url: &str,
    interval_ms: u64,
    statistics: bool,
) -> Result<Option<ClusterConfig>, (String, String)> {
    if interval_ms < MIN_CLUSTER_INTERVAL_MS {
        return Err((
            "experiment.cluster_interval_ms".into(),
            format!("must be at least {MIN_CLUSTER_INTERVAL_MS}, got {interval_ms}"),
        ));
    }
    if prometheus_url.is_empty() {
        return Ok(None);
    }
    let key = || "experiment.prometheus_url".to_string();
    if !statistics {
        return Err((
            key(),
            "cluster mode shares the experiment's statistics: it needs experiment.statistics = true".into(),
        ));
    }
    let uri: Uri = prometheus_url.parse().map_err(|e| {
        (
            key(),
            format!("{prometheus_url:?} is not a URL like http://prometheus:9090 ({e})"),
        )
    })?;
    if uri.scheme_str() != Some("http") {
        return Err((
            key(),
            format!("{prometheus_url:?} must use http:// (the Prometheus HTTP API)"),
        ));
    }
    let Some(authority) = uri.authority() else {
        return Err((key(), format!("{prometheus_url:?} has no host")));
    };
    if authority.as_str().contains('@') {
        return Err((key(), "must not carry credentials".into()));
    }
    if uri.query().is_some() {
        return Err((
            key(),
            format!("{prometheus_url:?} must be a base URL without a query"),
        ));
    }
    Ok(Some(ClusterConfig {
        prometheus_url: prometheus_url.trim_end_matches('/').to_string(),
        interval: Duration::from_millis(interval_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_intervals_are_checked() {
        assert_eq!(validate_cluster("", 5000, true), Ok(None));
        let c = validate_cluster("http://prometheus:9090/", 5000, true)
            .ok()
            .flatten()
            .map(|c| (c.prometheus_url, c.interval));
        assert_eq!(
            c,
            Some(("http://prometheus:9090".into(), Duration::from_secs(5)))
        );
        // A path prefix (Prometheus behind a proxy) is kept.
        assert!(matches!(
            validate_cluster("http://gw/prometheus", 1000, true),
            Ok(Some(c)) if c.prometheus_url == "http://gw/prometheus"
        ));
        for bad in [
            "prometheus:9090",
            "https://p:9090",
            "http://u:p@p:9090",
            "http://p:9090/?x=1",
        ] {
            let err = validate_cluster(bad, 5000, true).err().map(|e| e.0);
            assert_eq!(err.as_deref(), Some("experiment.prometheus_url"), "{bad}");
        }
        let err = validate_cluster("http://p:9090", 10, true)
            .err()
            .map(|e| e.0);
        assert_eq!(err.as_deref(), Some("experiment.cluster_interval_ms"));
        let err = validate_cluster("http://p:9090", 1000, false)
            .err()
            .map(|e| e.0);
        assert_eq!(err.as_deref(), Some("experiment.prometheus_url"));
    }

    #[test]
    fn the_router_config_reads_the_keys_and_names_them_in_errors() {
        let text = |extra: &str| {
            format!(
                "listen = \"127.0.0.1:0\"\n[experiment]\nsalt = \"s\"\n{extra}\n\
                 [[arms]]\nname = \"a\"\nurl = \"http://127.0.0.1:6001\"\nweight = 1\n"
            )
        };
        let path = std::path::Path::new("router.toml");
        let single = super::super::RouterConfig::parse(path, &text(""));
        assert_eq!(single.map(|c| c.analysis.cluster).ok(), Some(None));
        let on = super::super::RouterConfig::parse(
            path,
            &text("prometheus_url = \"http://prometheus:9090\""),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let cluster = on
            .analysis
            .cluster
            .unwrap_or_else(|| panic!("cluster mode"));
        assert_eq!(
            cluster.interval,
            Duration::from_millis(DEFAULT_CLUSTER_INTERVAL_MS)
        );
        assert_eq!(cluster.stale_after(), Duration::from_secs(15));
        let err = super::super::RouterConfig::parse(
            path,
            &text("prometheus_url = \"ftp://p\"\ncluster_interval_ms = 1000"),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(
            err.starts_with("router.toml: key `experiment.prometheus_url`"),
            "{err}"
        );
    }
}
