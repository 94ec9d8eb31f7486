//! The abgate headers an arm reads or writes on both of its route families (its own
//! routes in [`crate::service`] and the Open Inference Protocol in [`crate::oip`]), kept
//! below both so that neither depends on the other for them.

use http::{HeaderMap, HeaderName, HeaderValue};

/// `X-Variant`: the arm that answered (set on OIP responses).
pub const X_VARIANT: HeaderName = abgate_common::headers::X_VARIANT;

/// `X-User-Id`: the user a prediction is made for, forwarded unchanged by the router.
pub const X_USER_ID: HeaderName = abgate_common::headers::X_USER_ID;

/// The request's user key: its first `X-User-Id`, raw bytes (UTF-8 or not), when
/// not empty. The router forwards this header unchanged.
pub(crate) fn header_user(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get(X_USER_ID)
        .map(HeaderValue::as_bytes)
        .filter(|v| !v.is_empty())
        .map(<[u8]>::to_vec)
}
