//! The HTTP/1.1 codec toward arms, and the router's own response heads toward
//! clients: request heads written, response heads parsed with strict framing
//! (RFC 9112 §6), chunked bodies decoded strictly, error answers written. Pure
//! functions over byte buffers; the sockets are elsewhere.

use abgate_common::ApiError;
use http::StatusCode;
use std::io::Write as _;

use crate::headers::{forwarded_downstream, forwarded_upstream, ConnectionTokens};
use abgate_common::headers as names;

/// The request id header, lower case.
const REQUEST_ID: &[u8] = abgate_common::headers::REQUEST_ID.as_bytes();

/// Response heads with more header lines are refused.
pub const MAX_HEADERS: usize = 64;
/// The longest chunk-size line (size plus extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// The largest trailer section accepted (it is dropped).
const MAX_TRAILERS: usize = 8 * 1024;

/// How an arm's response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes.
    Length(usize),
    /// Chunked transfer coding.
    Chunked,
    /// Until the arm closes the connection.
    UntilClose,
}

/// An arm's final response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Its status.
    pub status: StatusCode,
    /// How its body is framed.
    pub framing: Framing,
    /// The arm's connection may carry another request after this response.
    pub reusable: bool,
    /// What the answer's `X-Request-Id` says about which request it answers.
    pub echo: Echo,
}

/// Whether an answer carries the id of the request it answers. abgate's model server
/// echoes `X-Request-Id` on every answer, so an answer with another id is some other
/// exchange's (a stray or duplicated response) and must never reach this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// No `X-Request-Id` in the answer (an arm that does not echo).
    Absent,
    /// The answer's id is the request's.
    Matches,
    /// The answer's id is another request's.
    Differs,
}

/// What the start of an arm's answer turned out to be.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim 1xx head of this many bytes, to skip.
    Interim(usize),
    /// The final head, of this many bytes.
    Final(usize, ResponseHead),
}

/// Writes a request head for an arm: `method path HTTP/1.1`, the arm as `Host`, the
/// client's end-to-end headers, the request id and the body's length.
pub fn write_request_head<'h>(
    out: &mut Vec<u8>,
    method: &str,
    path: &[u8],
    authority: &str,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])> + Clone,
    request_id: &[u8],
    body_len: usize,
) {
    let mut connection = ConnectionTokens::default();
    for (name, value) in headers.clone() {
        if name.eq_ignore_ascii_case(b"connection") {
            connection.add(value);
        }
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if forwarded_upstream(name, &connection) {
            push_header(out, name, value);
        }
    }
    push_header(out, REQUEST_ID, request_id);
    let _ = write!(out, "content-length: {body_len}\r\n\r\n");
}

/// Appends `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only, at most 18 of them.
pub fn parse_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parses an arm's response head from `buf`. For a final head, `keep` receives each
/// header the client may see (end-to-end, not framing, not the router's own).
///
/// Strict framing: a `Content-Length` must be digits (repeats must agree); a
/// `Transfer-Encoding` must be exactly `chunked` (and then any length is dropped);
/// `101` is refused; `204`/`304` have no body; neither header means the body ends
/// at close (and the connection is not reused).
///
/// `request_id` is the id the request carried: the answer's `X-Request-Id`, if any, is
/// compared with it ([`ResponseHead::echo`]).
pub fn parse_response(
    buf: &[u8],
    request_id: &[u8],
    mut keep: impl FnMut(&[u8], &[u8]),
) -> Result<Parsed, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut slots);
    let len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(e) => return Err(format!("invalid response head: {e}")),
    };
    let code = res.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| format!("invalid status {code}"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err("the arm switched protocols (101), which the router does not relay".into());
    }
    if status.is_informational() {
        return Ok(Parsed::Interim(len));
    }
    let mut connection = ConnectionTokens::default();
    let (mut length, mut chunked) = (None, false);
    let mut echo = Echo::Absent;
    for header in res.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(REQUEST_ID) {
            // Any differing copy makes it another exchange's answer.
            if echo != Echo::Differs {
                echo = if header.value.trim_ascii() == request_id {
                    Echo::Matches
                } else {
                    Echo::Differs
                };
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection.add(header.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            match (length, parse_length(header.value.trim_ascii())) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err("invalid Content-Length".into()),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if chunked || !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err("unsupported Transfer-Encoding".into());
            }
            chunked = true;
        }
    }
    let mut reusable = if res.version == Some(1) {
        !connection.close
    } else {
        connection.keep_alive && !connection.close
    };
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        reusable = false;
        Framing::UntilClose
    };
    for header in res.headers.iter() {
        if forwarded_downstream(header.name.as_bytes(), &connection) {
            keep(header.name.as_bytes(), header.value);
        }
    }
    Ok(Parsed::Final(
        len,
        ResponseHead {
            status,
            framing,
            reusable,
            echo,
        },
    ))
}

