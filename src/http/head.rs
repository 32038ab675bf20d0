//! Request and response heads, parsed with httparse and kept as byte ranges
//! into an owned copy of the head, so the connection buffer stays free for
//! the body and the next request.

use std::mem::MaybeUninit;
use std::ops::Range;

/// Most header fields a head may carry (the configured limit is capped here).
pub const MAX_HEADERS_CAP: usize = 256;

/// Most header fields accepted in an upstream response.
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    #[default]
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the peer closes (responses only).
    UntilClose,
}

/// Why a head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadError {
    /// Malformed syntax or framing; the reason is safe to show the client.
    Malformed(&'static str),
    /// The head is larger than the limit.
    TooLarge,
    /// More header fields than the limit.
    TooManyHeaders,
    /// A transfer coding other than chunked.
    UnsupportedEncoding,
}

/// Header fields as ranges into the owning head's bytes.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    ranges: Vec<(Range<usize>, Range<usize>)>,
}

/// Where `part` lies inside `base`; empty (or foreign) slices map to `0..0`,
/// since a parser may hand back an empty slice that points anywhere.
fn offset(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    match start.checked_add(part.len()) {
        Some(end) if !part.is_empty() && end <= base.len() => start..end,
        _ => 0..0,
    }
}

impl Fields {
    /// Records where each parsed header lies inside `head`.
    fn locate(head: &[u8], headers: &[httparse::Header<'_>]) -> Fields {
        Fields {
            ranges: headers
                .iter()
                .map(|h| (offset(head, h.name.as_bytes()), offset(head, h.value)))
                .collect(),
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when there are no fields.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Iterates (name, value) pairs over `raw`, the owning head's bytes.
    pub fn iter<'a>(&'a self, raw: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.ranges
            .iter()
            .map(move |(n, v)| (&raw[n.clone()], &raw[v.clone()]))
    }

    /// First value of the named field (case-insensitive).
    pub fn get<'a>(&self, raw: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.ranges
            .iter()
            .find(|(n, _)| raw[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &raw[v.clone()])
    }
}

/// The length of a complete head (`None`: more bytes needed), enforcing the size limit.
fn head_length(
    status: httparse::Result<usize>,
    buffered: usize,
    max_bytes: usize,
    malformed: &'static str,
) -> Result<Option<usize>, HeadError> {
    match status {
        Ok(httparse::Status::Complete(n)) if n > max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered >= max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyHeaders),
        Err(_) => Err(HeadError::Malformed(malformed)),
    }
}

/// Facts about body framing and connection handling found in the fields.
#[derive(Debug, Default, Clone, Copy)]
struct FieldFacts {
    content_length: Option<u64>,
    conflicting_length: bool,
    transfer_encoding: bool,
    chunked_last: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    expect_continue: bool,
}

impl FieldFacts {
    /// HTTP/1.1 stays open unless told to close; HTTP/1.0 only when asked to stay.
    fn keep_alive(&self, version: u8) -> bool {
        if version == 1 {
            !self.conn_close
        } else {
            self.conn_keep_alive && !self.conn_close
        }
    }
}

fn contains_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn scan_fields(headers: &[httparse::Header<'_>]) -> FieldFacts {
    let mut f = FieldFacts::default();
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = std::str::from_utf8(h.value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match (parsed, f.content_length) {
                (None, _) => f.conflicting_length = true,
                (Some(v), Some(prev)) if v != prev => f.conflicting_length = true,
                (Some(v), _) => f.content_length = Some(v),
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.transfer_encoding = true;
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            f.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            f.conn_close |= contains_token(h.value, "close");
            f.conn_keep_alive |= contains_token(h.value, "keep-alive");
        } else if name.eq_ignore_ascii_case(b"expect") {
            f.expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }
    f
}

/// A parsed request head.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    raw: Vec<u8>,
    method: Range<usize>,
    target: Range<usize>,
    /// Length of the path part of the target (before `?`).
    path_len: usize,
    /// Minor HTTP version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    /// Header fields.
    pub fields: Fields,
    /// Body framing.
    pub framing: Framing,
    /// The client asked for the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// The client sent `Expect: 100-continue`.
    pub expect_continue: bool,
}

/// Outcome of trying to parse a head from buffered bytes.
pub enum Parsed<T> {
    /// A head, and how many bytes it took.
    Complete(T, usize),
    /// More bytes are needed.
    Partial,
}

impl RequestHead {
    /// Parses a request head from `buf`, enforcing the size and count limits.
    pub fn parse(
        buf: &[u8],
        max_bytes: usize,
        max_headers: usize,
    ) -> Result<Parsed<Self>, HeadError> {
        let mut storage =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CAP];
        let limit = max_headers.min(MAX_HEADERS_CAP);
        let mut req = httparse::Request::new(&mut []);
        let status = req.parse_with_uninit_headers(buf, &mut storage[..limit]);
        let Some(n) = head_length(status, buf.len(), max_bytes, "malformed request head")? else {
            return Ok(Parsed::Partial);
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Malformed("malformed request line"));
        };
        let facts = scan_fields(req.headers);
        let framing = if facts.transfer_encoding {
            if facts.content_length.is_some() || facts.conflicting_length {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding are present",
                ));
            }
            if version == 0 {
                return Err(HeadError::Malformed(
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            if !facts.chunked_last {
                return Err(HeadError::UnsupportedEncoding);
            }
            Framing::Chunked
        } else if facts.conflicting_length {
            return Err(HeadError::Malformed(
                "invalid or conflicting Content-Length",
            ));
        } else {
            match facts.content_length {
                Some(0) | None => Framing::None,
                Some(n) => Framing::Length(n),
            }
        };
        let head = &buf[..n];
        let fields = Fields::locate(head, req.headers);
        let keep_alive = facts.keep_alive(version);
        Ok(Parsed::Complete(
            RequestHead {
                method: offset(head, method.as_bytes()),
                target: offset(head, path.as_bytes()),
                path_len: path.find('?').unwrap_or(path.len()),
                raw: head.to_vec(),
                version,
                fields,
                framing,
                keep_alive,
                expect_continue: facts.expect_continue && version == 1,
            },
            n,
        ))
    }

    /// The head's bytes, for [`Fields::iter`].
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// The method.
    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or("")
    }

