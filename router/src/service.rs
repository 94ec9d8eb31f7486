//! The router's routes over hyper: the route table, and the hyper transport for
//! `/predict` and `/feedback` (requests the fast path hands over). Decisions,
//! recording and router headers come from [`crate::policy`]; arms are reached through
//! the one client in [`crate::upstream`]; the JSON views are in [`crate::views`].

use abgate_common::http::{
    error_response, find_route, json_response, metrics_response, read_body, route_error, Route,
};
use abgate_common::ApiError;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

use crate::error::RouterError;
use crate::headers::{request_id_or_new, ASSIGNED_VARIANT, REQUEST_ID, VARIANT};
use crate::policy::{self, Answer, Assignment, Endpoint};
use crate::state::{Active, Router};
use crate::upstream::h1::{self, Tags};
use crate::upstream::relay::{relay, Relay, Sink};
use crate::upstream::{self, release};
use crate::views;

/// Body of every router response.
pub type RouterBody = Full<Bytes>;

/// Arm answers relayed through hyper are buffered up to this size (the fast path
/// streams); a larger one is a 502.
const BUFFERED_ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// What serves a route.
#[derive(Debug, Clone, Copy)]
enum Target {
    Predict,
    Feedback,
    Metrics,
    Health,
    Summary,
    Config,
    Experiment,
    Shadows,
    StatusPage,
}

const ROUTES: [Route<Target>; 9] = [
    Route {
        path: "/predict",
        method: Method::POST,
        target: Target::Predict,
    },
    Route {
        path: "/feedback",
        method: Method::POST,
        target: Target::Feedback,
    },
    Route {
        path: "/metrics",
        method: Method::GET,
        target: Target::Metrics,
    },
    Route {
        path: "/api/health",
        method: Method::GET,
        target: Target::Health,
    },
    Route {
        path: "/api/metrics",
        method: Method::GET,
        target: Target::Summary,
    },
    Route {
        path: "/api/config",
        method: Method::GET,
        target: Target::Config,
    },
    Route {
        path: "/api/experiment",
        method: Method::GET,
        target: Target::Experiment,
    },
    Route {
        path: "/api/shadows",
        method: Method::GET,
        target: Target::Shadows,
    },
    Route {
        path: "/",
        method: Method::GET,
        target: Target::StatusPage,
    },
];

