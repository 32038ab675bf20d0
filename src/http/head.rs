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
///
/// A request's repeated fields are also kept joined (see [`read_rules`]):
/// `joined` maps the index of a field's first line to all its lines'
/// values combined, and lookups return that combination.
#[derive(Debug, Default, Clone)]
pub struct Fields {
    ranges: Vec<(Range<usize>, Range<usize>)>,
    joined: Vec<(usize, Vec<u8>)>,
    /// Index of the `Host` line (a request's; found while joining). As a
    /// `u32`, with the flags below in what would be padding: a head is
    /// moved whole, and a larger one is moved by a `memcpy` call.
    host: Option<u32>,
    /// Read while parsing: no `Connection` field lists a name other than
    /// `close` and `keep-alive` (when false, [`ConnectionNames::of`] collects
    /// the values).
    connection_plain: bool,
    /// A `Connection` field lists `close`.
    connection_close: bool,
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
    /// The names the `Connection` fields list, without another scan of
    /// the fields when parsing found only `close` and `keep-alive`.
    pub fn connection_names<'a>(&'a self, raw: &'a [u8]) -> ConnectionNames<'a> {
        match self.connection_plain {
            true => ConnectionNames {
                values: Vec::new(),
                close: self.connection_close,
            },
            false => ConnectionNames::of(self.iter(raw)),
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

    /// Iterates (name, value) lines over `raw`, the owning head's bytes, as sent.
    pub fn iter<'a>(&'a self, raw: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        self.ranges.iter().map(move |(n, v)| {
            (
                raw.get(n.clone()).unwrap_or_default(),
                raw.get(v.clone()).unwrap_or_default(),
            )
        })
    }

    /// The value of the named field (case-insensitive): its only line, or,
    /// for a repeated request field, all its lines joined in order.
    pub fn get<'a>(&'a self, raw: &'a [u8], name: &str) -> Option<&'a [u8]> {
        let (i, value) = self
            .iter(raw)
            .enumerate()
            .find(|(_, (n, _))| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(i, (_, v))| (i, v))?;
        match self.joined.iter().find(|(first, _)| *first == i) {
            Some((_, all)) => Some(all),
            None => Some(value),
        }
    }

    /// True when the named field was sent on more than one line.
    pub fn is_repeated(&self, raw: &[u8], name: &str) -> bool {
        !self.joined.is_empty()
            && self
                .iter(raw)
                .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
                .nth(1)
                .is_some()
    }

    /// Where the `i`th line's value lies in the head.
    fn value_range(&self, i: usize) -> Option<Range<usize>> {
        self.ranges.get(i).map(|(_, v)| v.clone())
    }

    /// The `i`th line's name and value.
    fn line<'a>(&self, raw: &'a [u8], i: usize) -> (&'a [u8], &'a [u8]) {
        self.ranges.get(i).map_or((&[][..], &[][..]), |(n, v)| {
            (
                raw.get(n.clone()).unwrap_or_default(),
                raw.get(v.clone()).unwrap_or_default(),
            )
        })
    }

    /// Applies the reading rules to a request's fields once [`read_fields`]
    /// saw a name repeated: a repeated singleton is refused, the
    /// lines of any other repeated field are joined in order.
    fn join_repeated(&mut self, raw: &[u8]) -> Result<(), HeadError> {
        let mut seen = 0u64;
        for i in 0..self.ranges.len() {
            let (name, value) = self.line(raw, i);
            let bit = name_bit(name);
            if seen & bit == 0 {
                seen |= bit;
                continue;
            }
            let Some(first) = (0..i).find(|&j| self.line(raw, j).0.eq_ignore_ascii_case(name))
            else {
                continue;
            };
            if let Some(why) = singleton(name) {
                return Err(HeadError::Malformed(why));
            }
            let sep: &[u8] = if name.eq_ignore_ascii_case(b"cookie") {
                b"; "
            } else {
                b", "
            };
            let slot = match self.joined.iter().position(|(f, _)| *f == first) {
                Some(k) => k,
                None => {
                    self.joined.push((first, self.line(raw, first).1.to_vec()));
                    self.joined.len() - 1
                }
            };
            if let Some((_, all)) = self.joined.get_mut(slot) {
                all.extend_from_slice(sep);
                all.extend_from_slice(value);
            }
        }
        Ok(())
    }
}

