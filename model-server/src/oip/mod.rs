//! The Open Inference Protocol v2 (KServe v2 / Triton) REST surface of an arm, so
//! `tritonclient.http`, the KServe SDK and plain `requests` code work unchanged.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v2` | server metadata: `name`, `version`, `extensions` (`binary_tensor_data`) |
//! | `GET /v2/health/live`, `/v2/health/ready` | 200 `{"live": true}`, `{"ready": true}` |
//! | `GET /v2/models/{model}[/versions/{v}]` | model metadata: input `features` FP32 `[-1, 11]`, output `quality` FP32 `[-1]`, `parameters.features` (column order), `versions`, `platform` |
//! | `GET /v2/models/{model}[/versions/{v}]/ready` | 200 `{"name", "ready": true}` |
//! | `POST /v2/models/{model}[/versions/{v}]/infer` | one forward pass over the `[N, 11]` rows of input `features` |
//!
//! `{model}` is the configured `model_name` (every arm of an experiment serves the same
//! one); `{v}` must be the arm's model version. Either unknown: 404.
//!
//! **Infer.** Input `features`, FP32 or FP64, shape `[N, 11]` with
//! `1 ≤ N ≤ max_batch_size`, as JSON `data` (flat or nested, row-major) or as
//! little-endian binary data after the JSON header (binary tensor extension: the
//! request's `Inference-Header-Content-Length` header gives the JSON's length, the
//! input's `parameters.binary_data_size` its byte count). Values are rounded to the
//! `f32` the model computes in, exactly as `/predict` rounds a JSON number, so a row
//! gets the same prediction bits on both protocols (with the same batch). Output
//! `quality`, FP32 `[N]`, as JSON `data` or — when the output's
//! `parameters.binary_data` or else the request's `parameters.binary_data_output` is
//! true — as binary data (the response then has `Inference-Header-Content-Length` and
//! `Content-Type: application/octet-stream`). The response echoes `id`, names
//! `model_name` and `model_version`, and lists one `parameters.prediction_ids` entry
//! per row for `/feedback`.
//!
//! **Errors** are the protocol's `{"error": "..."}` with the status and
//! `prediction_errors_total{error_type}` of the usual [`ErrorKind`]. Every infer request,
//! answered or rejected, counts in `predictions_total{endpoint="infer"}` and
//! `prediction_duration_seconds`, as `/predict` requests do under `endpoint="predict"`.
//! Every `/v2` response carries `X-Variant`.
//!
//! Not supported (400 naming it): other inputs, outputs or datatypes, shared memory,
//! classification, compressed bodies (415).

/// The protocol's paths (shared with the router).
pub use abgate_common::oip as path;
pub mod request;
pub mod response;

use abgate_common::http::read_body;
use abgate_common::{ApiError, ErrorKind};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde::Serialize;
use std::time::Instant;

use crate::headers::{header_user, X_VARIANT};
use crate::state::State;
use path::{Endpoint, Route};
use response::{
    encode_infer, InferContext, Live, ModelMetadata, ModelReady, Ready, ServerMetadata, EXTENSIONS,
};

/// `Inference-Header-Content-Length`: the JSON header's length when binary data follows.
pub const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");

/// The `endpoint` label of `predictions_total` for OIP infer requests.
pub const ENDPOINT_INFER: &str = abgate_common::metrics::ENDPOINT_INFER;

/// Answers a request whose path is under `/v2`.
pub async fn handle(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let mut response = match route_and_answer(state, req).await {
        Ok(response) => response,
        Err(e) => {
            state.arm.error(e.kind);
            error_response(&e)
        }
    };
    response
        .headers_mut()
        .insert(X_VARIANT, state.variant_header.clone());
    response
}

async fn route_and_answer(
    state: &State,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let path = req.uri().path();
    let Some(route) = path::parse(path) else {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no route {}; the protocol's routes are /v2, /v2/health/live, /v2/health/ready and /v2/models/{}[/versions/{}][/ready|/infer]",
                path.chars().take(128).collect::<String>(),
                state.config.model_name,
                state.model.spec().version
            ),
        ));
    };
    let allowed = route.endpoint.method();
    let method = req.method();
    if method != allowed && !(method == Method::HEAD && allowed == Method::GET) {
        let e = ApiError::new(
            ErrorKind::MethodNotAllowed,
            format!(
                "{} accepts {allowed} only",
                path.chars().take(128).collect::<String>()
            ),
        );
        state.arm.error(e.kind);
        let mut response = error_response(&e);
        let allow = if allowed == Method::GET {
            "GET, HEAD"
        } else {
            "POST"
        };
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
        return Ok(response);
    }
    let model_check = check_model(state, route);
    if route.endpoint == Endpoint::Infer {
        return Ok(infer(state, model_check, req).await);
    }
    model_check?;
    let spec = state.model.spec();
    let name = state.config.model_name.as_str();
    Ok(match route.endpoint {
        Endpoint::Server => json(&ServerMetadata {
            name: "abgate",
            version: abgate_common::VERSION,
            extensions: &EXTENSIONS,
        }),
        Endpoint::Live => json(&Live { live: true }),
        Endpoint::Ready => json(&Ready { ready: true }),
        Endpoint::ModelReady => json(&ModelReady { name, ready: true }),
        Endpoint::Model | Endpoint::Infer => {
            json(&ModelMetadata::new(name, &spec.version, &spec.features))
        }
    })
}

