//! The closed set of client-visible error types and the JSON error body.
//!
//! Every rejected request is answered with `{"error": {"type", "message"}}` and counted
//! in `prediction_errors_total{error_type}`; the label value always comes from
//! [`ErrorKind::as_str`], never from request input.

use http::StatusCode;
use serde::Serialize;

/// A client-visible error class. Its string form is both the JSON `type` and the
/// `error_type` metric label, so the label set is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The body is not valid JSON (syntax, NaN/Infinity literals, numbers out of range).
    InvalidJson,
    /// The JSON is well formed but a field has the wrong type or value.
    InvalidInput,
    /// One or more model features are missing.
    MissingFeature,
    /// One or more fields are not model features.
    UnknownFeature,
    /// A batch is empty or larger than the configured maximum.
    InvalidBatch,
    /// An `X-Variant` override or feedback names an arm that does not exist.
    UnknownVariant,
    /// An override was requested without the configured token.
    OverrideForbidden,
    /// No route matches the path.
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The client took too long to send its request body.
    RequestTimeout,
    /// The body exceeds the configured limit.
    PayloadTooLarge,
    /// The content type is not JSON.
    UnsupportedMediaType,
    /// A bug or an unexpected failure inside the process.
    Internal,
    /// The arm refused the connection, broke it, or answered garbage.
    UpstreamError,
    /// No arm is healthy enough to take the request.
    NoHealthyArm,
    /// The process is at its concurrency limit and sheds the request.
    Overloaded,
    /// The arm did not answer within the configured timeout.
    UpstreamTimeout,
    /// The request head is not valid HTTP/1.1.
    MalformedRequest,
    /// The request head exceeds the header size limit.
    HeadersTooLarge,
    /// Feedback names a prediction the arm does not remember (never issued, or
    /// forgotten: the arm keeps its most recent predictions only).
    UnknownPrediction,
    /// Feedback repeats what its prediction already received (a second rating,
    /// accuracy judgement or `actual`).
    DuplicateFeedback,
    /// Feedback on a prediction made for a user, sent by someone else.
    FeedbackForbidden,
    /// A control route without a valid `Authorization: Bearer` admin token.
    Unauthorized,
    /// A control route while no admin token is configured (the routes are off).
    AdminForbidden,
    /// A control request the current state does not allow (e.g. resuming a finished
    /// rollout).
    Conflict,
}

impl ErrorKind {
    /// Every kind, in a stable order (used to pre-create metric series).
    pub const ALL: [ErrorKind; 25] = [
        ErrorKind::InvalidJson,
        ErrorKind::InvalidInput,
        ErrorKind::MissingFeature,
        ErrorKind::UnknownFeature,
        ErrorKind::InvalidBatch,
        ErrorKind::UnknownVariant,
        ErrorKind::OverrideForbidden,
        ErrorKind::NotFound,
        ErrorKind::MethodNotAllowed,
        ErrorKind::RequestTimeout,
        ErrorKind::PayloadTooLarge,
        ErrorKind::UnsupportedMediaType,
        ErrorKind::Internal,
        ErrorKind::UpstreamError,
        ErrorKind::NoHealthyArm,
        ErrorKind::Overloaded,
        ErrorKind::UpstreamTimeout,
        ErrorKind::MalformedRequest,
        ErrorKind::HeadersTooLarge,
        ErrorKind::UnknownPrediction,
        ErrorKind::DuplicateFeedback,
        ErrorKind::FeedbackForbidden,
        ErrorKind::Unauthorized,
        ErrorKind::AdminForbidden,
        ErrorKind::Conflict,
    ];

    /// The JSON `type` and the `error_type` label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidJson => "invalid_json",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::MissingFeature => "missing_feature",
            ErrorKind::UnknownFeature => "unknown_feature",
            ErrorKind::InvalidBatch => "invalid_batch",
            ErrorKind::UnknownVariant => "unknown_variant",
            ErrorKind::OverrideForbidden => "override_forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed => "method_not_allowed",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::UnsupportedMediaType => "unsupported_media_type",
            ErrorKind::Internal => "internal",
            ErrorKind::UpstreamError => "upstream_error",
            ErrorKind::NoHealthyArm => "no_healthy_arm",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::MalformedRequest => "malformed_request",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::UnknownPrediction => "unknown_prediction",
            ErrorKind::DuplicateFeedback => "duplicate_feedback",
            ErrorKind::FeedbackForbidden => "feedback_forbidden",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::AdminForbidden => "admin_forbidden",
            ErrorKind::Conflict => "conflict",
        }
    }

    /// The HTTP status this kind is answered with.
    pub const fn status(self) -> StatusCode {
        match self {
            ErrorKind::InvalidJson
            | ErrorKind::InvalidInput
            | ErrorKind::MissingFeature
            | ErrorKind::UnknownFeature
            | ErrorKind::InvalidBatch
            | ErrorKind::UnknownVariant
            | ErrorKind::MalformedRequest => StatusCode::BAD_REQUEST,
            ErrorKind::OverrideForbidden
            | ErrorKind::FeedbackForbidden
            | ErrorKind::AdminForbidden => StatusCode::FORBIDDEN,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::NotFound | ErrorKind::UnknownPrediction => StatusCode::NOT_FOUND,
            ErrorKind::DuplicateFeedback | ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorKind::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorKind::NoHealthyArm | ErrorKind::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// Parses a label value back into a kind (used by the router to re-count an arm's
    /// error under the same type). Unknown strings give `None`.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client-visible error: a kind and a message that names the offending field.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The error class.
    pub kind: ErrorKind,
    /// Human-readable reason, naming the field or limit involved.
    pub message: String,
}

impl ApiError {
    /// Builds an error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    /// The JSON body `{"error": {"type": ..., "message": ...}}`.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Inner<'a> {
            r#type: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Outer<'a> {
            error: Inner<'a>,
        }
        let body = Outer {
            error: Inner {
                r#type: self.kind.as_str(),
                message: &self.message,
            },
        };
        // Serializing two &str fields cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_label() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(ErrorKind::parse("made_up"), None);
    }

    #[test]
    fn error_kinds_are_client_or_server_errors() {
        for kind in ErrorKind::ALL {
            let status = kind.status();
            assert!(
                status.is_client_error() || status.is_server_error(),
                "{kind}"
            );
        }
    }

    #[test]
    fn json_body_has_type_and_message() {
        let err = ApiError::new(ErrorKind::MissingFeature, "missing \"alcohol\"");
        let v: serde_json::Value = serde_json::from_slice(&err.to_json()).unwrap_or_default();
        assert_eq!(v["error"]["type"], "missing_feature");
        assert_eq!(v["error"]["message"], "missing \"alcohol\"");
    }
}