/// One bit of a 64-bit filter for a field name (case-insensitive): from its
/// length and its middle and last bytes, which tell apart the common names
/// that share a length (`Accept-Encoding`, `Accept-Language`).
fn name_bit(name: &[u8]) -> u64 {
    let mid = name.get(name.len() / 2).map_or(0, |b| b | 0x20) as usize;
    let last = name.last().map_or(0, |b| b | 0x20) as usize;
    1u64 << ((name.len().wrapping_mul(13) ^ mid.wrapping_mul(5) ^ last) & 63)
}

/// The request fields the gateway acts on that may appear only once, with
/// the error for a repeat. Configured names (API-key header, rate-limit key
/// headers, route header conditions) are checked by the pipeline.
pub const SINGLETONS: [(&str, &str); 5] = [
    ("host", "Host sent more than once"),
    ("content-length", "Content-Length sent more than once"),
    ("authorization", "Authorization sent more than once"),
    ("x-request-id", "X-Request-Id sent more than once"),
    ("traceparent", "traceparent sent more than once"),
];

fn singleton(name: &[u8]) -> Option<&'static str> {
    SINGLETONS
        .iter()
        .find(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()))
        .map(|(_, why)| *why)
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
    /// `chunked` appeared among the transfer codings, and more than once.
    chunked_seen: bool,
    chunked_twice: bool,
    /// A transfer coding other than `chunked` was listed.
    other_coding: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    /// A `Connection` field lists another name.
    conn_other: bool,
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