/// Answers one request.
pub async fn handle(router: Arc<Router>, req: Request<Incoming>) -> Response<RouterBody> {
    let active = router.active();
    let request_id = request_id_or_new(req.headers().get(REQUEST_ID).map(HeaderValue::as_bytes));
    // Only the data plane takes a concurrency slot: health, config, metrics and the
    // status page answer from memory, so probes and scrapes keep working while every
    // slot is held (a saturated router is not a dead one).
    let mut response = if !is_data_plane(req.method(), req.uri().path()) {
        route(&router, &active, req, &request_id).await
    } else {
        match router.admit(active.config.max_concurrent_requests) {
            None => {
                let err = RouterError::Overloaded(active.config.max_concurrent_requests).to_api();
                reject_unassigned(&router, &err)
            }
            Some(_slot) => route(&router, &active, req, &request_id).await,
        }
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// Whether a request is forwarded to an arm (and so takes a concurrency slot): every
/// `POST`, and whatever the Open Inference Protocol forwards (`infer`, metadata).
/// Everything else is answered from the router's memory.
fn is_data_plane(method: &Method, path: &str) -> bool {
    if method == Method::POST {
        return true;
    }
    abgate_common::oip::is_oip(path) && !path.starts_with("/v2/health")
}

/// Answers and counts an error that happened before any arm was chosen.
fn reject_unassigned(router: &Router, err: &ApiError) -> Response<RouterBody> {
    reject_unassigned_on(router, err, Endpoint::Predict)
}

/// [`reject_unassigned`] in the error shape of the request's protocol.
fn reject_unassigned_on(
    router: &Router,
    err: &ApiError,
    endpoint: Endpoint,
) -> Response<RouterBody> {
    policy::record_unassigned(router, err.kind);
    error_response_on(err, endpoint)
}

/// The router's error answer in the shape of the request's protocol.
fn error_response_on(err: &ApiError, endpoint: Endpoint) -> Response<RouterBody> {
    match endpoint {
        Endpoint::Predict => error_response(err),
        Endpoint::Infer => abgate_common::oip::error_response(err),
    }
}

async fn route(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    if abgate_common::oip::is_oip(req.uri().path()) {
        return crate::oip::route(router, active, req, request_id).await;
    }
    let found = find_route(&ROUTES, req.uri().path(), req.method(), "try POST /predict");
    let route = match found {
        Ok(route) => route,
        Err((err, allow)) => {
            policy::record_unassigned(router, err.kind);
            return route_error(&err, allow);
        }
    };
    match route.target {
        Target::Predict => predict(router, active, req, request_id, Endpoint::Predict).await,
        Target::Feedback => feedback(router, active, req, request_id).await,
        Target::Metrics => {
            router.experiment.refresh(active);
            metrics_response(router.metrics.common.encode())
        }
        Target::Experiment => json_response(StatusCode::OK, &router.experiment.view(active)),
        Target::Health => views::health(router, active),
        Target::Summary => json_response(StatusCode::OK, &views::summary(active, router)),
        Target::Config => json_response(StatusCode::OK, &views::config_view(router, active)),
        Target::Shadows => json_response(StatusCode::OK, &crate::shadow::view(router, active)),
        Target::StatusPage => crate::status_page::response(),
    }
}

/// An arm's answer, read whole.
pub(crate) struct Buffered {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// One exchange with `arm` for a request hyper received: the request written by the
/// one codec, the answer read whole by its framing.
// The request's parts, the arm and the retry's memory: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn exchange(
    active: &Active,
    index: usize,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    request_id: &HeaderValue,
    body: &[u8],
    failed: &mut Option<std::net::SocketAddr>,
) -> Result<Buffered, RouterError> {
    let arm = &active.arms[index].config;
    let settings = &active.config.upstream;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(1024 + body.len());
    let pairs: Vec<(&[u8], &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    h1::write_request_head(
        &mut out,
        method.as_str(),
        path.as_bytes(),
        arm.authority.as_str(),
        pairs.iter().copied(),
        request_id.as_bytes(),
        body.len(),
    );
    out.extend_from_slice(body);
    let mut kept = HeaderMap::new();
    let (endpoint, _inflight) = policy::pick_endpoint(active, index, *failed)?;
    let series = &active.arms[index].series;
    let target = upstream::Target::endpoint(arm, &endpoint).counting(&series.mismatched);
    let result = upstream::exchange_at(target, settings, &out, request_id.as_bytes(), |n, v| {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            kept.append(n, v);
        }
    })
    .await;
    policy::endpoint_outcome(active, index, &endpoint, &result);
    *failed = result.is_err().then_some(endpoint.addr);
    let (mut upstream, head) = result?;
    let mut answer = Vec::new();
    let mut sink = Sink::Buffer {
        body: &mut answer,
        limit: BUFFERED_ANSWER_LIMIT,
    };
    let deadline = tokio::time::Instant::now() + settings.request_timeout;
    let broken = |reason: &str| RouterError::Broken {
        arm: arm.name.clone(),
        reason: reason.to_string(),
    };
    match relay(&mut upstream, head.framing, &mut sink, deadline).await {
        Relay::Done => release(upstream, &head, settings),
        Relay::UpstreamFailed { reason, .. } => return Err(broken(reason)),
        Relay::TooLarge => return Err(broken("the answer exceeds 16 MiB")),
        Relay::ClientGone => return Err(broken("the answer could not be read")),
    }
    Ok(Buffered {
        status: head.status,
        headers: kept,
        body: answer,
    })
}

/// The hyper transport's attempt: the request re-written for the arm, the answer read
/// whole.
struct HyperAttempt<'a> {
    active: &'a Active,
    /// The endpoint the last attempt failed on (a retry avoids it).
    failed: Option<std::net::SocketAddr>,
    uri: &'a http::Uri,
    headers: &'a HeaderMap,
    request_id: &'a HeaderValue,
    body: &'a [u8],
}

impl policy::Attempt for HyperAttempt<'_> {
    type Output = Buffered;

    async fn attempt(&mut self, arm: usize) -> Result<Buffered, RouterError> {
        let (uri, headers) = (self.uri, self.headers);
        exchange(
            self.active,
            arm,
            &Method::POST,
            uri,
            headers,
            self.request_id,
            self.body,
            &mut self.failed,
        )
        .await
    }
}

/// The client's response for an arm's answer, or the router's error, with the
/// router's headers.
pub(crate) fn respond(
    result: Result<Buffered, ApiError>,
    tags: &Tags<'_>,
    endpoint: Endpoint,
) -> Response<RouterBody> {
    let mut response = match result {
        Ok(answer) => {
            let mut response = Response::new(Full::new(Bytes::from(answer.body)));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            response
        }
        Err(err) => error_response_on(&err, endpoint),
    };
    let headers = response.headers_mut();
    for (name, value) in [(VARIANT, tags.variant), (ASSIGNED_VARIANT, tags.assigned)] {
        if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
            headers.insert(name, v);
        }
    }
    response
}

