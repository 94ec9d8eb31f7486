//! Reading a client's request head on the fast path: which requests it serves (a
//! plain `POST /predict` over HTTP/1.1 with `X-User-Id` and a `Content-Length`),
//! which go to hyper, which are refused outright; and where, in the buffered bytes,
//! the pieces forwarding needs are.

use abgate_common::metrics::Endpoint;
use abgate_common::ErrorKind;
use std::ops::Range;

use crate::headers::{valid_request_id, ConnectionTokens};
use crate::upstream::h1::parse_length;
use abgate_common::headers as names;

/// Request heads with more header lines go to hyper (which allows 100).
pub const MAX_HEADERS: usize = 64;

/// What a request head asks for.
pub enum Inspection {
    /// More bytes are needed.
    Partial,
    /// The fast path does not serve it: hyper does.
    Hyper,
    /// Not a request anyone can serve: answered with this error, then closed.
    Reject(ErrorKind),
    /// A `/predict` the fast path serves.
    Fast(Plan),
}

/// A prediction request the fast path serves; ranges index the connection's buffer.
pub struct Plan {
    /// `/predict` or the protocol's `infer`.
    pub endpoint: Endpoint,
    /// Bytes of the head.
    pub head_len: usize,
    /// Bytes of the body that follows.
    pub body_len: usize,
    /// The client asked to close after this response.
    pub close: bool,
    /// The request target.
    pub path: Range<usize>,
    /// The `X-User-Id` value.
    pub user: Range<usize>,
    /// The client's first `X-Request-Id`, if valid.
    pub request_id: Option<Range<usize>>,
    /// Every header line (name, value).
    pub headers: Vec<(Range<usize>, Range<usize>)>,
}

/// The prediction route a request target names: `/predict`, or an Open Inference
/// Protocol `infer` path (`/v2/models/{model}[/versions/{version}]/infer`).
pub fn prediction_endpoint(target: &str) -> Option<Endpoint> {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == "/predict" {
        return Some(Endpoint::Predict);
    }
    match abgate_common::oip::parse(path) {
        Some(route) if route.endpoint == abgate_common::oip::Endpoint::Infer => {
            Some(Endpoint::Infer)
        }
        _ => None,
    }
}