/// A `Content-Length` value: one or more ASCII digits that fit in a `u64`.
fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// One pass over parsed fields: where each lies inside `head`, the facts
/// about framing and the connection, the first `Host` line, and whether a
/// name is repeated (a 64-bit filter of the names seen; only a hit compares
/// names).
fn read_fields(head: &[u8], headers: &[httparse::Header<'_>]) -> (Fields, FieldFacts, bool) {
    let mut f = FieldFacts::default();
    let ranges = headers
        .iter()
        .map(|h| (offset(head, h.name.as_bytes()), offset(head, h.value)))
        .collect();
    let mut host = None;
    let mut seen = 0u64;
    let mut repeated = false;
    for (i, h) in headers.iter().enumerate() {
        let name = h.name.as_bytes();
        let bit = name_bit(name);
        if seen & bit != 0 && !repeated {
            repeated = headers
                .get(..i)
                .unwrap_or_default()
                .iter()
                .any(|p| p.name.eq_ignore_ascii_case(h.name));
        }
        seen |= bit;
        match name.len() {
            4 if host.is_none() && name.eq_ignore_ascii_case(b"host") => {
                host = u32::try_from(i).ok()
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                f.expect_continue |= h.value.eq_ignore_ascii_case(b"100-continue");
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.conn_close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.conn_keep_alive = true;
                    } else if !token.is_empty() {
                        f.conn_other = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let parsed = parse_decimal(h.value);
                match (parsed, f.content_length) {
                    (None, _) => f.conflicting_length = true,
                    (Some(v), Some(prev)) if v != prev => f.conflicting_length = true,
                    (Some(v), _) => f.content_length = Some(v),
                }
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                f.transfer_encoding = true;
                let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
                let chunked = h
                    .value
                    .split(|&b| b == b',')
                    .filter(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
                    .count();
                f.other_coding |= h
                    .value
                    .split(|&b| b == b',')
                    .any(|t| !t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                f.chunked_twice |= chunked > 1 || (chunked > 0 && f.chunked_seen);
                f.chunked_seen |= chunked > 0;
                f.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            }
            _ => {}
        }
    }
    let fields = Fields {
        ranges,
        joined: Vec::new(),
        host,
        connection_plain: !f.conn_other,
        connection_close: f.conn_close,
    };
    (fields, f, repeated)
}

/// `method` as a constant when it is one of the methods RFC 9110 defines.
fn known_method(method: &str) -> Option<&'static str> {
    Some(match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => return None,
    })
}

/// A parsed request head.
#[derive(Debug, Default, Clone)]
pub struct RequestHead {
    raw: RawHead,
    method: Range<usize>,
    /// The method when it is one of RFC 9110's, without re-reading `raw`.
    known_method: Option<&'static str>,
    /// The origin-form part of the target (path and query); for an
    /// absolute-form target, what follows the authority.
    target: Range<usize>,
    /// Length of the path part of `target` (before `?`).
    path_len: usize,
    /// The authority of an absolute-form target, which replaces `Host`.
    authority: Option<Range<usize>>,
    /// The normalised path, when normalising changed it.
    normalized: Option<String>,
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

/// A request head's own copy of its bytes: text when they are UTF-8 (nearly
/// always; they are ASCII but for rare field values), validated once here
/// so that the method, target, path, query and host are read as `&str`
/// without validating them again each time a stage reads them.
#[derive(Debug, Clone)]
enum RawHead {
    Text(String),
    Bytes(Vec<u8>),
}

impl Default for RawHead {
    fn default() -> Self {
        RawHead::Text(String::new())
    }
}

impl RawHead {
    fn new(head: &[u8]) -> RawHead {
        match String::from_utf8(head.to_vec()) {
            Ok(text) => RawHead::Text(text),
            Err(e) => RawHead::Bytes(e.into_bytes()),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            RawHead::Text(t) => t.as_bytes(),
            RawHead::Bytes(b) => b,
        }
    }

    /// The text at `r`, if it is UTF-8 (and `r` lies on char boundaries).
    fn str(&self, r: Range<usize>) -> Option<&str> {
        match self {
            RawHead::Text(t) => t.get(r),
            RawHead::Bytes(b) => b.get(r).and_then(|b| std::str::from_utf8(b).ok()),
        }
    }
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
        let headers = storage.get_mut(..limit).unwrap_or_default();
        let status = req.parse_with_uninit_headers(buf, headers);
        let Some(n) = head_length(status, buf.len(), max_bytes, "malformed request head")? else {
            return Ok(Parsed::Partial);
        };
        let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
            return Err(HeadError::Malformed("malformed request line"));
        };
        let head = buf.get(..n).unwrap_or(buf);
        let (mut fields, facts, repeated) = read_fields(head, req.headers);
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
            if facts.chunked_twice {
                return Err(HeadError::Malformed("chunked applied more than once"));
            }
            // Only `chunked` alone: the body is re-framed for the upstream, so
            // another coding would reach it unlabelled.
            if !facts.chunked_last || facts.other_coding {
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
        if repeated {
            fields.join_repeated(head)?;
        }
        let target = offset(head, path.as_bytes());
        let (authority, target) = split_absolute_form(head, target)?;
        let origin = head.get(target.clone()).unwrap_or_default();
        let path_len = path_length(origin)?;
        // HTTP/1.1 needs a Host line even with an absolute-form target,
        // whose authority then wins (RFC 9112 §3.2, §3.2.2).
        let host_line = fields.host.map(|i| fields.line(head, i as usize).1);
        if version == 1 && host_line.is_none() {
            return Err(HeadError::Malformed("missing Host header"));
        }
        let host = match &authority {
            Some(a) => head.get(a.clone()),
            None => host_line,
        };
        if host.is_some_and(|h| !valid_host(h)) {
            return Err(HeadError::Malformed("invalid Host header"));
        }
        let keep_alive = facts.keep_alive(version);
        Ok(Parsed::Complete(
            RequestHead {
                method: offset(head, method.as_bytes()),
                known_method: known_method(method),
                target,
                path_len,
                authority,
                normalized: None,
                raw: RawHead::new(head),
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
        self.raw.bytes()
    }

    /// The method.
    pub fn method(&self) -> &str {
        match self.known_method {
            Some(m) => m,
            None => self.raw_str(self.method.clone()),
        }
    }

    fn raw_str(&self, r: Range<usize>) -> &str {
        self.raw.str(r).unwrap_or("")
    }

    /// The request target in origin form (path and query) as sent; for an
    /// absolute-form target, the part after the authority.
    pub fn target(&self) -> &str {
        self.raw_str(self.target.clone())
    }

    /// The path, without the query: normalised once [`RequestHead::set_path`]
    /// has run; `/` when an absolute-form target had no path.
    pub fn path(&self) -> &str {
        if let Some(p) = &self.normalized {
            return p;
        }
        let start = self.target.start;
        match self.raw_str(start..start + self.path_len) {
            "" if self.path_len == 0 => "/",
            p => p,
        }
    }

    /// [`RequestHead::target`] when it is what [`RequestHead::path`] and
    /// [`RequestHead::query`] spell: the path was not normalised and is
    /// not empty (an absolute-form target without one reads as `/`).
    pub fn origin_target(&self) -> Option<&str> {
        (self.normalized.is_none() && self.path_len > 0).then(|| self.target())
    }

    /// Replaces the path with its normal form (the query is kept).
    pub fn set_path(&mut self, normalized: String) {
        self.normalized = Some(normalized);
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target().get(self.path_len + 1..)
    }

    /// The host the request is for: the authority of an absolute-form
    /// target, else the `Host` field.
    pub fn host(&self) -> Option<&[u8]> {
        self.host_range().and_then(|r| self.raw.bytes().get(r))
    }

    /// [`RequestHead::host`] as text (`None` also when it is not UTF-8).
    pub fn host_str(&self) -> Option<&str> {
        self.host_range().and_then(|r| self.raw.str(r))
    }

    fn host_range(&self) -> Option<Range<usize>> {
        match &self.authority {
            Some(a) => Some(a.clone()),
            None => self
                .fields
                .host
                .and_then(|i| self.fields.value_range(i as usize)),
        }
    }

    /// The value of a header field, as every stage reads it: its only line,
    /// or all its lines joined in order (see [`Fields::get`]).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(self.raw.bytes(), name)
    }

    /// True when the named field came on more than one line.
    pub fn is_repeated(&self, name: &str) -> bool {
        self.fields.is_repeated(self.raw.bytes(), name)
    }

    /// Iterates header lines as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter(self.raw.bytes())
    }

    /// The names its `Connection` fields list ([`Fields::connection_names`]).
    pub fn connection_names(&self) -> ConnectionNames<'_> {
        self.fields.connection_names(self.raw.bytes())
    }

    /// True for methods that are safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self.method(),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

/// Splits an absolute-form target (`http://authority/path?query`) into its
/// authority and origin-form part; an origin-form target is returned as is.
fn split_absolute_form(
    head: &[u8],
    target: Range<usize>,
) -> Result<(Option<Range<usize>>, Range<usize>), HeadError> {
    let t = head.get(target.clone()).unwrap_or_default();
    if t.first() == Some(&b'/') {
        return Ok((None, target));
    }
    let Some(colon) = t.iter().position(|&b| b == b':') else {
        return Err(HeadError::Malformed(
            "request target must be an absolute path",
        ));
    };
    let (scheme, rest) = t.split_at(colon);
    if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https")) {
        return Err(HeadError::Malformed(
            "request target must be an absolute path",
        ));
    }
    let Some(after) = rest.strip_prefix(b"://") else {
        return Err(HeadError::Malformed("malformed absolute-form target"));
    };
    let auth_len = after
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(after.len());
    let auth_start = target.start + colon + 3;
    let authority = auth_start..auth_start + auth_len;
    if auth_len == 0 || after.get(..auth_len).is_some_and(|a| a.contains(&b'@')) {
        return Err(HeadError::Malformed("malformed absolute-form target"));
    }
    Ok((Some(authority), auth_start + auth_len..target.end))
}

/// Where the path of an origin-form target ends (its `?`), refusing a
/// fragment: it never belongs in a request (RFC 9112 §3.2), and an upstream
/// that parses one off would serve another path than the one routed.
fn path_length(origin: &[u8]) -> Result<usize, HeadError> {
    const FRAGMENT: HeadError = HeadError::Malformed("fragment (#) in the request target");
    match find_query_or_fragment(origin) {
        None => Ok(origin.len()),
        Some(i) if origin.get(i) == Some(&b'#') => Err(FRAGMENT),
        Some(i) if origin.get(i..).is_some_and(|q| q.contains(&b'#')) => Err(FRAGMENT),
        Some(i) => Ok(i),
    }
}

/// The first `?` or `#`, eight bytes at a time (a zero-byte test on the
/// bytes XORed with each needle).
fn find_query_or_fragment(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = s.chunks_exact(8);
    let mut at = 0;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        if has_zero(x ^ (ONES * u64::from(b'?'))) | has_zero(x ^ (ONES * u64::from(b'#'))) != 0 {
            break;
        }
        at += 8;
    }
    s.get(at..)?
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .map(|i| at + i)
}

