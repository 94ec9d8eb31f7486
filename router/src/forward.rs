//! The request pipeline, written once: [`predict`] sequences a prediction for every
//! transport — assign → serving arm → attempt (and the one retry) → classify → answer →
//! record → mirror — and [`attempt`] is the one way a request reaches an arm.
//!
//! A transport turns its bytes into a borrowed [`Prediction`] (the fast path's
//! zero-copy buffer ranges, hyper's parts) and hands over a [`Client`]: where the
//! answer the pipeline writes goes (a socket it is streamed to, or a buffer hyper
//! answers from). The router's headers are set in one place ([`client_head`]), the
//! prediction is recorded at one site, and mirrored at one site. Nothing here boxes:
//! the pipeline is generic over the transport, so the fast path keeps its buffers and
//! its single task.

use abgate_common::ApiError;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use crate::error::RouterError;
use crate::metrics::Source;
use crate::policy::{self, Answer, Assignment, Endpoint, ARM_ERROR_BODY_LIMIT};
use crate::pool::Upstream;
use crate::shadow;
use crate::state::{Active, Router};
use crate::upstream::h1::{self, Framing, ResponseHead, Tags};
use crate::upstream::relay::{relay, BodyCopy, Relay, Sink};
use crate::upstream::{self, release};

/// How the request's user is known: its sticky key (none: anonymous), or an
/// `X-Variant` override already checked against its token.
#[derive(Debug, Clone, Copy)]
pub enum User<'a> {
    /// The sticky key (`X-User-Id`, else the body's `user_id`), if any.
    Key(Option<&'a [u8]>),
    /// The overriding arm's index.
    Override(usize),
}

/// The client's headers, borrowed as the transport holds them.
#[derive(Debug, Clone, Copy)]
pub enum Headers<'a> {
    /// Name and value ranges into the bytes the head was read into (the fast path).
    Ranges {
        /// The bytes read.
        buf: &'a [u8],
        /// (name, value) ranges into `buf`.
        ranges: &'a [(Range<usize>, Range<usize>)],
    },
    /// (name, value) pairs.
    Pairs(&'a [(&'a [u8], &'a [u8])]),
}

impl<'a> Headers<'a> {
    /// Every (name, value) pair, in order.
    pub fn iter(self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + Clone + 'a {
        let (ranges, pairs): (&[_], &[_]) = match self {
            Headers::Ranges { ranges, .. } => (ranges, &[]),
            Headers::Pairs(pairs) => (&[], pairs),
        };
        let buf = match self {
            Headers::Ranges { buf, .. } => buf,
            Headers::Pairs(_) => &[],
        };
        ranges
            .iter()
            .map(move |(n, v)| (&buf[n.clone()], &buf[v.clone()]))
            .chain(pairs.iter().copied())
    }
}

/// A prediction as a transport received it, borrowed from the transport's buffers.
pub struct Prediction<'a> {
    /// The request target (`/predict`, `/v2/models/…/infer`, perhaps with a query).
    pub path: &'a [u8],
    /// The client's headers (hop-by-hop ones are dropped on the way).
    pub headers: Headers<'a>,
    /// The complete body.
    pub body: &'a [u8],
    /// The request id (the client's or a new one).
    pub request_id: &'a [u8],
    /// Who the user is.
    pub user: User<'a>,
    /// The route it came by.
    pub endpoint: Endpoint,
    /// The client asked to close the connection after this answer.
    pub close: bool,
    /// When the request was complete at the router: the arm's latency starts here.
    pub started: Instant,
}

/// Buffers a connection reuses from request to request.
#[derive(Debug, Default)]
pub struct Buffers {
    /// The request for the arm.
    pub out: Vec<u8>,
    /// The arm's response headers the client may see, as header lines.
    pub kept: Vec<u8>,
    /// The client's response head (and body bytes) waiting to be written.
    pub head: Vec<u8>,
}

/// Where the answer goes: the transport's side of the pipeline.
pub trait Client: Send {
    /// Whether answers are streamed to the client as they arrive. A transport that
    /// reads them whole keeps the body itself ([`Client::body`]), which is then also
    /// the shadow's copy.
    const STREAMS: bool;

    /// The sink an arm's answer is relayed into; `head` holds the client's response
    /// head, to go out before the body.
    fn sink<'s>(&'s mut self, head: &'s mut Vec<u8>, copy: Option<&'s mut BodyCopy>) -> Sink<'s>;

    /// Writes a complete answer (the router's own error); whether it was written.
    fn send(&mut self, answer: &[u8]) -> impl Future<Output = bool> + Send;

    /// The answer's body, for a transport that reads it whole.
    fn body(&self) -> Option<&[u8]>;
}

/// What became of the client's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; the connection can carry another request.
    KeepAlive,
    /// Answered (or cut) in a way that needs the connection closed.
    Close,
    /// The client is gone; nothing more can be sent.
    ClientGone,
}

