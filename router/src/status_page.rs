//! `GET /`: the status page. One self-contained HTML document (CSS and JS inline, no
//! external script, font or image) embedded in the binary at build time. The router
//! does no work for it beyond handing out this static byte string: the page itself
//! polls `/api/health`, `/api/metrics`, `/api/config` and `/metrics` every 2 s (and
//! `/api/experiment` / `/api/shadows` / `/api/rollout` when the router has them; the
//! rollout panel shows only when `[rollout]` is configured) and keeps its own
//! 10-minute history for the chart.

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The page, HTML with its CSS and JS inline.
pub const PAGE: &str = include_str!("status_page/index.html");

/// What the page may load: only inline code and same-origin `fetch`; no other host,
/// no plugin, no framing, no form posts.
pub const CSP: &str = "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// The headers sent with the page.
pub const HEADERS: [(HeaderName, &str); 6] = [
    (CONTENT_TYPE, "text/html; charset=utf-8"),
    (CACHE_CONTROL, "no-cache"),
    (CONTENT_SECURITY_POLICY, CSP),
    (X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (REFERRER_POLICY, "no-referrer"),
    (X_FRAME_OPTIONS, "DENY"),
];

/// `200` with the page (hyper drops the body for `HEAD`).
pub fn response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_small() {
        assert!(PAGE.len() < 60 * 1024, "{} bytes", PAGE.len());
    }

    #[test]
    fn the_page_names_no_other_host() {
        let lower = PAGE.to_ascii_lowercase();
        for needle in [
            "http://",
            "https://",
            "src=",
            "@import",
            "url(",
            "//cdn",
            "<link rel=\"stylesheet",
        ] {
            assert!(!lower.contains(needle), "the page contains {needle:?}");
        }
        // The only <link> is the empty data: favicon, which stops the browser asking for
        // /favicon.ico.
        assert_eq!(lower.matches("<link").count(), 1);
        assert!(lower.contains("<link rel=\"icon\" href=\"data:,\">"));
    }

    #[test]
    fn the_page_has_what_the_contract_lists() {
        for needle in [
            "/api/health",
            "/api/metrics",
            "/api/config",
            "/api/experiment",
            "/api/shadows",
            "/api/rollout",
            "data-rollout-state",
            "data-waiting",
            "h(\"caption\"",
            "scope: \"col\"",
            "scope: \"row\"",
            "not available on this router yet",
            "not enough data",
            "STALE",
            "DOWN",
            "name=\"viewport\"",
        ] {
            assert!(PAGE.contains(needle), "the page lacks {needle:?}");
        }
    }

    #[test]
    fn the_response_is_the_static_page_with_strict_headers() {
        let r = response();
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[CONTENT_TYPE], "text/html; charset=utf-8");
        assert_eq!(h[CACHE_CONTROL], "no-cache");
        let csp = h[CONTENT_SECURITY_POLICY].to_str().unwrap_or("");
        assert!(csp.starts_with("default-src 'none'"));
        assert!(csp.contains("connect-src 'self'"));
        assert!(!csp.contains("unsafe-eval") && !csp.contains('*') && !csp.contains("http"));
    }
}
