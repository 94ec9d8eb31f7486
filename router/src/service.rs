//! The router's routes over hyper: the route table and its dispatch. Predictions and
//! feedback go to the hyper transport ([`crate::hyper_path`]), `/v2` to
//! [`crate::oip`]; the JSON views are in [`crate::views`].

use abgate_common::http::{find_route, json_response, metrics_response, route_error, Route};
use http::header::HeaderValue;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;

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
                hyper_path::reject_unassigned(&router, &err)
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
    }
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
}