    /// The request target as sent (path and query).
    pub fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or("")
    }

    /// The path, without the query.
    pub fn path(&self) -> &str {
        let t = self.target();
        t.get(..self.path_len).unwrap_or(t)
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().get(self.path_len + 1..)
    }

    /// First value of a header field.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(&self.raw, name)
    }

    /// Iterates header fields.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter(&self.raw)
    }

    /// True for methods that are safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// A parsed response head.
#[derive(Debug, Default, Clone)]
pub struct ResponseHead {
    raw: Vec<u8>,
    reason: Range<usize>,
    /// Status code.
    pub status: u16,
    /// Minor HTTP version of the response.
    pub version: u8,
    /// Header fields.
    pub fields: Fields,
    /// Body framing (already accounting for HEAD requests and 1xx/204/304).
    pub framing: Framing,
    /// The peer will keep the connection open.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// Parses a response head to a request made with `method`.
    pub fn parse(
        buf: &[u8],
        max_bytes: usize,
        head_request: bool,
    ) -> Result<Parsed<Self>, HeadError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut storage);
        let status = resp.parse(buf);
        let Some(n) = head_length(status, buf.len(), max_bytes, "malformed response head")? else {
            return Ok(Parsed::Partial);
        };
        let (Some(status), Some(version)) = (resp.code, resp.version) else {
            return Err(HeadError::Malformed("malformed status line"));
        };
        let facts = scan_fields(resp.headers);
        let bodyless =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let framing = if bodyless {
            Framing::None
        } else if facts.transfer_encoding {
            if facts.chunked_last {
                Framing::Chunked
            } else {
                Framing::UntilClose
            }
        } else if facts.conflicting_length {
            return Err(HeadError::Malformed(
                "invalid or conflicting Content-Length",
            ));
        } else {
            match facts.content_length {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        let head = &buf[..n];
        let fields = Fields::locate(head, resp.headers);
        let keep_alive = framing != Framing::UntilClose && facts.keep_alive(version);
        Ok(Parsed::Complete(
            ResponseHead {
                reason: offset(head, resp.reason.unwrap_or("").as_bytes()),
                raw: head.to_vec(),
                status,
                version,
                fields,
                framing,
                keep_alive,
            },
            n,
        ))
    }

    /// The reason phrase.
    pub fn reason(&self) -> &[u8] {
        self.raw.get(self.reason.clone()).unwrap_or(b"")
    }

    /// Iterates header fields.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter(&self.raw)
    }

    /// First value of a header field.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(&self.raw, name)
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) that a proxy never forwards.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-connection",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// The field names listed in a message's `Connection` fields, gathered once
/// so that checking each forwarded field is not another scan of the head
/// (no allocation when there is no `Connection` field).
pub struct ConnectionNames<'a> {
    values: Vec<&'a [u8]>,
}