/// `uri-host [":" port]` (RFC 9110 §7.2): an IP literal in brackets or a
/// registered name / IPv4 address, then an optional decimal port. Empty is
/// allowed (a target without an authority).
fn valid_host(h: &[u8]) -> bool {
    // One branch-free pass ORs each byte's class: in the common case every
    // byte is a reg-name byte and nothing else is looked at.
    let class = h.iter().fold(0u8, |acc, &b| acc | byte_class(b));
    if class & !REG_NAME == 0 {
        return true;
    }
    let (host, port) = if h.first() == Some(&b'[') {
        let Some(close) = h.iter().position(|&b| b == b']') else {
            return false;
        };
        let (lit, rest) = h.split_at(close + 1);
        let inner = lit.get(1..close).unwrap_or_default();
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match rest {
            [] => return true,
            [b':', port @ ..] => (&b"x"[..], port),
            _ => return false,
        }
    } else if class == REG_NAME | COLON {
        match h.iter().rposition(|&b| b == b':') {
            Some(i) => (
                h.get(..i).unwrap_or_default(),
                h.get(i + 1..).unwrap_or_default(),
            ),
            None => return false,
        }
    } else {
        return false;
    };
    host.iter().all(|&b| byte_class(b) == REG_NAME)
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && (port.is_empty() || !host.is_empty())
}