/// 404 unless the route's model (and version, if named) is the one served here.
fn check_model(state: &State, route: Route<'_>) -> Result<(), ApiError> {
    let name = state.config.model_name.as_str();
    let version = state.model.spec().version.as_str();
    if let Some(model) = route.model {
        if model != name {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "unknown model {:?}; this server serves {name:?}",
                    model.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    if let Some(v) = route.version {
        if v != version {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!(
                    "model {name:?} has no version {:?}; this server serves version {version:?}",
                    v.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    Ok(())
}

/// Answers an infer request; `model_check` is whether its path names the served model.
async fn infer(
    state: &State,
    model_check: Result<(), ApiError>,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let started = Instant::now();
    state.infer_requests.inc();
    let response = match infer_inner(state, model_check, req).await {
        Ok(r) => r,
        Err(e) => {
            state.arm.error(e.kind);
            error_response(&e)
        }
    };
    state.arm.duration.observe(started.elapsed().as_secs_f64());
    response
}

async fn infer_inner(
    state: &State,
    model_check: Result<(), ApiError>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    model_check?;
    check_body_type(req.headers())?;
    let (parts, body) = req.into_parts();
    let header_length = match parts.headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::new(
                ErrorKind::InvalidInput,
                "`Inference-Header-Content-Length` must be the byte length of the JSON header",
            )
        })?),
    };
    let body = read_body(
        &parts.headers,
        body,
        state.config.body_limit_bytes,
        state.config.body_timeout,
    )
    .await?;
    let spec = state.model.spec();
    let request = request::parse_infer(
        &body,
        header_length,
        &spec.features,
        state.config.max_batch_size,
    )?;
    let rows = request.rows;
    let predictions = state.inference.predict(request.values, rows).await?;
    state.rows.inc_by(rows as u64);
    // The protocol's body has no `user_id`: the user is `X-User-Id` (as the router keys it).
    let user = header_user(&parts.headers);
    let overridden = parts.headers.contains_key(crate::headers::X_VARIANT);
    let prediction_ids = state
        .recent
        .record_request(&predictions, user.as_deref(), overridden);
    let encoded = encode_infer(
        InferContext {
            model_name: &state.config.model_name,
            model_version: &spec.version,
            id: request.id.as_deref(),
            prediction_ids: &prediction_ids,
        },
        &predictions,
        request.binary_output,
    )
    .map_err(|e| {
        ApiError::new(
            ErrorKind::Internal,
            format!("could not encode response: {e}"),
        )
    })?;
    let mut response = Response::new(Full::new(Bytes::from(encoded.body)));
    let headers = response.headers_mut();
    match encoded.header_length {
        Some(n) => {
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok(response)
}

/// Infer bodies are JSON, or JSON followed by binary tensor data: a missing content
/// type, JSON or `application/octet-stream` is accepted, anything else (and any
/// `Content-Encoding` but `identity`) is a 415.
fn check_body_type(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(coding) = headers.get(CONTENT_ENCODING) {
        let coding = coding.to_str().unwrap_or("<non-ascii>").trim();
        if !coding.eq_ignore_ascii_case("identity") {
            return Err(ApiError::new(
                ErrorKind::UnsupportedMediaType,
                format!(
                    "Content-Encoding {:?} is not supported; send the body uncompressed",
                    coding.chars().take(32).collect::<String>()
                ),
            ));
        }
    }
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mime == "application/json"
        || mime == "application/octet-stream"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::UnsupportedMediaType,
            format!(
                "content type {:?} is not supported; send application/json (or application/octet-stream with binary tensor data)",
                value.to_str().unwrap_or("<non-ascii>").chars().take(64).collect::<String>()
            ),
        ))
    }
}

fn json<T: Serialize>(body: &T) -> Response<Full<Bytes>> {
    abgate_common::http::json_response(StatusCode::OK, body)
}

/// The protocol's error response: `{"error": message}` with the kind's status.
pub fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    abgate_common::oip::error_response(error)
}
