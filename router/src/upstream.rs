//! Talking to arms: the pooled keep-alive client, the forwarded request (hop-by-hop
//! headers stripped, always addressed to a configured arm whatever the client's URI
//! or `Host` said), and error classification.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as _;
use std::time::Duration;

use crate::config::{ArmConfig, UpstreamConfig};
use crate::error::RouterError;

/// The pooled client shared by all arms.
pub type UpstreamClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the client: keep-alive pool per arm, TCP_NODELAY, connect timeout.
pub fn build_client(config: &UpstreamConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(config.pool_idle_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_arm)
        .build(connector)
}

thread_local! {
    static THREAD_CLIENT: std::cell::RefCell<Option<(UpstreamConfig, UpstreamClient)>> =
        const { std::cell::RefCell::new(None) };
}

/// The client of the calling thread for `config`. Each worker thread keeps its own
/// pool, so a pooled connection is driven by the thread that uses it; the pool is
/// rebuilt when a reload changes the upstream settings.
pub fn client_for(config: &UpstreamConfig) -> UpstreamClient {
    THREAD_CLIENT.with(|cell| {
        let mut cached = cell.borrow_mut();
        match &*cached {
            Some((settings, client)) if settings == config => client.clone(),
            _ => {
                let client = build_client(config);
                *cached = Some((config.clone(), client.clone()));
                client
            }
        }
    })
}

/// Headers that describe one hop and must not be forwarded (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any named by `Connection`, and
/// `Transfer-Encoding` (the body is re-framed).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most requests carry none: check before paying for removals.
    let any = headers
        .keys()
        .any(|k| k == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(k));
    if !any {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

/// Builds the request to `arm`: its scheme and authority, the client's path and
/// query, the client's end-to-end headers minus `Host`, `Content-Length` (re-set from
/// the buffered body) and the override token.
pub fn build_request(
    arm: &ArmConfig,
    method: Method,
    path_and_query: Option<&PathAndQuery>,
    mut headers: HeaderMap,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, RouterError> {
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(crate::service::OVERRIDE_TOKEN);
    let uri = Uri::builder()
        .scheme(arm.scheme.clone())
        .authority(arm.authority.clone())
        .path_and_query(path_and_query.map_or("/", |p| p.as_str()))
        .build()
        .map_err(|e| RouterError::Broken {
            arm: arm.name.clone(),
            reason: format!("cannot build upstream URI: {e}"),
        })?;
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// Sends `req` to `arm` within `timeout`, classifying failures.
pub async fn send(
    client: &UpstreamClient,
    arm: &ArmConfig,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<Response<Incoming>, RouterError> {
    match tokio::time::timeout(timeout, client.request(req)).await {
        Err(_) => Err(RouterError::Timeout {
            arm: arm.name.clone(),
            timeout,
        }),
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) if e.is_connect() => Err(RouterError::Connect {
            arm: arm.name.clone(),
            reason: root_cause(&e),
        }),
        Ok(Err(e)) => Err(RouterError::Broken {
            arm: arm.name.clone(),
            reason: root_cause(&e),
        }),
    }
}

fn root_cause(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = e.source();
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-user-id", HeaderValue::from_static("u1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-user-id").map(|v| v.as_bytes()), Some(&b"u1"[..]));
    }

    #[test]
    fn the_upstream_uri_is_always_the_arm_whatever_the_client_sent() {
        let arm = ArmConfig {
            name: "a".into(),
            url: "http://127.0.0.1:6001".into(),
            weight: 1.0,
            scheme: http::uri::Scheme::HTTP,
            authority: http::uri::Authority::from_static("127.0.0.1:6001"),
        };
        let client_uri: Uri = "http://evil.example:80/predict?x=1"
            .parse()
            .unwrap_or_default();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("evil.example"));
        headers.insert(
            crate::service::OVERRIDE_TOKEN,
            HeaderValue::from_static("secret"),
        );
        let req = build_request(
            &arm,
            Method::POST,
            client_uri.path_and_query(),
            headers,
            Bytes::new(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(req.uri().to_string(), "http://127.0.0.1:6001/predict?x=1");
        assert!(req.headers().get(header::HOST).is_none());
        assert!(req.headers().get(crate::service::OVERRIDE_TOKEN).is_none());
    }
}