/// Byte classes of [`valid_host`], as bits (the empty host has none).
const REG_NAME: u8 = 1;
const COLON: u8 = 2;
const OTHER: u8 = 4;

/// A byte's class in a Host value: a byte of a registered name or IPv4
/// address (unreserved, sub-delims, `%`), the port's colon, or other.
fn byte_class(b: u8) -> u8 {
    // Built at compile time; the indices are below 256 by construction. A
    // `static`, so that a lookup reads it in place instead of copying it.
    #[allow(clippy::indexing_slicing)]
    static TABLE: [u8; 256] = {
        let mut t = [OTHER; 256];
        let extra = b"-._~!$&'()*+,;=%";
        let mut i = 0;
        while i < 256 {
            if (i as u8).is_ascii_alphanumeric() {
                t[i] = REG_NAME;
            }
            i += 1;
        }
        let mut j = 0;
        while j < extra.len() {
            t[extra[j] as usize] = REG_NAME;
            j += 1;
        }
        t[b':' as usize] = COLON;
        t
    };
    TABLE.get(b as usize).copied().unwrap_or(OTHER)
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
        // Uninitialised, like a request's: writing 100 empty fields first
        // cost more than parsing a small head.
        let mut storage =
            [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut storage,
        );
        let Some(n) = head_length(status, buf.len(), max_bytes, "malformed response head")? else {
            return Ok(Parsed::Partial);
        };
        let (Some(status), Some(version)) = (resp.code, resp.version) else {
            return Err(HeadError::Malformed("malformed status line"));
        };
        if !(100..=599).contains(&status) {
            return Err(HeadError::Malformed("status code outside 100-599"));
        }
        let head = buf.get(..n).unwrap_or(buf);
        let (fields, facts, _) = read_fields(head, resp.headers);
        let bodyless =
            head_request || (100..200).contains(&status) || status == 204 || status == 304;
        let framing = if bodyless {
            Framing::None
        } else if facts.transfer_encoding {
            // Only `chunked` alone: Transfer-Encoding is hop-by-hop and the
            // body is re-framed for the client, so another coding would
            // reach it unlabelled.
            if facts.chunked_twice || facts.other_coding {
                return Err(HeadError::UnsupportedEncoding);
            }
            Framing::Chunked
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

    /// The names its `Connection` fields list ([`Fields::connection_names`]).
    pub fn connection_names(&self) -> ConnectionNames<'_> {
        self.fields.connection_names(&self.raw)
    }

    /// First value of a header field.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields.get(&self.raw, name)
    }
}

/// Hop-by-hop fields (RFC 9110 §7.6.1) that a proxy never forwards.
/// `Proxy-Connection` and every other `Proxy-*` field included. By length
/// first: most names match none of them, and are told so by one compare.
#[inline]
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |h: &[u8]| name.eq_ignore_ascii_case(h);
    let listed = match name.len() {
        2 => is(b"te"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        17 => is(b"transfer-encoding"),
        _ => false,
    };
    listed
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"proxy-"))
}

/// Fields never passed on in a trailer section (RFC 9110 §6.5.1): framing,
/// routing, authentication, request modifiers, response control and content
/// metadata, which a recipient could otherwise mistake for header fields.
const FORBIDDEN_TRAILERS: [&str; 24] = [
    "age",
    "authorization",
    "cache-control",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "expect",
    "expires",
    "host",
    "keep-alive",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "retry-after",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "vary",
];

