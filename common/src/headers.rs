//! The abgate header names, once for every crate: the router sets and reads them, the
//! model server reads and echoes them. Names are lower case (as HTTP/2 and `http`'s
//! `HeaderName` spell them); matching is case-insensitive everywhere.

use http::HeaderName;

/// `X-User-Id`: the sticky key a user is assigned by.
pub const USER_ID: &str = "x-user-id";
/// `X-Variant`: the arm that served (on answers); an override request (on requests).
pub const VARIANT: &str = "x-variant";
/// `X-Assigned-Variant`: the arm a user was assigned when another one served.
pub const ASSIGNED_VARIANT: &str = "x-assigned-variant";
/// `X-Request-Id`: one request's id, propagated to the arm and echoed by it.
pub const REQUEST_ID: &str = "x-request-id";
/// `X-Override-Token`: the secret an `X-Variant` override must carry when configured.
pub const OVERRIDE_TOKEN: &str = "x-override-token";
/// `X-Shadow`: marks a mirrored copy sent to a shadow arm.
pub const SHADOW: &str = "x-shadow";

/// [`USER_ID`] as a `HeaderName`.
pub const X_USER_ID: HeaderName = HeaderName::from_static(USER_ID);
/// [`VARIANT`] as a `HeaderName`.
pub const X_VARIANT: HeaderName = HeaderName::from_static(VARIANT);
/// [`ASSIGNED_VARIANT`] as a `HeaderName`.
pub const X_ASSIGNED_VARIANT: HeaderName = HeaderName::from_static(ASSIGNED_VARIANT);
/// [`REQUEST_ID`] as a `HeaderName`.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static(REQUEST_ID);
/// [`OVERRIDE_TOKEN`] as a `HeaderName`.
pub const X_OVERRIDE_TOKEN: HeaderName = HeaderName::from_static(OVERRIDE_TOKEN);
