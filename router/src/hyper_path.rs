//! The hyper transport for predictions and feedback (and whatever the fast path hands
//! over): the request read whole, assigned and forwarded by [`crate::policy`]'s rules,
//! the arm's answer read whole through the one client in [`crate::upstream`], recorded,
//! mirrored and answered with the router's headers. The route table that calls it is
//! [`crate::service`]; the Open Inference Protocol's routes ([`crate::oip`]) call it too.

use abgate_common::http::{error_response, read_body};
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
use crate::headers::{ASSIGNED_VARIANT, VARIANT};
use crate::policy::{self, Answer, Assignment, Endpoint};
use crate::state::{Active, Router};
use crate::upstream::h1::{self, Tags};
use crate::upstream::relay::{relay, Relay, Sink};
use crate::upstream::{self, release};

/// Body of every router response.
pub type RouterBody = Full<Bytes>;

/// Arm answers relayed through hyper are buffered up to this size (the fast path
/// streams); a larger one is a 502.
const BUFFERED_ANSWER_LIMIT: usize = 16 * 1024 * 1024;

/// Answers and counts an error that happened before any arm was chosen.
pub(crate) fn reject_unassigned(router: &Router, err: &ApiError) -> Response<RouterBody> {
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
            &active.shadows,
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

/// Feedback through hyper: forwarded to the arm that made the prediction.
pub(crate) async fn feedback(
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