/// The closed-set answer of an exchange, for recording.
fn answer_of(result: &Result<Buffered, ApiError>) -> Answer {
    match result {
        Ok(a) if a.status.is_success() => Answer::Arm {
            status: a.status,
            error: None,
        },
        Ok(a) => Answer::Arm {
            status: a.status,
            error: Some(policy::arm_error_kind(a.status, &a.body)),
        },
        Err(e) => Answer::Router(e.kind),
    }
}

/// A prediction through hyper: `/predict`, or the protocol's `infer` (whose body may
/// be binary tensors, so its sticky key comes from `X-User-Id` only).
pub(crate) async fn predict(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    endpoint: Endpoint,
) -> Response<RouterBody> {
    let (parts, body) = req.into_parts();
    let limit = active.config.body_limit_bytes;
    let body = match read_body(&parts.headers, body, limit, active.config.body_timeout).await {
        Ok(b) => b,
        Err(e) => return reject_unassigned_on(router, &e, endpoint),
    };
    // The arm's latency starts once the request is complete: a client's slow upload
    // is not the arm's time.
    let started = Instant::now();
    let keyed_body: &[u8] = match endpoint {
        Endpoint::Predict => &body,
        Endpoint::Infer => &[],
    };
    let mut assigned: Assignment = match policy::assign(active, &parts.headers, keyed_body) {
        Ok(a) => a,
        Err(e) => return reject_unassigned_on(router, &e, endpoint),
    };
    assigned.endpoint = endpoint;
    let mut transport = HyperAttempt {
        active,
        failed: None,
        uri: &parts.uri,
        headers: &parts.headers,
        request_id,
        body: &body,
    };
    let forwarded = policy::forward_with_retry(active, &assigned, &mut transport).await;
    let result = forwarded.result.map_err(|e| {
        tracing::debug!(error = %e, "predict failed");
        e.to_api()
    });
    let answer = answer_of(&result);
    policy::record_prediction(
        router,
        active,
        &assigned,
        forwarded.serving,
        answer,
        started,
    );
    let tags = policy::tags(
        active,
        forwarded.serving,
        assigned.arm,
        request_id.as_bytes(),
        false,
    );
    let mirrored = result.as_ref().ok().filter(|a| a.status.is_success());
    if let Some(answer) = mirrored.filter(|_| !active.shadows.is_empty()) {
        // Shadow traffic: the copy is sent on its own task once this one answers.
        let key = policy::user_key(&parts.headers, &body);
        let pairs: Vec<(&[u8], &[u8])> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
            .collect();
        crate::shadow::mirror(
            active,
            forwarded.serving,
            assigned.source,
            key.as_deref(),
            crate::shadow::Mirrored {
                path: parts
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .as_bytes(),
                headers: pairs.iter().copied(),
                request_id: request_id.as_bytes(),
                body: &body,
                primary: Some(&answer.body),
                primary_elapsed: started.elapsed(),
            },
        );
    }
    respond(result, &tags, endpoint)
}

async fn feedback(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let (parts, body) = req.into_parts();
    let limit = active.config.body_limit_bytes;
    let body = match read_body(&parts.headers, body, limit, active.config.body_timeout).await {
        Ok(b) => b,
        Err(e) => return reject_unassigned(router, &e),
    };
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let target = match policy::feedback_target(active, &parts.headers, parsed.as_ref()) {
        Ok(t) => t,
        Err(e) => return reject_unassigned(router, &e),
    };
    let result = exchange(
        active,
        target,
        &Method::POST,
        &parts.uri,
        &parts.headers,
        request_id,
        &body,
        &mut None,
    )
    .await
    .map_err(|e| e.to_api());
    let answer = answer_of(&result);
    let reply = result
        .as_ref()
        .ok()
        .and_then(|a| serde_json::from_slice::<Value>(&a.body).ok());
    policy::record_feedback(
        router,
        active,
        target,
        answer,
        parsed.as_ref(),
        reply.as_ref(),
    );
    let tags = policy::tags(active, Some(target), target, request_id.as_bytes(), false);
    respond(result, &tags, Endpoint::Predict)
}

/// Whether a path is one of the router's routes (for tests and `check`).
pub fn is_route(path: &str) -> bool {
    ROUTES.iter().any(|r| r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_in_the_table_has_its_own_target() {
        let mut seen = std::collections::HashSet::new();
        for route in &ROUTES {
            assert!(seen.insert(format!("{:?}", route.target)), "{}", route.path);
        }
        assert!(is_route("/api/config") && !is_route("/nothing"));
    }
}