/// `HeaderValue::to_str`'s rule: visible ASCII, space and tab.
/// A field value (RFC 9110 §5.5): visible ASCII, space, tab and obs-text (bytes over
/// 0x7F, such as UTF-8), never a control byte. The sticky key is its raw bytes.
fn field_value(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

fn span(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Parses the head at the front of `buf` and decides who serves it.
pub fn inspect(buf: &[u8], max_head_bytes: usize, body_limit: usize) -> Inspection {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= max_head_bytes => n,
        Ok(httparse::Status::Partial) if buf.len() < max_head_bytes => return Inspection::Partial,
        Ok(_) => return Inspection::Reject(ErrorKind::HeadersTooLarge),
        // More header lines than the fast path keeps room for: hyper allows 100.
        Err(httparse::Error::TooManyHeaders) => return Inspection::Hyper,
        Err(_) => return Inspection::Reject(ErrorKind::MalformedRequest),
    };
    let path = req.path.unwrap_or("");
    let Some(endpoint) = prediction_endpoint(path) else {
        return Inspection::Hyper;
    };
    if req.method != Some("POST") || req.version != Some(1) {
        return Inspection::Hyper;
    }
    let path = span(buf, path.as_bytes());
    let (mut body_len, mut user, mut request_id, mut id_seen) = (None, None, None, false);
    let mut connection = ConnectionTokens::default();
    let mut headers = Vec::with_capacity(req.headers.len());
    for header in req.headers.iter() {
        let (name, value) = (header.name.as_bytes(), header.value);
        headers.push((span(buf, name), span(buf, value)));
        if name.eq_ignore_ascii_case(b"content-length") {
            match (body_len, parse_length(value)) {
                (None, Some(n)) if n <= body_limit => body_len = Some(n),
                // Two lengths that disagree, or one that is not a number: the body
                // cannot be framed, so no one can serve it.
                (Some(a), Some(b)) if a != b => {
                    return Inspection::Reject(ErrorKind::MalformedRequest)
                }
                (_, None) if !value.iter().all(u8::is_ascii_digit) || value.is_empty() => {
                    return Inspection::Reject(ErrorKind::MalformedRequest)
                }
                // Over the limit (413), or a repeated equal length: hyper's path.
                _ => return Inspection::Hyper,
            }
        } else if name.eq_ignore_ascii_case(names::USER_ID.as_bytes()) {
            if user.is_some() || value.is_empty() || !field_value(value) {
                return Inspection::Hyper;
            }
            user = Some(span(buf, value));
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.add(value);
        } else if name.eq_ignore_ascii_case(names::REQUEST_ID.as_bytes()) {
            // Like the hyper path: the first one counts, kept only if valid.
            if !id_seen && valid_request_id(value) {
                request_id = Some(span(buf, value));
            }
            id_seen = true;
        } else if [
            &b"transfer-encoding"[..],
            b"expect",
            b"upgrade",
            names::VARIANT.as_bytes(),
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
        {
            return Inspection::Hyper;
        }
    }
    let (Some(body_len), Some(user)) = (body_len, user) else {
        return Inspection::Hyper;
    };
    Inspection::Fast(Plan {
        endpoint,
        head_len,
        body_len,
        close: connection.close,
        path,
        user,
        request_id,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(head: &str) -> &'static str {
        match inspect(head.as_bytes(), 32 * 1024, 1000) {
            Inspection::Partial => "partial",
            Inspection::Hyper => "hyper",
            Inspection::Fast(_) => "fast",
            Inspection::Reject(ErrorKind::MalformedRequest) => "malformed",
            Inspection::Reject(_) => "too large",
        }
    }

    #[test]
    fn only_the_plain_sticky_predict_takes_the_fast_path() {
        let ok = "POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}";
        let cases = [
            (ok, "fast"),
            ("POST /predict?explain=1 HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "fast"),
            ("POST /predict HTTP/1.1\r\nX-User-Id: u1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n", "fast"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nconnection: x-secret\r\ncontent-length: 2\r\n\r\n{}", "fast"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-", "partial"),
            ("POST /predict HTTP/1.0\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("GET /predict HTTP/1.1\r\nx-user-id: u1\r\n\r\n", "hyper"),
            ("POST /feedback HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predictx HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /v2/models/wine-quality/infer HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "fast"),
            ("POST /v2/models/wine-quality/versions/1/infer HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "fast"),
            ("POST /v2/models/wine-quality/ready HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /v2/models/wine-quality/infer HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            // The user id is in the body: hyper's path parses it.
            ("POST /predict HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: \r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: a\r\nx-user-id: b\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n{}", "malformed"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: +2\r\n\r\n{}", "malformed"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 99999999999999999999\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\ncontent-length: 1001\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nexpect: 100-continue\r\ncontent-length: 2\r\n\r\n", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nx-variant: best_model\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nx-user-id: u1\r\nupgrade: websocket\r\ncontent-length: 2\r\n\r\n{}", "hyper"),
            ("POST /predict HTTP/1.1\r\nbad header\r\n\r\n", "malformed"),
            ("GET / HTTP/1.1\r\nx-a : b\r\n\r\n", "malformed"),
            ("\x16\x03\x01\x02\x00\x01\x00", "malformed"),
        ];
        for (head, expected) in cases {
            assert_eq!(decide(head), expected, "{head:?}");
        }
    }

    #[test]
    fn a_head_over_the_limit_is_refused_431() {
        let big = format!(
            "POST /predict HTTP/1.1\r\nx-user-id: u1\r\nx-pad: {}\r\n",
            "a".repeat(40_000)
        );
        assert_eq!(decide(&big), "too large");
        let many: String = (0..80).map(|i| format!("x-h{i}: v\r\n")).collect();
        let head = format!("POST /predict HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            decide(&head),
            "hyper",
            "hyper allows up to 100 header lines"
        );
    }

    #[test]
    fn the_plan_points_at_the_path_user_and_a_valid_request_id() {
        let head = "POST /predict?x=1 HTTP/1.1\r\nX-User-Id: u1\r\nX-Request-Id: bad id\r\nx-request-id: late\r\ncontent-length: 2\r\n\r\n{}";
        let Inspection::Fast(plan) = inspect(head.as_bytes(), 32 * 1024, 1000) else {
            panic!("not fast");
        };
        let b = head.as_bytes();
        assert_eq!(&b[plan.path.clone()], b"/predict?x=1");
        assert_eq!(&b[plan.user.clone()], b"u1");
        assert!(plan.request_id.is_none(), "an invalid first id is replaced");
        assert_eq!(plan.headers.len(), 4);
        assert_eq!(plan.body_len, 2);
        assert_eq!(&b[plan.head_len..], b"{}");
    }
}
