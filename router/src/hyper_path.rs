//! The hyper transport: a request hyper received (everything the fast path does not
//! serve) is read whole and handed to the one pipeline ([`crate::forward`]) as a
//! borrowed view; the answer the pipeline writes is collected and turned into hyper's
//! response. Feedback and the protocol's metadata take one arm attempt each, read whole.
//! The route table that calls this is [`crate::service`]; the Open Inference
//! Protocol's routes ([`crate::oip`]) call it too.

use abgate_common::http::{error_response, read_body};
use abgate_common::ApiError;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::Value;
use std::sync::Arc;
use std::time::Instant;

use crate::error::RouterError;
use crate::forward::{self, Buffers, Headers, Prediction, User};
use crate::policy::{self, Answer, Endpoint};
use crate::state::{Active, Router};
use crate::upstream::h1::{self, Framing, Tags};
use crate::upstream::relay::{relay, BodyCopy, Relay, Sink};
use crate::upstream::release;

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

/// An arm's answer, read whole: its status, the header lines the client may see, and
/// the body.
pub(crate) struct Buffered {
    status: StatusCode,
    kept: Vec<u8>,
    body: Vec<u8>,
}

/// One exchange with `arm` for a request hyper received, by the one arm attempt
/// ([`forward::attempt`]); the answer read whole by its framing.
pub(crate) async fn exchange(
    active: &Active,
    arm: usize,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    request_id: &HeaderValue,
    body: &[u8],
) -> Result<Buffered, RouterError> {
    let settings = &active.config.upstream;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let pairs = header_pairs(headers);
    let mut out = Vec::with_capacity(1024 + body.len());
    forward::arm_request(
        &mut out,
        active.arms[arm].config.authority.as_str(),
        method.as_str(),
        path.as_bytes(),
        pairs.iter().copied(),
        request_id.as_bytes(),
        body,
    );
    let mut kept = Vec::new();
    let (mut upstream, head) = forward::attempt(
        active,
        arm,
        &mut None,
        &out,
        request_id.as_bytes(),
        &mut kept,
    )
    .await?;
    let mut answer = Vec::new();
    let mut sink = Sink::Buffer {
        body: &mut answer,
        limit: BUFFERED_ANSWER_LIMIT,
    };
    let deadline = tokio::time::Instant::now() + settings.request_timeout;
    let broken = |reason: &str| RouterError::Broken {
        arm: active.arms[arm].config.name.clone(),
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
        kept,
        body: answer,
    })
}

fn header_pairs(headers: &HeaderMap) -> Vec<(&[u8], &[u8])> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect()
}

/// The client's response for an arm's answer read whole, or the router's error: the
/// head written as the fast path writes it ([`forward::client_head`]), then turned
/// into hyper's response.
pub(crate) fn respond(
    result: Result<Buffered, ApiError>,
    tags: &Tags<'_>,
    endpoint: Endpoint,
) -> Response<RouterBody> {
    let mut head = Vec::with_capacity(512);
    match result {
        Ok(answer) => {
            let framing = Framing::Length(answer.body.len());
            forward::client_head(&mut head, answer.status, &answer.kept, framing, tags);
            into_response(&head, answer.body)
        }
        Err(err) => {
            h1::write_error(&mut head, &err, &policy::error_body(&err, endpoint), tags);
            into_response(&head, Vec::new())
        }
    }
}

/// Hyper's response for an answer the router wrote as HTTP/1.1 bytes: `written` holds
/// the head (and perhaps the start of the body), `body` the rest of the body. Framing
/// and connection headers are hyper's to set.
fn into_response(written: &[u8], mut body: Vec<u8>) -> Response<RouterBody> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(written) else {
        let err = ApiError::new(
            abgate_common::ErrorKind::Internal,
            "the router wrote an answer it cannot read back",
        );
        return error_response(&err);
    };
    if len < written.len() {
        let mut whole = written[len..].to_vec();
        whole.append(&mut body);
        body = whole;
    }
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let map = response.headers_mut();
    for h in parsed.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            continue;
        };
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING || name == CONNECTION {
            continue;
        }
        if let Ok(value) = HeaderValue::from_bytes(h.value) {
            map.append(name, value);
        }
    }
    response
}

/// The hyper side of the pipeline: the answer is collected whole, then answered.
#[derive(Default)]
struct Collected {
    /// The head the pipeline wrote (a complete error answer: head and body).
    head: Vec<u8>,
    /// The arm's body.
    body: Vec<u8>,
}

impl forward::Client for Collected {
    const STREAMS: bool = false;

    fn sink<'s>(&'s mut self, head: &'s mut Vec<u8>, _copy: Option<&'s mut BodyCopy>) -> Sink<'s> {
        self.head.clear();
        self.head.extend_from_slice(head);
        self.body.clear();
        Sink::Buffer {
            body: &mut self.body,
            limit: BUFFERED_ANSWER_LIMIT,
        }
    }

    async fn send(&mut self, answer: &[u8]) -> bool {
        self.head.clear();
        self.head.extend_from_slice(answer);
        self.body.clear();
        true
    }

    fn body(&self) -> Option<&[u8]> {
        Some(&self.body)
    }
}

/// The request's head and whole body (within the body limit and timeout), or the
/// counted error answer in the shape of `endpoint`'s protocol.
async fn read_whole(
    router: &Router,
    active: &Active,
    req: Request<Incoming>,
    endpoint: Endpoint,
) -> Result<(http::request::Parts, Bytes), Response<RouterBody>> {
    let (parts, body) = req.into_parts();
    let limit = active.config.body_limit_bytes;
    match read_body(
        &parts.headers,
        body,
        limit,
        active.config.client.body_timeout,
    )
    .await
    {
        Ok(body) => Ok((parts, body)),
        Err(e) => Err(reject_unassigned_on(router, &e, endpoint)),
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
    let (parts, body) = match read_whole(router, active, req, endpoint).await {
        Ok(read) => read,
        Err(refused) => return refused,
    };
    // The arm's latency starts once the request is complete: a client's slow upload
    // is not the arm's time.
    let started = Instant::now();
    let keyed_body: &[u8] = match endpoint {
        Endpoint::Predict => &body,
        Endpoint::Infer => &[],
    };
    let overridden = match policy::override_arm(active, &parts.headers) {
        Ok(o) => o,
        Err(e) => return reject_unassigned_on(router, &e, endpoint),
    };
    let key = policy::user_key(&parts.headers, keyed_body);
    let pairs = header_pairs(&parts.headers);
    let request = Prediction {
        path: parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
        headers: Headers::Pairs(&pairs),
        body: &body,
        request_id: request_id.as_bytes(),
        user: match overridden {
            Some(arm) => User::Override(arm),
            None => User::Key(key.as_deref()),
        },
        endpoint,
        close: false,
        started,
    };
    let mut collected = Collected::default();
    forward::predict(
        router,
        active,
        &request,
        &mut Buffers::default(),
        &mut collected,
    )
    .await;
    into_response(&collected.head, collected.body)
}

/// Feedback through hyper: forwarded to the arm that made the prediction.
pub(crate) async fn feedback(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let (parts, body) = match read_whole(router, active, req, Endpoint::Predict).await {
        Ok(read) => read,
        Err(refused) => return refused,
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

/// The closed-set answer of an exchange read whole, for recording.
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
