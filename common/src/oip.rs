//! The Open Inference Protocol's REST paths, parsed without allocating, and its error
//! shape: shared by the model server (which serves the protocol) and the router
//! (which assigns and forwards it).

use bytes::Bytes;
use http::{Method, Response};
use http_body_util::Full;

use crate::ApiError;

/// The protocol's error response: `{"error": message}` with the kind's status.
pub fn error_response(error: &ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": error.message }).to_string();
    crate::http::json_bytes(error.kind.status(), body.into_bytes())
}

/// What an OIP path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /v2`: server metadata.
    Server,
    /// `GET /v2/health/live`.
    Live,
    /// `GET /v2/health/ready`.
    Ready,
    /// `GET /v2/models/{model}[/versions/{version}]`: model metadata.
    Model,
    /// `GET /v2/models/{model}[/versions/{version}]/ready`.
    ModelReady,
    /// `POST /v2/models/{model}[/versions/{version}]/infer`.
    Infer,
}

impl Endpoint {
    /// The one method the endpoint answers (`HEAD` is accepted wherever `GET` is).
    pub fn method(self) -> Method {
        match self {
            Endpoint::Infer => Method::POST,
            _ => Method::GET,
        }
    }
}

/// A parsed OIP path: the endpoint and, for model endpoints, the model and version
/// named in it (still to be checked against what the server serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    /// What is asked for.
    pub endpoint: Endpoint,
    /// `{model}`, for model endpoints.
    pub model: Option<&'a str>,
    /// `{version}`, when the path has `/versions/{version}`.
    pub version: Option<&'a str>,
}

/// Whether `path` belongs to the protocol (`/v2` or below it).
pub fn is_oip(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

/// Parses an OIP path; `None` for any path the protocol (as served here) lacks.
pub fn parse(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    let plain = |endpoint| {
        Some(Route {
            endpoint,
            model: None,
            version: None,
        })
    };
    match rest {
        "" => return plain(Endpoint::Server),
        "/health/live" => return plain(Endpoint::Live),
        "/health/ready" => return plain(Endpoint::Ready),
        _ => {}
    }
    let mut parts = rest.strip_prefix("/models/")?.split('/');
    let model = parts.next().filter(|m| !m.is_empty())?;
    let mut next = parts.next();
    let mut version = None;
    if next == Some("versions") {
        version = Some(parts.next().filter(|v| !v.is_empty())?);
        next = parts.next();
    }
    let endpoint = match next {
        None => Endpoint::Model,
        Some("ready") => Endpoint::ModelReady,
        Some("infer") => Endpoint::Infer,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Route {
        endpoint,
        model: Some(model),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_and_its_versioned_form_parse() {
        let cases = [
            ("/v2", Endpoint::Server, None, None),
            ("/v2/health/live", Endpoint::Live, None, None),
            ("/v2/health/ready", Endpoint::Ready, None, None),
            ("/v2/models/m", Endpoint::Model, Some("m"), None),
            ("/v2/models/m/ready", Endpoint::ModelReady, Some("m"), None),
            ("/v2/models/m/infer", Endpoint::Infer, Some("m"), None),
            (
                "/v2/models/m/versions/1",
                Endpoint::Model,
                Some("m"),
                Some("1"),
            ),
            (
                "/v2/models/m/versions/1/ready",
                Endpoint::ModelReady,
                Some("m"),
                Some("1"),
            ),
            (
                "/v2/models/m/versions/1.0.0/infer",
                Endpoint::Infer,
                Some("m"),
                Some("1.0.0"),
            ),
        ];
        for (path, endpoint, model, version) in cases {
            assert_eq!(
                parse(path),
                Some(Route {
                    endpoint,
                    model,
                    version
                }),
                "{path}"
            );
            assert!(is_oip(path));
        }
    }

    #[test]
    fn other_paths_are_not_routes() {
        for path in [
            "/v2/",
            "/v2/health",
            "/v2/health/live/",
            "/v2/models",
            "/v2/models/",
            "/v2/models//infer",
            "/v2/models/m/",
            "/v2/models/m/infer/",
            "/v2/models/m/config",
            "/v2/models/m/stats",
            "/v2/models/m/versions",
            "/v2/models/m/versions/",
            "/v2/models/m/versions//infer",
            "/v2/models/m/versions/1/infer/x",
            "/v2/repository/index",
            "/v2x",
            "/v1/models/m",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
        assert!(!is_oip("/v2x"));
        assert!(!is_oip("/predict"));
    }
}
