//! Header names the router reads and sets, request ids, and the one list of
//! hop-by-hop headers: every path applies it, toward the arm and toward the client.

use http::header::HeaderName;
use http::HeaderValue;

use abgate_common::headers as names;

/// Sticky key header.
pub const USER_ID: HeaderName = names::X_USER_ID;
/// Override request header, and the served arm on responses.
pub const VARIANT: HeaderName = names::X_VARIANT;
/// Request id, propagated or generated.
pub const REQUEST_ID: HeaderName = names::X_REQUEST_ID;
/// Secret that must accompany `X-Variant` when configured.
pub const OVERRIDE_TOKEN: HeaderName = names::X_OVERRIDE_TOKEN;
/// Marks a shadow's copy of a request.
pub const SHADOW: &str = names::SHADOW;

/// Headers that describe one hop (RFC 9110 §7.6.1, plus the legacy
/// `Proxy-Connection`), never passed on in either direction. Headers named by
/// `Connection` are hop-by-hop too, however many it names.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Headers the router sets itself on responses: an arm's own are dropped.
const ROUTER_OWNED: [&str; 3] = [names::VARIANT, names::ASSIGNED_VARIANT, names::REQUEST_ID];

fn is(name: &[u8], list: &[&str]) -> bool {
    list.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// Whether `name` is in [`HOP_BY_HOP`].
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    is(name, &HOP_BY_HOP)
}

/// What the `Connection` headers of a message say: `close`, `keep-alive`, and the
/// other header names they list (hop-by-hop for this message).
#[derive(Debug, Default)]
pub struct ConnectionTokens<'a> {
    /// `close` was listed.
    pub close: bool,
    /// `keep-alive` was listed.
    pub keep_alive: bool,
    /// Every other token, trimmed.
    pub named: Vec<&'a [u8]>,
}

impl<'a> ConnectionTokens<'a> {
    /// Adds the tokens of one `Connection` header value.
    pub fn add(&mut self, value: &'a [u8]) {
        for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else if !token.is_empty() {
                self.named.push(token);
            }
        }
    }

    /// Whether `name` was listed.
    pub fn names(&self, name: &[u8]) -> bool {
        self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// Whether a client's request header is passed on to the arm: not hop-by-hop, not
/// named by `Connection`, not `Host` or `Content-Length` (both set again), not the
/// override secret, not the request id (set again, validated).
pub fn forwarded_upstream(name: &[u8], connection: &ConnectionTokens<'_>) -> bool {
    !is_hop_by_hop(name)
        && !connection.names(name)
        && !is(
            name,
            &[
                "host",
                "content-length",
                names::OVERRIDE_TOKEN,
                names::REQUEST_ID,
            ],
        )
}

/// Whether an arm's response header is passed on to the client: not hop-by-hop, not
/// named by `Connection`, not `Content-Length` (set again from the framing), not one
/// the router sets itself.
pub fn forwarded_downstream(name: &[u8], connection: &ConnectionTokens<'_>) -> bool {
    !is_hop_by_hop(name)
        && !connection.names(name)
        && !name.eq_ignore_ascii_case(b"content-length")
        && !is(name, &ROUTER_OWNED)
}

/// Whether a client's `X-Request-Id` is kept (else a fresh one replaces it).
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= 128 && id.iter().all(u8::is_ascii_graphic)
}

/// The request id of a request: the client's first `X-Request-Id` if valid, else a
/// fresh one.
pub fn request_id_or_new(given: Option<&[u8]>) -> HeaderValue {
    given
        .filter(|v| valid_request_id(v))
        .and_then(|v| HeaderValue::from_bytes(v).ok())
        .unwrap_or_else(new_request_id)
}

/// A fresh request id: 32 hex digits from a random per-thread prefix and a counter,
/// so ids are unique without drawing randomness for every request.
pub fn new_request_id() -> HeaderValue {
    use std::cell::Cell;
    thread_local! {
        static NEXT: Cell<(u64, u64)> = Cell::new((rand::random(), 0));
    }
    let (prefix, n) = NEXT.with(|c| {
        let (p, n) = c.get();
        c.set((p, n.wrapping_add(1)));
        (p, n)
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 32];
    for (i, byte) in prefix
        .to_be_bytes()
        .iter()
        .chain(n.to_be_bytes().iter())
        .enumerate()
    {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_may_name_any_number_of_headers_and_all_of_them_are_dropped() {
        let mut c = ConnectionTokens::default();
        let value: Vec<u8> = (1..=10)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .join(", ")
            .into_bytes();
        c.add(&value);
        c.add(b"close, X-Secret");
        assert!(c.close);
        for i in 1..=10 {
            let name = format!("A{i}");
            assert!(!forwarded_downstream(name.as_bytes(), &c), "{name}");
            assert!(!forwarded_upstream(name.as_bytes(), &c), "{name}");
        }
        assert!(!forwarded_downstream(b"x-secret", &c));
        assert!(forwarded_downstream(b"content-type", &c));
    }

    #[test]
    fn every_listed_hop_by_hop_header_is_dropped_both_ways() {
        let c = ConnectionTokens::default();
        for name in HOP_BY_HOP {
            assert!(!forwarded_upstream(name.as_bytes(), &c), "{name}");
            assert!(!forwarded_downstream(name.to_uppercase().as_bytes(), &c));
        }
        assert!(!forwarded_upstream(b"X-Override-Token", &c));
        assert!(!forwarded_downstream(b"X-Assigned-Variant", &c));
        assert!(forwarded_upstream(b"x-user-id", &c));
    }

    #[test]
    fn request_ids_are_kept_when_printable_and_short_else_replaced() {
        assert_eq!(request_id_or_new(Some(b"abc-1")).as_bytes(), b"abc-1");
        assert_eq!(request_id_or_new(Some(b"a b")).len(), 32);
        assert_eq!(request_id_or_new(Some(&[b'x'; 129])).len(), 32);
        assert_ne!(new_request_id(), new_request_id());
    }
}