/// The router's headers on every answer to a client.
#[derive(Debug, Clone, Copy)]
pub struct Tags<'a> {
    /// `X-Variant`: the arm that served, if one did.
    pub variant: Option<&'a [u8]>,
    /// `X-Assigned-Variant`: the assigned arm, when another one served.
    pub assigned: Option<&'a [u8]>,
    /// `X-Request-Id`.
    pub request_id: &'a [u8],
    /// `Connection: close`.
    pub close: bool,
}

impl Tags<'_> {
    /// Appends the router's headers.
    pub fn write(&self, out: &mut Vec<u8>) {
        if let Some(variant) = self.variant {
            push_header(out, names::VARIANT.as_bytes(), variant);
        }
        if let Some(assigned) = self.assigned {
            push_header(out, names::ASSIGNED_VARIANT.as_bytes(), assigned);
        }
        push_header(out, REQUEST_ID, self.request_id);
        if self.close {
            out.extend_from_slice(b"connection: close\r\n");
        }
    }
}

/// Writes a status line.
pub fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
}

/// Ends a client response head whose status line and kept headers are in `out`:
/// the framing the router relays the body with, the router's headers, the blank line.
/// Chunked bodies are re-chunked by the router; close-delimited ones stay so.
pub fn end_client_head(out: &mut Vec<u8>, status: StatusCode, framing: Framing, tags: &Tags<'_>) {
    let bodiless = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    match framing {
        Framing::Length(_) if bodiless => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => {}
    }
    let close = tags.close || framing == Framing::UntilClose;
    Tags { close, ..*tags }.write(out);
    out.extend_from_slice(b"\r\n");
}

/// The router's own JSON error answer, complete, into `out` (`body` is the error in
/// the shape of the request's protocol, see `crate::policy::error_body`).
pub fn write_error(out: &mut Vec<u8>, err: &ApiError, body: &[u8], tags: &Tags<'_>) {
    let status = err.kind.status();
    write_status_line(out, status);
    let _ = write!(
        out,
        "content-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    tags.write(out);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// One step of decoding a chunked body from the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkStep {
    /// More bytes are needed.
    Partial,
    /// A chunk header of `line` bytes announcing `size` data bytes (followed by CRLF).
    Data {
        /// Bytes of the size line, CRLF included.
        line: usize,
        /// Data bytes of the chunk.
        size: usize,
    },
    /// The last chunk and its trailers (dropped): the body ends after `len` bytes.
    End {
        /// Bytes of the last-chunk line and trailer section.
        len: usize,
    },
}

/// Finds the end of one CRLF-terminated line in `buf`: the index after its LF. A bare
/// LF or a CR not followed by LF is invalid.
fn line_end(buf: &[u8], max: usize) -> Result<Option<usize>, String> {
    let Some(lf) = buf.iter().take(max + 1).position(|&b| b == b'\n') else {
        return if buf.len() > max {
            Err("chunked line too long".into())
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' || buf[..lf - 1].contains(&b'\r') {
        return Err("chunked line without CRLF".into());
    }
    Ok(Some(lf + 1))
}

/// Decodes the chunk header (or last chunk and trailers) at the front of `buf`:
/// a hex size (extensions after `;` ignored), CRLF. Anything else is invalid.
pub fn chunk_step(buf: &[u8]) -> Result<ChunkStep, String> {
    let Some(end) = line_end(buf, MAX_CHUNK_LINE)? else {
        return Ok(ChunkStep::Partial);
    };
    let line = &buf[..end - 2];
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err("invalid chunk size".into());
    }
    let size = digits
        .iter()
        .fold(0usize, |acc, &d| acc * 16 + hex_value(d));
    if size > 0 {
        return Ok(ChunkStep::Data { line: end, size });
    }
    // The last chunk: trailer lines (each `name: value`), then an empty line.
    let mut at = end;
    loop {
        let Some(next) = line_end(&buf[at..], MAX_TRAILERS)? else {
            return if buf.len() - end > MAX_TRAILERS {
                Err("trailer section too large".into())
            } else {
                Ok(ChunkStep::Partial)
            };
        };
        let trailer = &buf[at..at + next - 2];
        at += next;
        if trailer.is_empty() {
            return Ok(ChunkStep::End { len: at });
        }
        if at - end > MAX_TRAILERS || !is_field_line(trailer) {
            return Err("invalid trailer field".into());
        }
    }
}

fn hex_value(d: u8) -> usize {
    usize::from(match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    })
}