/// Appends the lines of a raw trailer section (`name: value\r\n` each) that
/// may be passed on to `out`: well-formed fields that are not forbidden
/// ([`FORBIDDEN_TRAILERS`], `www-authenticate`, hop-by-hop and `proxy-*`).
pub fn trailer_section(raw: &[u8], out: &mut Vec<u8>) {
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default().trim_ascii();
        let token = !name.is_empty() && name.iter().all(|&b| crate::config::is_token_byte(b));
        let forbidden = FORBIDDEN_TRAILERS
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
            || name.eq_ignore_ascii_case(b"www-authenticate")
            || is_hop_by_hop(name);
        let clean = value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
        if token && !forbidden && clean {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// True when a request's `TE` field accepts trailers.
pub fn accepts_trailers(te: Option<&[u8]>) -> bool {
    te.is_some_and(|v| contains_token(v, "trailers"))
}

/// The field names listed in a message's `Connection` fields, gathered once
/// so that checking each forwarded field is not another scan of the head.
///
/// Nearly every `Connection` field says only `keep-alive` or `close`, and
/// parsing already tells ([`Fields::connection_names`]): then no value is
/// stored (no allocation) and `close` is a flag; a field named
/// `keep-alive` is hop-by-hop and dropped anyway.
pub struct ConnectionNames<'a> {
    /// The `Connection` values, when one names more than `keep-alive` and
    /// `close`.
    values: Vec<&'a [u8]>,
    /// `close` is listed (set when `values` is not kept).
    close: bool,
}

impl<'a> ConnectionNames<'a> {
    /// Collects the `Connection` values of `fields`.
    pub fn of(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        ConnectionNames {
            values: fields
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                .map(|(_, v)| v)
                .collect(),
            close: false,
        }
    }

    /// True when `name` is listed. For `keep-alive`, which every caller
    /// drops as hop-by-hop before asking, the answer is not exact. Asked
    /// once per forwarded field, and nearly always of an empty list: that
    /// answer is inlined, the search is not.
    #[inline(always)]
    pub fn contains(&self, name: &[u8]) -> bool {
        (self.close || !self.values.is_empty()) && self.lists(name)
    }

    #[inline(never)]
    fn lists(&self, name: &[u8]) -> bool {
        (self.close && name.eq_ignore_ascii_case(b"close"))
            || self.values.iter().any(|v| {
                v.split(|&b| b == b',').any(|t| {
                    let t = t.trim_ascii();
                    !t.is_empty() && t.eq_ignore_ascii_case(name)
                })
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
    fn a_head_that_is_not_utf8_still_reads_its_target_and_host() {
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: h:8\r\nX-Name: caf\xe9\r\n\r\n";
        let Ok(Parsed::Complete(h, _)) = RequestHead::parse(raw, 8192, 100) else {
            panic!("obs-text in a field value is accepted");
        };
        assert!(matches!(h.raw, RawHead::Bytes(_)));
        assert_eq!(
            (h.method(), h.path(), h.query()),
            ("GET", "/a/b", Some("x=1"))
        );
        assert_eq!((h.target(), h.host_str()), ("/a/b?x=1", Some("h:8")));
        assert_eq!(h.header("x-name"), Some(&b"caf\xe9"[..]));
        let text = req("GET /a/b?x=1 HTTP/1.1\r\nHost: h:8\r\n\r\n").unwrap();
        assert!(matches!(text.raw, RawHead::Text(_)));
        assert_eq!((text.path(), text.host_str()), ("/a/b", Some("h:8")));
        let root = req("GET http://h:8 HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((root.path(), root.host_str()), ("/", Some("h:8")));
    }

    #[test]
    fn content_length_is_digits_that_fit_in_u64() {
        let framing = |v: &str| {
            req(&format!(
                "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: {v}\r\n\r\n"
            ))
            .map(|h| h.framing)
        };
        assert_eq!(framing("007"), Ok(Framing::Length(7)));
        assert_eq!(
            framing("18446744073709551615"),
            Ok(Framing::Length(u64::MAX))
        );
        for bad in [
            "",
            "18446744073709551616",
            "99999999999999999999999",
            "1 2",
            "0x1",
            "-1",
        ] {
            assert!(
                matches!(framing(bad), Err(HeadError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn any_method_reads_back_as_sent() {
        for m in ["PATCH", "OPTIONS", "PURGE", "get", "M-SEARCH"] {
            let h = req(&format!("{m} / HTTP/1.1\r\nHost: h\r\n\r\n")).unwrap();
            assert_eq!(h.method(), m);
        }
    }

    #[test]
    fn framing_rules() {
        let te_cl =
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(req(te_cl), Err(HeadError::Malformed(_))));
        let two_cl = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(req(two_cl), Err(HeadError::Malformed(_))));
        let same_cl =
            "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert!(matches!(req(same_cl), Err(HeadError::Malformed(_))));
        let bad_cl = "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\n";
        assert!(matches!(req(bad_cl), Err(HeadError::Malformed(_))));
        let gzip = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n";
        assert_eq!(req(gzip).unwrap_err(), HeadError::UnsupportedEncoding);
        for te in [
            "gzip, chunked",
            "identity,chunked",
            "gzip\r\nTransfer-Encoding: chunked",
        ] {
            let r = req(&format!(
                "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n"
            ));
            assert_eq!(r.unwrap_err(), HeadError::UnsupportedEncoding, "{te}");
        }
        for twice in [
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: chunked\r\nX-A: 1\r\nTransfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, gzip\r\nTransfer-Encoding: chunked",
        ] {
            let r = req(&format!("POST / HTTP/1.1\r\nHost: h\r\n{twice}\r\n\r\n"));
            assert!(matches!(r, Err(HeadError::Malformed(_))), "{twice}");
        }
        assert!(req("GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n").is_err());
        let chunked = "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
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
        for odd in [
            "HTTP/1.1 000 OK\r\n\r\n",
            "HTTP/1.1 600 X\r\n\r\n",
            "HTTP/1.1 099 X\r\n\r\n",
        ] {
            assert!(
                ResponseHead::parse(odd.as_bytes(), 8192, false).is_err(),
                "{odd}"
            );
        }
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
        let h = req("GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-B: b\r\n\r\n").unwrap();
        assert_eq!(h.header("x-empty"), Some(&b""[..]));
        assert_eq!(h.header("x-b"), Some(&b"b"[..]));
        let folded = "GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n  folded\r\n\r\n";
        assert!(matches!(req(folded), Err(HeadError::Malformed(_))));
        let resp = b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n";
        match ResponseHead::parse(resp, 1024, false) {
            Ok(Parsed::Complete(h, _)) => assert_eq!(h.reason(), b""),
            _ => panic!("parse failed"),
        }
    }

    #[test]
    fn one_reading_of_repeated_fields() {
        let h = req("GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.1.1.1\r\nAccept: a\r\nx-forwarded-for: 2.2.2.2\r\nX-Forwarded-For: 3.3.3.3\r\nCookie: a=1\r\nCookie: b=2\r\n\r\n").unwrap();
        assert_eq!(
            h.header("x-forwarded-for"),
            Some(&b"1.1.1.1, 2.2.2.2, 3.3.3.3"[..])
        );
        assert_eq!(h.header("cookie"), Some(&b"a=1; b=2"[..]));
        assert_eq!(h.header("accept"), Some(&b"a"[..]));
        assert!(h.is_repeated("X-Forwarded-For"));
        assert!(!h.is_repeated("accept"));
        for name in [
            "Host",
            "Content-Length",
            "Authorization",
            "X-Request-Id",
            "traceparent",
        ] {
            let two =
                format!("GET / HTTP/1.1\r\nHost: h\r\n{name}: 1\r\nX-A: b\r\n{name}: 1\r\n\r\n");
            let two = if name == "Host" {
                two.replacen("Host: h\r\n", "", 1)
            } else {
                two
            };
            assert!(matches!(req(&two), Err(HeadError::Malformed(_))), "{name}");
        }
    }

    #[test]
    fn query_and_fragment_at_every_offset() {
        for len in 0..20 {
            let path = "a".repeat(len);
            assert_eq!(path_length(path.as_bytes()), Ok(len));
            assert!(path_length(format!("{path}?q#").as_bytes()).is_err());
            assert!(path_length(format!("{path}#").as_bytes()).is_err());
            assert_eq!(path_length(format!("{path}?x?y").as_bytes()), Ok(len));
        }
    }

    #[test]
    fn host_rules() {
        assert!(matches!(
            req("GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(req("GET / HTTP/1.0\r\n\r\n").is_ok());
        for bad in [
            "[a", "[", "[::1", "a b", "[::1]x", ":80", "h:8x", "h:123456", "[]", "a:b:80", "a/b",
            "a@b", "a:80]",
        ] {
            let r = req(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n"));
            assert!(matches!(r, Err(HeadError::Malformed(_))), "{bad}");
        }
        for good in [
            "",
            "h",
            "h:80",
            "h:",
            "[::1]",
            "[::1]:8080",
            "10.0.0.1:9",
            "a-b.example.com",
        ] {
            assert!(
                req(&format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n")).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn absolute_form() {
        let h = req("GET http://Example.com:8080/p/q?x=1 HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
        assert_eq!(h.host(), Some(&b"Example.com:8080"[..]));
        assert_eq!(h.path(), "/p/q");
        assert_eq!(h.query(), Some("x=1"));
        assert!(req("GET http://h/ HTTP/1.1\r\n\r\n").is_err());
        assert!(req("GET http://h/ HTTP/1.0\r\n\r\n").is_ok());
        let h = req("GET HTTPS://h?x HTTP/1.1\r\nHost: h\r\n\r\n").unwrap();
        assert_eq!(
            (h.host(), h.path(), h.query()),
            (Some(&b"h"[..]), "/", Some("x"))
        );
        let h = req("GET http://h HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!((h.path(), h.query()), ("/", None));
        for bad in [
            "ftp://h/",
            "http:/h",
            "http://",
            "http://u@h/",
            "h/p",
            "*",
            "http://[a/",
        ] {
            let r = req(&format!("GET {bad} HTTP/1.1\r\nHost: h\r\n\r\n"));
            assert!(matches!(r, Err(HeadError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn trailer_filtering() {
        let raw = b"X-Checksum: abc\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\nbad line\r\nGrpc-Status:  0 \r\nProxy-X: 1\r\nX-Ctl: a\x01b\r\n";
        let mut out = Vec::new();
        trailer_section(raw, &mut out);
        assert_eq!(out, b"X-Checksum: abc\r\nGrpc-Status: 0\r\n");
        assert!(accepts_trailers(Some(b"deflate, trailers")));
        assert!(!accepts_trailers(Some(b"gzip")));
        assert!(!accepts_trailers(None));
    }

    #[test]
    fn hop_by_hop() {
        assert!(is_hop_by_hop(b"Connection"));
        assert!(is_hop_by_hop(b"Proxy-Authorization"));
        assert!(!is_hop_by_hop(b"X-Proxy"));
        for name in [
            "TE",
            "Trailer",
            "Upgrade",
            "Keep-Alive",
            "connection",
            "Transfer-Encoding",
            "Proxy-Connection",
            "proxy-x",
        ] {
            assert!(is_hop_by_hop(name.as_bytes()), "{name}");
        }
        // Names of the same lengths that are not hop-by-hop.
        for name in [
            "Tx",
            "Trailed",
            "Referer",
            "Connected!",
            "Content-Location1",
        ] {
            assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
        }
        let f: Vec<(&[u8], &[u8])> = vec![(b"Connection", b"close, X-Secret")];
        assert!(ConnectionNames::of(f.into_iter()).contains(b"x-secret"));
    }

    #[test]
    fn parsed_heads_know_the_names_their_connection_fields_list() {
        let listed = req(
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\r\n",
        )
        .unwrap();
        assert!(listed.connection_names().contains(b"x-secret"));
        assert!(!listed.connection_names().contains(b"host"));
        let close =
            req("GET / HTTP/1.1\r\nHost: h\r\nConnection: Close\r\nX-A: 1\r\n\r\n").unwrap();
        assert!(close.connection_names().contains(b"close"));
        assert!(!close.connection_names().contains(b"x-a"));
        let none = req("GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n").unwrap();
        assert!(!none.connection_names().contains(b"close"));
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nconnection: x-b\r\nContent-Length: 0\r\n\r\n";
        let Ok(Parsed::Complete(resp, _)) = ResponseHead::parse(raw, 8192, false) else {
            panic!("a valid response head");
        };
        assert!(resp.connection_names().contains(b"X-B"));
        assert!(!resp.connection_names().contains(b"close"));
    }

    #[test]
    fn connection_names_listed_in_any_connection_field() {
        let f: Vec<(&[u8], &[u8])> = vec![
            (b"Connection", b"keep-alive"),
            (b"X-A", b"1"),
            (b"connection", b" Close ,"),
            (b"CONNECTION", b"x-b, keep-alive"),
        ];
        let names = ConnectionNames::of(f.into_iter());
        for listed in [&b"close"[..], b"X-B"] {
            assert!(names.contains(listed), "{listed:?}");
        }
        for other in [&b"x-a"[..], b"x-bb", b"", b"connection"] {
            assert!(!names.contains(other), "{other:?}");
        }
        let f: Vec<(&[u8], &[u8])> = vec![(b"Connection", b"keep-alive")];
        let only_keep_alive = ConnectionNames::of(f.into_iter());
        assert!(!only_keep_alive.contains(b"close") && !only_keep_alive.contains(b"x-a"));
    }
}