impl<'a> ConnectionNames<'a> {
    /// Collects the `Connection` values of `fields`.
    pub fn of(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        ConnectionNames {
            values: fields
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                .map(|(_, v)| v)
                .collect(),
        }
    }

    /// True when `name` is listed.
    pub fn contains(&self, name: &[u8]) -> bool {
        self.values.iter().any(|v| {
            v.split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(s: &str) -> Result<RequestHead, HeadError> {
        match RequestHead::parse(s.as_bytes(), 8192, 100)? {
            Parsed::Complete(h, _) => Ok(h),
            Parsed::Partial => Err(HeadError::Malformed("partial")),
        }
    }

    #[test]
    fn parses_request() {
        let h = req("GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n").unwrap();
        assert_eq!(h.method(), "GET");
        assert_eq!(h.path(), "/a/b");
        assert_eq!(h.query(), Some("x=1"));
        assert_eq!(h.header("x-a"), Some(&b"1"[..]));
        assert!(h.keep_alive);
        assert_eq!(h.framing, Framing::None);
    }

    #[test]
    fn framing_rules() {
        let te_cl = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(req(te_cl), Err(HeadError::Malformed(_))));
        let two_cl = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(req(two_cl), Err(HeadError::Malformed(_))));
        let same_cl = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(req(same_cl).unwrap().framing, Framing::Length(3));
        let bad_cl = "POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n";
        assert!(matches!(req(bad_cl), Err(HeadError::Malformed(_))));
        let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(req(gzip).unwrap_err(), HeadError::UnsupportedEncoding);
        let chunked = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(req(chunked).unwrap().framing, Framing::Chunked);
        let http10 = "GET / HTTP/1.0\r\n\r\n";
        assert!(!req(http10).unwrap().keep_alive);
    }

    #[test]
    fn limits() {
        let many: String = (0..10).map(|i| format!("X-{i}: v\r\n")).collect();
        let s = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert!(matches!(
            RequestHead::parse(s.as_bytes(), 8192, 5),
            Err(HeadError::TooManyHeaders)
        ));
        assert!(matches!(
            RequestHead::parse(s.as_bytes(), 20, 100),
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            RequestHead::parse(b"GET / HTTP/1.1\r\nHost", 8192, 100),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn response_framing() {
        let parse = |s: &str, head: bool| match ResponseHead::parse(s.as_bytes(), 8192, head) {
            Ok(Parsed::Complete(h, _)) => h,
            _ => panic!("parse failed"),
        };
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false).framing,
            Framing::Length(5)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true).framing,
            Framing::None
        );
        assert_eq!(
            parse("HTTP/1.1 304 NM\r\nContent-Length: 5\r\n\r\n", false).framing,
            Framing::None
        );
        let close = parse("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!(close.framing, Framing::UntilClose);
        assert!(!close.keep_alive);
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            )
            .framing,
            Framing::Chunked
        );
    }

    #[test]
    fn empty_values_and_obs_fold() {
        let h = req("GET / HTTP/1.1\r\nX-Empty:\r\nX-B: b\r\n\r\n").unwrap();
        assert_eq!(h.header("x-empty"), Some(&b""[..]));
        assert_eq!(h.header("x-b"), Some(&b"b"[..]));
        let folded = "GET / HTTP/1.1\r\nX-A: a\r\n  folded\r\n\r\n";
        assert!(matches!(req(folded), Err(HeadError::Malformed(_))));
        let resp = b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
        match ResponseHead::parse(resp, 1024, false) {
            Ok(Parsed::Complete(h, _)) => assert_eq!(h.reason(), b""),
            _ => panic!("parse failed"),
        }
    }

    #[test]
    fn hop_by_hop() {
        assert!(is_hop_by_hop(b"Connection"));
        assert!(is_hop_by_hop(b"Proxy-Authorization"));
        assert!(!is_hop_by_hop(b"X-Proxy"));
        let f: Vec<(&[u8], &[u8])> = vec![(b"Connection", b"close, X-Secret")];
        assert!(ConnectionNames::of(f.into_iter()).contains(b"x-secret"));
    }
}