/// Sequences one prediction: assignment, the serving arm, the attempt and its retry,
/// the classification of the arm's answer, the client's answer with the router's
/// headers, the record, and the shadow copy.
pub async fn predict<C: Client>(
    router: &Router,
    active: &Active,
    request: &Prediction<'_>,
    bufs: &mut Buffers,
    client: &mut C,
) -> Outcome {
    let assigned = assign(active, request);
    let Buffers { out, kept, head } = bufs;
    let mut arm = ArmAttempt {
        active,
        failed: None,
        request,
        out,
        kept,
    };
    let forwarded = policy::forward_with_retry(active, &assigned, &mut arm).await;
    let serving = forwarded.serving;
    let tags = policy::tags(
        active,
        serving,
        assigned.arm,
        request.request_id,
        request.close,
    );
    let Relayed {
        answer,
        outcome,
        copy,
        reusable,
    } = match forwarded.result {
        Err(e) => {
            tracing::debug!(error = %e, "predict failed");
            let err = e.to_api();
            let outcome = send_error(client, head, &err, request, &tags).await;
            Relayed::ended(Answer::Router(err.kind), outcome)
        }
        Ok((upstream, response)) => {
            let shadowed = !active.shadows.is_empty()
                && request.endpoint == Endpoint::Predict
                && shadow::wanted(&active.shadows, serving, assigned.source, key(request));
            relay_answer(
                client, active, request, upstream, response, kept, head, &tags, serving, shadowed,
            )
            .await
        }
    };
    // Recorded first, then the connection goes back to the pool: a client that has its
    // answer finds it counted as soon as possible.
    policy::record_prediction(router, active, &assigned, serving, answer, request.started);
    if let Some((upstream, response)) = reusable {
        release(upstream, &response, &active.config.upstream);
    }
    if let Some(copy) = copy {
        let primary = if C::STREAMS {
            (!copy.overflowed).then_some(&copy.body[..])
        } else {
            client.body()
        };
        shadow::mirror(
            &active.shadows,
            serving,
            assigned.source,
            key(request),
            shadow::Mirrored {
                path: request.path,
                headers: request.headers.iter(),
                request_id: request.request_id,
                body: request.body,
                primary,
                primary_elapsed: request.started.elapsed(),
            },
        );
    }
    outcome
}

fn key<'a>(request: &Prediction<'a>) -> Option<&'a [u8]> {
    match request.user {
        User::Key(key) => key,
        User::Override(_) => None,
    }
}

fn assign(active: &Active, request: &Prediction<'_>) -> Assignment {
    let mut assigned = match request.user {
        User::Key(key) => policy::assign_key(active, key),
        User::Override(arm) => Assignment {
            arm,
            source: Source::Override,
            position: 0.0,
            user: None,
            endpoint: request.endpoint,
        },
    };
    assigned.endpoint = request.endpoint;
    assigned
}

/// What relaying an answer came to.
struct Relayed {
    /// How the prediction was answered.
    answer: Answer,
    /// The client connection's outcome.
    outcome: Outcome,
    /// The shadow's copy, when the answer was complete and the user is mirrored.
    copy: Option<BodyCopy>,
    /// The arm connection, when its answer was read exactly (to go back to the pool).
    reusable: Option<(Upstream, ResponseHead)>,
}

impl Relayed {
    fn ended(answer: Answer, outcome: Outcome) -> Relayed {
        Relayed {
            answer,
            outcome,
            copy: None,
            reusable: None,
        }
    }
}

/// Classifies the arm's answer, writes the client's head and relays the body.
// The answer's parts and where it goes: a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn relay_answer<C: Client>(
    client: &mut C,
    active: &Active,
    request: &Prediction<'_>,
    mut upstream: Upstream,
    response: ResponseHead,
    kept: &[u8],
    head: &mut Vec<u8>,
    tags: &Tags<'_>,
    serving: Option<usize>,
    shadowed: bool,
) -> Relayed {
    let settings = &active.config.upstream;
    let deadline = tokio::time::Instant::now() + settings.request_timeout;
    let error = if response.status.is_success() {
        None
    } else {
        // An error body of ours says its kind; it is read ahead (and still relayed).
        let body = match response.framing {
            Framing::Length(n) if n <= ARM_ERROR_BODY_LIMIT => {
                match upstream::fill(&mut upstream, n, deadline).await {
                    Ok(()) => &upstream.buf[..n],
                    Err(()) => &[][..],
                }
            }
            _ => &[][..],
        };
        Some(policy::arm_error_kind(response.status, body))
    };
    let answered = Answer::Arm {
        status: response.status,
        error,
    };
    // The shadow's copy: kept beside the relay (up to the shadow's limit) by a
    // streaming transport; a transport that reads the answer whole has it anyway.
    let mut copy = (shadowed && error.is_none()).then(|| BodyCopy::new(shadow::ANSWER_LIMIT));
    head.clear();
    client_head(head, response.status, kept, response.framing, tags);
    let streamed = if C::STREAMS { copy.as_mut() } else { None };
    let mut sink = client.sink(head, streamed);
    let relayed = relay(&mut upstream, response.framing, &mut sink, deadline).await;
    let wrote = sink.relayed();
    let arm = serving.unwrap_or(0);
    let broken = |reason: &str| {
        RouterError::Broken {
            arm: active.arms[arm].config.name.clone(),
            reason: reason.to_string(),
        }
        .to_api()
    };
    let (err, wrote) = match relayed {
        Relay::Done => {
            let keep_alive = !request.close && response.framing != Framing::UntilClose;
            let outcome = if keep_alive {
                Outcome::KeepAlive
            } else {
                Outcome::Close
            };
            return Relayed {
                answer: answered,
                outcome,
                copy,
                reusable: Some((upstream, response)),
            };
        }
        Relay::UpstreamFailed { relayed, reason } => (broken(reason), relayed || wrote),
        // Only a buffering transport has a limit: its answer is then the router's 502.
        Relay::TooLarge if !C::STREAMS => (broken("the answer exceeds 16 MiB"), false),
        Relay::TooLarge | Relay::ClientGone => {
            return Relayed::ended(answered, Outcome::ClientGone);
        }
    };
    let answer = Answer::Router(err.kind);
    if wrote {
        // Part of the answer is out: the only honest signal left is a close.
        return Relayed::ended(answer, Outcome::Close);
    }
    let outcome = send_error(client, head, &err, request, tags).await;
    Relayed::ended(answer, outcome)
}

