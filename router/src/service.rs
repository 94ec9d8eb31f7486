//! The router's routes over hyper: the route table and its dispatch. Predictions and
//! feedback go to the hyper transport ([`crate::hyper_path`]), `/v2` to
//! [`crate::oip`]; the JSON views are in [`crate::views`].

use abgate_common::http::{
    error_response, find_route, json_response, metrics_response, route_error, Route,
};
use abgate_common::{ApiError, ErrorKind};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

use crate::control::rollout::{self, Action};
use crate::error::RouterError;
use crate::headers::{request_id_or_new, REQUEST_ID};
use crate::hyper_path::{self, RouterBody};
use crate::policy::{self, Endpoint};
use crate::state::{Active, Router};
use crate::views;

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
    Rollout,
    RolloutAction(Action),
    Verdict,
}

const ROUTES: [Route<Target>; 14] = [
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
    Route {
        path: "/api/rollout",
        method: Method::GET,
        target: Target::Rollout,
    },
    Route {
        path: "/api/rollout/pause",
        method: Method::POST,
        target: Target::RolloutAction(Action::Pause),
    },
    Route {
        path: "/api/rollout/resume",
        method: Method::POST,
        target: Target::RolloutAction(Action::Resume),
    },
    Route {
        path: "/api/rollout/abort",
        method: Method::POST,
        target: Target::RolloutAction(Action::Abort),
    },
    Route {
        path: "/api/experiment/verdict",
        method: Method::GET,
        target: Target::Verdict,
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
                hyper_path::reject_unassigned(&router, &err)
            }
            Some(_slot) => route(&router, &active, req, &request_id).await,
        }
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    response
}

/// Whether a request is forwarded to an arm (and so takes a concurrency slot): every
/// `POST` but the rollout's control routes, and whatever the Open Inference Protocol
/// forwards (`infer`, metadata). Everything else is answered from the router's memory.
fn is_data_plane(method: &Method, path: &str) -> bool {
    if method == Method::POST {
        return !path.starts_with("/api/rollout/");
    }
    abgate_common::oip::is_oip(path) && !path.starts_with("/v2/health")
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
        Target::Predict => {
            hyper_path::predict(router, active, req, request_id, Endpoint::Predict).await
        }
        Target::Feedback => hyper_path::feedback(router, active, req, request_id).await,
        Target::Metrics => {
            router.experiment.refresh(&active.phase, &active.config);
            metrics_response(router.metrics.common.encode())
        }
        Target::Experiment => json_response(
            StatusCode::OK,
            &router
                .experiment
                .view(&active.phase, &active.config, active.version),
        ),
        Target::Health => views::health(router, active),
        Target::Summary => json_response(StatusCode::OK, &views::summary(active, router)),
        Target::Config => json_response(StatusCode::OK, &views::config_view(router, active)),
        Target::Shadows => json_response(StatusCode::OK, &crate::shadow::view(&active.shadows)),
        Target::StatusPage => crate::status_page::response(),
        Target::Rollout => json_response(StatusCode::OK, &rollout::view(router)),
        Target::RolloutAction(action) => {
            let done = authorize(active, req.headers()).and_then(|()| rollout::act(router, action));
            match done {
                Ok(view) => json_response(StatusCode::OK, &view),
                Err(e) => error_answer(&e),
            }
        }
        Target::Verdict => {
            let arm = query_value(req.uri().query().unwrap_or(""), "arm").unwrap_or_default();
            match rollout::verdict(router, arm) {
                Ok(v) => json_response(StatusCode::OK, &v),
                Err(e) => error_answer(&e),
            }
        }
    }
}

/// The JSON error answer for `e` (a 401 says which scheme it wants).
fn error_answer(e: &RouterError) -> Response<RouterBody> {
    let api = e.to_api();
    let mut response = error_response(&api);
    if api.kind == ErrorKind::Unauthorized {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"abgate\""),
        );
    }
    response
}

/// The value of `key` in a query string (first occurrence, not decoded: arm names
/// need no decoding, and anything else names no arm).
fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Checks `Authorization: Bearer <admin.token>` (compared in constant time): none
/// configured is 403, a missing or wrong token 401.
fn authorize(active: &Active, headers: &http::HeaderMap) -> Result<(), RouterError> {
    let Some(token) = active.config.admin.token.as_deref() else {
        return Err(RouterError::Request(ApiError::new(
            ErrorKind::AdminForbidden,
            "the control routes are off: no admin.token is configured",
        )));
    };
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if given.is_empty() || !constant_time_eq(given, token.as_bytes()) {
        return Err(RouterError::Request(ApiError::new(
            ErrorKind::Unauthorized,
            "send `Authorization: Bearer <admin.token>`",
        )));
    }
    Ok(())
}

/// Byte equality whose time depends only on the lengths, not on where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff);
    }
    diff == 0
}

/// Whether a path is one of the router's routes (for tests and `check`).
#[cfg(test)]
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

    #[test]
    fn the_rollout_control_routes_take_no_data_plane_slot() {
        for action in ["pause", "resume", "abort"] {
            let path = format!("/api/rollout/{action}");
            assert!(is_route(&path) && !is_data_plane(&Method::POST, &path));
        }
        assert!(!is_data_plane(&Method::GET, "/api/experiment/verdict"));
        assert!(is_data_plane(&Method::POST, "/predict"));
        assert!(is_data_plane(&Method::POST, "/feedback"));
    }

    #[test]
    fn tokens_compare_whole_and_queries_split() {
        assert!(constant_time_eq(b"s3cret-token", b"s3cret-token"));
        assert!(!constant_time_eq(b"s3cret-token", b"s3cret-tokem"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret-token"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(!constant_time_eq(b"\xff", b""));
        assert_eq!(query_value("a=1&arm=cand&arm=x", "arm"), Some("cand"));
        assert_eq!(query_value("", "arm"), None);
    }
}