/// `token ":" value`, the shape of a header or trailer field line.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    colon > 0
        && line[..colon]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<(Parsed, Vec<String>), String> {
        let mut kept = Vec::new();
        let parsed = parse_response(text.as_bytes(), b"", |n, v| {
            kept.push(format!(
                "{}={}",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(v)
            ))
        })?;
        Ok((parsed, kept))
    }

    fn framing(text: &str) -> Result<(Framing, bool), String> {
        match head(text)?.0 {
            Parsed::Final(_, h) => Ok((h.framing, h.reusable)),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
            Ok((Framing::Length(5), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n"),
            Ok((Framing::Chunked, true)),
            "chunked wins over a length, which is dropped"
        );
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n"),
            Ok((Framing::Length(0), true))
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n"),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n"),
            Ok((Framing::Length(2), false)),
            "HTTP/1.0 closes unless it says keep-alive"
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n"),
            Ok((Framing::Length(2), false))
        );
        assert!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n").is_err()
        );
        assert!(framing("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n").is_err());
        assert!(framing("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n").is_err());
        assert!(framing("HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\n\r\n").is_err());
        assert!(matches!(
            head("HTTP/1.1 100 Continue\r\n\r\n").map(|p| p.0),
            Ok(Parsed::Interim(25))
        ));
    }

    #[test]
    fn kept_response_headers_exclude_hop_by_hop_framing_and_the_routers_own() {
        let Ok((_, kept)) = head(
            "HTTP/1.1 200 OK\r\nconnection: a1, a2, a3, a4, a5, a6, a7, a8, x-secret\r\n\
             x-secret: s\r\na8: 8\r\nproxy-authenticate: Basic\r\nx-assigned-variant: evil\r\n\
             x-variant: evil\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n",
        ) else {
            panic!("head did not parse");
        };
        assert_eq!(kept, vec!["content-type=application/json".to_string()]);
    }

    #[test]
    fn chunk_headers_are_strict() {
        assert_eq!(
            chunk_step(b"5\r\nhello"),
            Ok(ChunkStep::Data { line: 3, size: 5 })
        );
        assert_eq!(
            chunk_step(b"A;ext=1\r\n"),
            Ok(ChunkStep::Data { line: 9, size: 10 })
        );
        assert_eq!(chunk_step(b"5"), Ok(ChunkStep::Partial));
        assert_eq!(chunk_step(b"0\r\n\r\n"), Ok(ChunkStep::End { len: 5 }));
        assert_eq!(
            chunk_step(b"0\r\nx-t: 1\r\n\r\n"),
            Ok(ChunkStep::End { len: 13 })
        );
        assert_eq!(chunk_step(b"0\r\nx-t: 1\r\n"), Ok(ChunkStep::Partial));
        assert!(chunk_step(b"\r\n").is_err(), "an empty size line");
        assert!(chunk_step(b"5\n").is_err(), "a bare LF");
        assert!(
            chunk_step(b"5;a\nHTTP/1.1 200 OK\r\n").is_err(),
            "an extension with a bare LF"
        );
        assert!(chunk_step(b"zz\r\n").is_err());
        assert!(
            chunk_step(b"0\r\nHTTP/1.1 200 OK\r\n\r\n").is_err(),
            "trailers carrying a response"
        );
        assert!(chunk_step(&[b'1'; 2000]).is_err());
    }
}