/// Writes the router's own error answer (in the request's protocol) to the client.
async fn send_error<C: Client>(
    client: &mut C,
    head: &mut Vec<u8>,
    err: &ApiError,
    request: &Prediction<'_>,
    tags: &Tags<'_>,
) -> Outcome {
    head.clear();
    h1::write_error(head, err, &policy::error_body(err, request.endpoint), tags);
    match (client.send(head).await, request.close) {
        (false, _) => Outcome::ClientGone,
        (true, true) => Outcome::Close,
        (true, false) => Outcome::KeepAlive,
    }
}

/// The client's response head for an arm's answer: the status line, the arm's headers
/// the client may see, the framing the router relays with, the router's headers. The
/// one place the router's headers are set on an arm's answer.
pub fn client_head(
    out: &mut Vec<u8>,
    status: http::StatusCode,
    kept: &[u8],
    framing: Framing,
    tags: &Tags<'_>,
) {
    h1::write_status_line(out, status);
    out.extend_from_slice(kept);
    h1::end_client_head(out, status, framing, tags);
}

/// The request for the arm at `authority` into `out`: the head by the one codec, then
/// the body.
pub fn arm_request<'h, H>(
    out: &mut Vec<u8>,
    authority: &str,
    method: &str,
    path: &[u8],
    headers: H,
    request_id: &[u8],
    body: &[u8],
) where
    H: Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
{
    out.clear();
    h1::write_request_head(
        out,
        method,
        path,
        authority,
        headers,
        request_id,
        body.len(),
    );
    out.extend_from_slice(body);
}

/// The one attempt of a request on arm `arm`: an endpoint picked (avoiding `failed`,
/// where the previous attempt failed), the request in `out` sent over the one arm
/// client, the answer's head parsed and its visible headers collected in `kept`.
/// Passive health learns from the outcome.
pub async fn attempt(
    active: &Active,
    arm: usize,
    failed: &mut Option<SocketAddr>,
    out: &[u8],
    request_id: &[u8],
    kept: &mut Vec<u8>,
) -> Result<(Upstream, ResponseHead), RouterError> {
    kept.clear();
    let (endpoint, _inflight) = policy::pick_endpoint(active, arm, *failed)?;
    let (config, series) = (&active.arms[arm].config, &active.arms[arm].series);
    let target = upstream::Target::endpoint(config, &endpoint).counting(&series.mismatched);
    let result = upstream::exchange_at(target, &active.config.upstream, out, request_id, |n, v| {
        h1::push_header(kept, n, v)
    })
    .await;
    policy::endpoint_outcome(active, arm, &endpoint, &result);
    *failed = result.is_err().then_some(endpoint.addr);
    result
}

/// The pipeline's attempt for [`policy::forward_with_retry`]: the prediction written
/// for the arm, then [`attempt`].
struct ArmAttempt<'r, 'a> {
    active: &'r Active,
    failed: Option<SocketAddr>,
    request: &'r Prediction<'a>,
    out: &'r mut Vec<u8>,
    kept: &'r mut Vec<u8>,
}

impl policy::Attempt for ArmAttempt<'_, '_> {
    type Output = (Upstream, ResponseHead);

    async fn attempt(&mut self, arm: usize) -> Result<Self::Output, RouterError> {
        let r = self.request;
        arm_request(
            self.out,
            self.active.arms[arm].config.authority.as_str(),
            "POST",
            r.path,
            r.headers.iter(),
            r.request_id,
            r.body,
        );
        attempt(
            self.active,
            arm,
            &mut self.failed,
            self.out,
            r.request_id,
            self.kept,
        )
        .await
    }
}
