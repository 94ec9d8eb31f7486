//! The Open Inference Protocol v2 (KServe / Triton REST) at the router: `infer` is
//! assigned and forwarded like `/predict` (same sticky key, same policy, counted as
//! `predictions_total{endpoint="infer"}`); `/v2/health/*` is answered by the router
//! itself (ready while any arm is up); server and model metadata are forwarded to a
//! healthy arm. Router-side errors take the protocol's `{"error": "..."}` shape.

use abgate_common::oip::{self, Endpoint as Oip};
use abgate_common::{ApiError, ErrorKind};
use http::header::{HeaderValue, ALLOW};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;
use std::sync::Arc;

use crate::error::RouterError;
use crate::headers::USER_ID;
use crate::hyper_path::{exchange, predict, respond, RouterBody};
use crate::policy::{self, Endpoint};
use crate::state::{Active, Router};

/// Answers a request under `/v2`.
pub async fn route(
    router: &Arc<Router>,
    active: &Arc<Active>,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let Some(parsed) = oip::parse(req.uri().path()) else {
        let shown: String = req.uri().path().chars().take(128).collect();
        return refuse(
            router,
            ApiError::new(ErrorKind::NotFound, format!("no protocol route {shown}")),
            None,
        );
    };
    let allowed = parsed.endpoint.method();
    let method = req.method();
    if *method != allowed && !(*method == Method::HEAD && allowed == Method::GET) {
        let err = ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!("{} accepts {allowed} only", req.uri().path()),
        );
        return refuse(router, err, HeaderValue::from_str(allowed.as_str()).ok());
    }
    match parsed.endpoint {
        Oip::Live => json_answer(StatusCode::OK, &json!({ "live": true })),
        Oip::Ready => {
            let ready = active.arms.iter().any(|a| a.health.is_up());
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_answer(status, &json!({ "ready": ready }))
        }
        Oip::Infer => predict(router, active, req, request_id, Endpoint::Infer).await,
        Oip::Server | Oip::Model | Oip::ModelReady => {
            metadata(router, active, req, request_id).await
        }
    }
}

/// Forwards a metadata request to the user's arm when it is up, else to the first
/// healthy arm; 503 when none is.
async fn metadata(
    router: &Router,
    active: &Active,
    req: Request<Incoming>,
    request_id: &HeaderValue,
) -> Response<RouterBody> {
    let key = req
        .headers()
        .get(USER_ID)
        .map(HeaderValue::as_bytes)
        .filter(|k| !k.is_empty());
    let Some(arm) = policy::metadata_arm(active, key) else {
        let err = RouterError::NoHealthyArm("no arm is healthy".into()).to_api();
        return refuse(router, err, None);
    };
    let (parts, _) = req.into_parts();
    let result = exchange(
        active,
        arm,
        &Method::GET,
        &parts.uri,
        &parts.headers,
        request_id,
        &[],
    )
    .await
    .map_err(|e| e.to_api());
    if let Err(e) = &result {
        active.arms[arm].series.common.error(e.kind);
    }
    let tags = policy::tags(active, Some(arm), arm, request_id.as_bytes(), false);
    respond(result, &tags, Endpoint::Infer)
}

fn refuse(router: &Router, err: ApiError, allow: Option<HeaderValue>) -> Response<RouterBody> {
    policy::record_unassigned(router, err.kind);
    let mut response = oip::error_response(&err);
    if let Some(allow) = allow {
        response.headers_mut().insert(ALLOW, allow);
    }
    response
}

fn json_answer(status: StatusCode, body: &serde_json::Value) -> Response<RouterBody> {
    abgate_common::http::json_response(status, body)
}
