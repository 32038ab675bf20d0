//! Fuzz target bodies: one plain function per parser, each taking arbitrary
//! bytes. None of them may panic on any input; each also asserts invariants
//! that are cheap to check (a parsed head lies inside its input, a decoder
//! never consumes more than it was given, parsing is deterministic, ...), so
//! a broken invariant is reported as a crash like a panic would be.
//!
//! The functions are driven by the coverage-guided fuzzer in `tests/fuzz/`
//! (`scripts/fuzz.sh`) and replayed over the seed corpora and every saved
//! crash input by `tests/fuzz_regressions.rs`. [`TARGETS`] lists them by name;
//! a target's corpus lives in `tests/fuzz/corpus/<name>/`.
//!
//! Structured targets read their input as lines (`\n`-separated), so seeds
//! stay readable; their layout is documented on each function.
// Panicking is how a target reports a broken invariant.
#![allow(clippy::panic)]

use crate::aggregate::template::{self, Escape, Template};
use crate::auth::{self, AuthPlan, Credentials, Denied, Identity, KeyView, TokenCache};
use crate::config::{self, Authenticator, Gateway, KeySource};
use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::path::{self as http_path, EncodedSlash, PathOptions};
use crate::http::{Framing, HeadError, Parsed, RequestHead, ResponseHead};
use crate::router::{Conditions, Lookup, PathPattern, RequestFacts, RouteSpec, Router};
use serde_json::Value;
use sha2::{Digest, Sha256, Sha384};
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

/// A fuzz target body.
pub type Target = fn(&[u8]);

/// Every target, by the name its corpus directory and fuzzer binary carry.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("router", router),
    ("path", path),
    ("config", config),
    ("jwt", jwt),
    ("template", template),
];

// ---- small helpers ----------------------------------------------------------

/// A small deterministic generator (xorshift64*), seeded from input bytes.
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 => 0,
            n => (self.next_u64() % n as u64) as usize,
        }
    }

    /// A number in `1..=max` (1 when `max` is 0).
    fn one_to(&mut self, max: usize) -> usize {
        1 + (self.next_u64() % (max.max(1) as u64)) as usize
    }
}

/// True when `part` lies inside `whole` (same allocation, in bounds).
fn within(whole: &[u8], part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    part.is_empty() || (p >= start && p + part.len() <= start + whole.len())
}

/// The input's lines; missing lines read as empty.
struct Lines<'a> {
    it: std::str::Split<'a, char>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Lines<'a> {
        Lines {
            it: text.split('\n'),
        }
    }

    fn next_line(&mut self) -> &'a str {
        self.it.next().unwrap_or("")
    }

    /// The rest of the input, lines joined again.
    fn rest(self) -> String {
        self.it.collect::<Vec<_>>().join("\n")
    }
}

fn has_ctl(s: &[u8]) -> bool {
    s.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0)
}

// ---- HTTP heads -------------------------------------------------------------

fn describe<T: std::fmt::Debug>(r: &Result<Parsed<T>, HeadError>) -> String {
    match r {
        Ok(Parsed::Complete(h, n)) => format!("complete {n} {h:?}"),
        Ok(Parsed::Partial) => "partial".into(),
        Err(e) => format!("{e:?}"),
    }
}

/// Checks that apply to the fields of any parsed head.
fn check_fields<'a>(raw: Option<&[u8]>, fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
    for (name, value) in fields {
        assert!(!name.is_empty(), "empty field name");
        if let Some(raw) = raw {
            assert!(within(raw, name), "field name outside the head");
            assert!(within(raw, value), "field value outside the head");
        }
        assert!(
            !value.iter().any(|&b| b == b'\r' || b == b'\n'),
            "CR or LF inside a field value: {:?}",
            String::from_utf8_lossy(value)
        );
        assert!(
            name.iter().all(|&b| config::is_token_byte(b)),
            "field name is not a token: {:?}",
            String::from_utf8_lossy(name)
        );
    }
}

/// What a head's framing fields say, read independently of the parser.
struct FramingFields {
    te: bool,
    lengths: Vec<Vec<u8>>,
}

fn framing_fields<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> FramingFields {
    let mut f = FramingFields {
        te: false,
        lengths: Vec::new(),
    };
    for (name, value) in fields {
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.te = true;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            f.lengths.push(value.to_vec());
        }
    }
    f
}

/// A Content-Length value: one or more digits (leading zeros allowed).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The head ends where the parser said: a shorter prefix is incomplete, and
/// the head alone parses to the same result.
fn check_prefixes<T: std::fmt::Debug>(
    data: &[u8],
    n: usize,
    whole: &str,
    parse: impl Fn(&[u8]) -> Result<Parsed<T>, HeadError>,
) {
    let Some(head) = data.get(..n) else {
        return;
    };
    let alone = describe(&parse(head));
    assert_eq!(alone, whole, "the head alone parses differently");
    for k in [n - 1, n / 2] {
        if let Some(prefix) = data.get(..k) {
            let r = parse(prefix);
            assert!(
                matches!(r, Ok(Parsed::Partial)),
                "a {k}-byte prefix of a complete {n}-byte head is not partial: {}",
                describe(&r)
            );
        }
    }
}

/// Request-head parser. Input: the bytes a client sent. Parsed with a
/// generous limit (16 KiB, 100 fields) and a tight one (64 bytes, 4 fields).
pub fn request_head(data: &[u8]) {
    for (max_bytes, max_headers) in [(16 * 1024, 100), (64, 4)] {
        let parse = |b: &[u8]| RequestHead::parse(b, max_bytes, max_headers);
        let first = parse(data);
        let shown = describe(&first);
        assert_eq!(shown, describe(&parse(data)), "parse is not deterministic");
        let Ok(Parsed::Complete(h, n)) = first else {
            continue;
        };
        assert!(n > 0 && n <= data.len(), "consumed {n} of {}", data.len());
        assert!(
            n <= max_bytes,
            "head of {n} bytes over the {max_bytes} limit"
        );
        assert_eq!(
            data.get(..n),
            Some(h.raw()),
            "raw head is not the input's prefix"
        );
        assert!(h.version <= 1, "version {}", h.version);
        assert!(!h.method().is_empty(), "empty method");
        assert!(
            h.method().bytes().all(config::is_token_byte),
            "method is not a token"
        );
        check_target(&h);
        assert!(h.fields.len() <= max_headers, "more fields than allowed");
        check_fields(Some(h.raw()), h.headers());
        check_reading(&h);
        let f = framing_fields(h.headers());
        assert!(
            !f.te || f.lengths.is_empty(),
            "both Transfer-Encoding and Content-Length accepted"
        );
        match h.framing {
            Framing::Chunked => {
                assert!(f.te && h.version == 1, "chunked without TE on 1.1");
                // Chunked exactly once, and last.
                let codings: Vec<Vec<u8>> = h
                    .header("transfer-encoding")
                    .unwrap_or_default()
                    .split(|&b| b == b',')
                    .map(|t| t.trim_ascii().to_ascii_lowercase())
                    .filter(|t| !t.is_empty())
                    .collect();
                let chunked = |t: &Vec<u8>| t.as_slice() == b"chunked";
                assert!(
                    codings.last().is_some_and(chunked)
                        && codings.iter().filter(|t| chunked(t)).count() == 1,
                    "Transfer-Encoding {codings:?} framed as chunked"
                );
            }
            Framing::Length(len) => {
                assert!(!f.te, "length framing with Transfer-Encoding");
                assert!(
                    !f.lengths.is_empty() && f.lengths.iter().all(|v| decimal(v) == Some(len)),
                    "Content-Length {len} does not match its fields"
                );
            }
            Framing::None => {
                assert!(!f.te, "no framing despite Transfer-Encoding");
                assert!(
                    f.lengths.iter().all(|v| decimal(v) == Some(0)),
                    "no body despite a nonzero Content-Length"
                );
            }
            Framing::UntilClose => panic_invariant("a request framed until close"),
        }
        if h.expect_continue {
            assert_eq!(h.version, 1, "100-continue on HTTP/1.0");
        }
        check_prefixes(data, n, &shown, parse);
    }
}

/// The target splits into path and query, the path is absolute, and a
/// normalised path replaces the path alone.
fn check_target(h: &RequestHead) {
    let (target, path) = (h.target(), h.path());
    assert!(path.starts_with('/'), "path {path:?} is not absolute");
    assert!(!target.contains('#'), "fragment in target {target:?}");
    let before_query = match h.query() {
        Some(q) => target.strip_suffix(q).and_then(|t| t.strip_suffix('?')),
        None => Some(target),
    };
    assert!(
        before_query == Some(path) || (before_query == Some("") && path == "/"),
        "target {target:?} is not path {path:?} and query {:?}",
        h.query()
    );
    if let Ok(normal) = http_path::normalize(path, PathOptions::default()) {
        let mut n = h.clone();
        n.set_path(normal.clone().into_owned());
        assert_eq!(n.path(), normal, "set_path did not take");
        assert_eq!(n.query(), h.query(), "set_path changed the query");
        assert_eq!(n.target(), target, "set_path changed the target as sent");
    }
}

/// One reading of every field: singletons came once, any other field reads
/// as all its lines joined in order.
fn check_reading(h: &RequestHead) {
    let mut names: Vec<Vec<u8>> = h.headers().map(|(n, _)| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    for name in &names {
        let lines: Vec<&[u8]> = h
            .headers()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect();
        let Ok(key) = std::str::from_utf8(name) else {
            continue;
        };
        let single = crate::http::head::SINGLETONS.iter().any(|(n, _)| *n == key);
        assert!(
            !single || lines.len() == 1,
            "singleton {key} accepted on {} lines",
            lines.len()
        );
        assert_eq!(h.is_repeated(key), lines.len() > 1, "is_repeated({key})");
        let sep: &[u8] = if key == "cookie" { b"; " } else { b", " };
        let joined = lines.join(sep);
        assert_eq!(h.header(key), Some(joined.as_slice()), "reading of {key}");
    }
    if h.version == 1 {
        assert!(h.host().is_some(), "HTTP/1.1 request without a host");
    }
    if let Some(host) = h.host() {
        assert!(
            !host
                .iter()
                .any(|&b| b == b'/' || b == b'@' || b == b' ' || b == b'\t'),
            "host {:?} with a separator",
            String::from_utf8_lossy(host)
        );
    }
}

/// Response-head parser. Input: the bytes an upstream sent. Parsed as the
/// answer to a GET and to a HEAD, with a generous and a tight size limit.
pub fn response_head(data: &[u8]) {
    for max_bytes in [16 * 1024, 64] {
        for head_request in [false, true] {
            let parse = |b: &[u8]| ResponseHead::parse(b, max_bytes, head_request);
            let first = parse(data);
            let shown = describe(&first);
            assert_eq!(shown, describe(&parse(data)), "parse is not deterministic");
            let Ok(Parsed::Complete(h, n)) = first else {
                continue;
            };
            assert!(n > 0 && n <= data.len(), "consumed {n} of {}", data.len());
            assert!(
                n <= max_bytes,
                "head of {n} bytes over the {max_bytes} limit"
            );
            assert!(h.status <= 999, "status {}", h.status);
            assert!(h.version <= 1, "version {}", h.version);
            let reason = h.reason();
            assert!(!has_ctl(reason), "reason with CR/LF/NUL");
            // The head's own bytes are private: every slice handed out must
            // lie within one span no longer than the head.
            let slices = h
                .headers()
                .flat_map(|(n, v)| [n, v])
                .chain([reason])
                .filter(|s| !s.is_empty());
            let (lo, hi) = slices.fold((usize::MAX, 0), |(lo, hi), s| {
                let p = s.as_ptr() as usize;
                (lo.min(p), hi.max(p + s.len()))
            });
            assert!(
                lo == usize::MAX || hi - lo <= n,
                "slices span more than the head"
            );
            check_fields(None, h.headers());
            let bodyless = head_request
                || (100..200).contains(&h.status)
                || h.status == 204
                || h.status == 304;
            if bodyless {
                assert_eq!(h.framing, Framing::None, "a body on a bodyless response");
            }
            let f = framing_fields(h.headers());
            match h.framing {
                Framing::Chunked => assert!(f.te, "chunked without Transfer-Encoding"),
                Framing::Length(len) => {
                    assert!(!f.te, "length framing with Transfer-Encoding");
                    assert!(
                        f.lengths.iter().all(|v| decimal(v) == Some(len)),
                        "Content-Length {len} does not match its fields"
                    );
                }
                Framing::UntilClose => {
                    assert!(!h.keep_alive, "kept alive after a close-framed body")
                }
                Framing::None => {}
            }
            check_prefixes(data, n, &shown, parse);
        }
    }
}

/// Reports a broken invariant (the fuzzer records the input).
fn panic_invariant(what: &str) {
    panic!("{what}");
}

// ---- chunked bodies -----------------------------------------------------------

/// What decoding a whole body gave.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    data: Vec<u8>,
    done: bool,
    error: Option<ChunkError>,
    /// Bytes consumed in all (only compared when there was no error).
    consumed: usize,
    /// The raw trailer section, when the decoder kept it and finished.
    trailers: Vec<u8>,
}

/// Decodes `body` fed in pieces whose sizes `feed` picks.
fn decode_chunked(
    mut d: ChunkedDecoder,
    body: &[u8],
    mut feed: impl FnMut(usize) -> usize,
) -> Decoded {
    let mut out = Decoded {
        data: Vec::new(),
        done: false,
        error: None,
        consumed: 0,
        trailers: Vec::new(),
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    // Every step consumes a byte, yields data or asks for more input.
    let mut budget = 4 * body.len() + 16;
    loop {
        budget -= 1;
        assert!(budget > 0, "decoder makes no progress");
        let step = match d.step(&buf) {
            Ok(s) => s,
            Err(e) => {
                out.error = Some(e);
                break;
            }
        };
        assert!(step.consumed <= buf.len(), "consumed more than given");
        if let Some(r) = &step.data {
            assert!(
                r.start < r.end && r.end <= step.consumed,
                "data {r:?} outside the {} consumed bytes",
                step.consumed
            );
            out.data
                .extend_from_slice(buf.get(r.clone()).unwrap_or_default());
        }
        buf.drain(..step.consumed.min(buf.len()));
        out.consumed += step.consumed;
        if d.is_done() {
            out.done = true;
            out.trailers = d.take_trailers();
            break;
        }
        if step.consumed == 0 && step.data.is_none() {
            assert!(
                buf.is_empty(),
                "decoder stalled on {} buffered bytes",
                buf.len()
            );
            if fed >= body.len() {
                break;
            }
            let end = (fed + feed(body.len() - fed)).min(body.len());
            buf.extend_from_slice(body.get(fed..end).unwrap_or_default());
            fed = end;
        }
    }
    if out.error.is_some() {
        out.consumed = 0;
    }
    assert!(out.consumed <= body.len(), "consumed more than the body");
    assert!(out.data.len() <= body.len(), "more data than input");
    out
}

/// Where a reference decoding of a whole body ended.
#[derive(Debug, PartialEq, Eq)]
enum Ends {
    /// The body ended after this many bytes.
    Done(usize),
    /// The body is malformed.
    Malformed,
    /// More bytes are needed.
    More,
}

/// A whole-buffer reading of the chunked grammar the decoder promises
/// (RFC 9112 §7.1, strict): 1-16 hex digits, an optional `;extension` with
/// no control characters but HTAB, CRLF; data and CRLF; after the zero-size
/// chunk, trailer lines up to an empty line. A size line holds at most 4096
/// bytes up to its CR and the trailer section at most 8192 bytes, its LFs
/// not counted. Returns the data, the trailer lines (CRLF-terminated) and
/// where it ended.
fn reference_chunked(b: &[u8]) -> (Vec<u8>, Vec<u8>, Ends) {
    let mut data = Vec::new();
    let mut trailers = Vec::new();
    let mut pos = 0;
    macro_rules! byte {
        () => {
            match b.get(pos) {
                Some(&c) => c,
                None => return (data, trailers, Ends::More),
            }
        };
    }
    macro_rules! fail {
        () => {
            return (data, trailers, Ends::Malformed)
        };
    }
    loop {
        let line_start = pos;
        let mut size: u64 = 0;
        let mut digits = 0;
        loop {
            if pos - line_start >= 4096 && b.get(pos).is_some() {
                fail!();
            }
            let c = byte!();
            let Some(d) = (c as char).to_digit(16) else {
                break;
            };
            digits += 1;
            if digits > 16 {
                fail!();
            }
            size = (size << 4) | u64::from(d);
            pos += 1;
        }
        if digits == 0 {
            fail!();
        }
        if byte!() == b';' {
            loop {
                if pos - line_start >= 4096 && b.get(pos).is_some() {
                    fail!();
                }
                let c = byte!();
                if c == b'\r' {
                    break;
                }
                if c == b'\n' || (c < 0x20 && c != b'\t') || c == 0x7f {
                    fail!();
                }
                pos += 1;
            }
        }
        if byte!() != b'\r' {
            fail!();
        }
        pos += 1;
        if byte!() != b'\n' {
            fail!();
        }
        pos += 1;
        if size == 0 {
            break;
        }
        let avail = b.get(pos..).unwrap_or_default();
        match usize::try_from(size).ok().filter(|&n| n <= avail.len()) {
            Some(n) => {
                data.extend_from_slice(avail.get(..n).unwrap_or_default());
                pos += n;
            }
            None => {
                data.extend_from_slice(avail);
                return (data, trailers, Ends::More);
            }
        }
        if byte!() != b'\r' {
            fail!();
        }
        pos += 1;
        if byte!() != b'\n' {
            fail!();
        }
        pos += 1;
    }
    let mut counted = 0;
    loop {
        let line_start = pos;
        loop {
            if b.get(pos).is_some() {
                counted += 1;
                if counted > 8192 {
                    fail!();
                }
            }
            match byte!() {
                b'\r' => break,
                b'\n' => fail!(),
                _ => pos += 1,
            }
        }
        let line = b.get(line_start..pos).unwrap_or_default().to_vec();
        pos += 1;
        if byte!() != b'\n' {
            fail!();
        }
        pos += 1;
        if line.is_empty() {
            return (data, trailers, Ends::Done(pos));
        }
        trailers.extend_from_slice(&line);
        trailers.extend_from_slice(b"\r\n");
    }
}

/// The trailer fields RFC 9110 §6.5.1 keeps out of a trailer section.
const NEVER_TRAILERS: [&str; 21] = [
    "content-length",
    "transfer-encoding",
    "trailer",
    "host",
    "authorization",
    "set-cookie",
    "cookie",
    "www-authenticate",
    "cache-control",
    "expires",
    "date",
    "location",
    "retry-after",
    "vary",
    "age",
    "content-type",
    "content-encoding",
    "content-range",
    "te",
    "connection",
    "upgrade",
];

/// The trailer section the gateway passes on: well-formed lines of allowed
/// fields only, and one that the decoder reads back unchanged.
fn check_trailer_section(raw: &[u8]) {
    let mut out = Vec::new();
    crate::http::head::trailer_section(raw, &mut out);
    let mut lines = out.split(|&b| b == b'\n');
    let _ = lines.next_back(); // after the last LF
    for line in lines {
        let line = line.strip_suffix(b"\r");
        let fields = line.and_then(|l| {
            let colon = l.iter().position(|&b| b == b':')?;
            Some(l.split_at(colon))
        });
        let Some((name, value)) = fields else {
            return panic_invariant(&format!(
                "malformed trailer line in {:?}",
                String::from_utf8_lossy(&out)
            ));
        };
        assert!(
            !name.is_empty() && name.iter().all(|&b| config::is_token_byte(b)),
            "trailer name {:?}",
            String::from_utf8_lossy(name)
        );
        let lower = name.to_ascii_lowercase();
        assert!(
            !NEVER_TRAILERS.iter().any(|f| f.as_bytes() == lower) && !lower.starts_with(b"proxy-"),
            "forbidden trailer {:?} passed on",
            String::from_utf8_lossy(name)
        );
        assert!(!has_ctl(value), "trailer value with CR/LF/NUL");
    }
    // What the gateway writes after the last chunk reads back the same
    // (while within the decoder's trailer limit: lines grow by `: ` and CR).
    if out.len() > 8000 {
        return;
    }
    let mut wire = b"0\r\n".to_vec();
    wire.extend_from_slice(&out);
    wire.extend_from_slice(b"\r\n");
    let back = decode_chunked(ChunkedDecoder::keeping_trailers(), &wire, |left| left);
    assert!(
        back.done && back.error.is_none() && back.trailers == out,
        "the trailer section sent on does not decode back: {back:?}"
    );
}

/// Chunked decoder. Input: one seed byte that picks the split points, then
/// the body. Decoding it whole, in random pieces and byte by byte must give
/// the same data, end, error and trailers, and agree with a reference
/// reading of the grammar; the trailers passed on must be allowed fields.
pub fn chunked(data: &[u8]) {
    let Some((&seed, body)) = data.split_first() else {
        return;
    };
    let keep = ChunkedDecoder::keeping_trailers;
    let whole = decode_chunked(keep(), body, |left| left);
    let mut rng = Rng::new(u64::from(seed));
    let pieces = decode_chunked(keep(), body, |left| rng.one_to(left.min(64)));
    assert_eq!(whole, pieces, "random split points change the outcome");
    if body.len() <= 512 {
        let bytes = decode_chunked(keep(), body, |_| 1);
        assert_eq!(whole, bytes, "byte-by-byte feeding changes the outcome");
    }
    let dropping = decode_chunked(ChunkedDecoder::default(), body, |left| left);
    assert!(
        dropping.trailers.is_empty(),
        "trailers kept although not asked"
    );
    assert_eq!(
        (&dropping.data, dropping.done, dropping.error),
        (&whole.data, whole.done, whole.error),
        "keeping trailers changes the outcome"
    );
    let (ref_data, ref_trailers, ends) = reference_chunked(body);
    assert_eq!(whole.data, ref_data, "data differs from the reference");
    match ends {
        Ends::Done(n) => {
            assert!(
                whole.done && whole.consumed == n,
                "reference ends at {n}: {whole:?}"
            );
            assert_eq!(
                whole.trailers, ref_trailers,
                "trailers differ from the reference"
            );
        }
        Ends::Malformed => assert!(whole.error.is_some(), "reference refuses: {whole:?}"),
        Ends::More => assert!(
            !whole.done && whole.error.is_none(),
            "reference wants more: {whole:?}"
        ),
    }
    check_trailer_section(&whole.trailers);
    check_trailer_section(body);
}

// ---- router -------------------------------------------------------------------

fn route(
    path: PathPattern,
    methods: &[&str],
    host: Option<&str>,
    headers: &[(&str, &str)],
) -> RouteSpec {
    RouteSpec {
        path,
        conditions: Conditions {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            host: host.map(str::to_string),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        },
    }
}

fn fuzz_routes() -> Vec<RouteSpec> {
    use PathPattern::{Full, Prefix};
    let f = |p: &str| Full(p.to_string());
    let p = |p: &str| Prefix(p.to_string());
    vec![
        route(f("/"), &["GET"], None, &[]),
        route(f("/api/v1/users/{id}"), &["GET", "PUT"], None, &[]),
        route(f("/api/v1/users/me"), &[], None, &[]),
        route(f("/api/v1/users/{id}/orders/{oid}"), &["GET"], None, &[]),
        route(f("/api/v1/dashboard"), &["GET"], None, &[]),
        route(f("/files/{name}"), &[], Some("static.example.com"), &[]),
        route(f("/a/{b}/c"), &[], None, &[]),
        route(f("/{x}"), &["POST"], None, &[]),
        route(p("/api/v1/products"), &["GET", "HEAD"], None, &[]),
        route(
            p("/api/v1/products"),
            &[],
            None,
            &[("x-api-version", "2.0")],
        ),
        route(p("/api/v1/admin"), &[], None, &[]),
        route(p("/static/"), &["GET"], None, &[]),
        route(p("/"), &[], Some("*.internal.example.com"), &[]),
        route(p("/"), &["GET"], Some("internal.example.com"), &[]),
        route(p("/api"), &["DELETE"], None, &[("x-admin", "1")]),
    ]
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// The request's segments as the router splits them (`None`: no segment).
fn segments(path: &str) -> Vec<&str> {
    let rest = path.strip_prefix('/').unwrap_or(path);
    rest.split('/').collect()
}

/// Reference matcher: does the pattern cover the path?
fn path_match(pattern: &PathPattern, path: &str) -> bool {
    match pattern {
        PathPattern::Full(p) => {
            let pat = segments(p);
            let req = segments(path);
            pat.len() == req.len()
                && pat
                    .iter()
                    .zip(&req)
                    .all(|(a, b)| if is_param(a) { !b.is_empty() } else { a == b })
        }
        PathPattern::Prefix(p) => {
            let pat: Vec<&str> = p.trim_end_matches('/').split('/').skip(1).collect();
            let rest = path.strip_prefix('/').unwrap_or(path);
            let req: Vec<&str> = if rest.is_empty() {
                Vec::new()
            } else {
                rest.split('/').collect()
            };
            pat.len() <= req.len() && pat.iter().zip(&req).all(|(a, b)| a == b)
        }
    }
}

/// Reference host check: `None` when the host has a form the reference does
/// not model (bracketed IPv6 literals).
fn host_ok(want: &Option<String>, host: Option<&str>) -> Option<bool> {
    let Some(want) = want else {
        return Some(true);
    };
    let Some(host) = host else {
        return Some(false);
    };
    if host.contains(['[', ']']) {
        return None;
    }
    let bare = host.rsplit_once(':').map_or(host, |(h, _)| h).as_bytes();
    Some(match want.strip_prefix("*.") {
        Some(suffix) => {
            let tail = format!(".{suffix}");
            bare.len() > tail.len()
                && bare
                    .get(bare.len() - tail.len()..)
                    .is_some_and(|t| t.eq_ignore_ascii_case(tail.as_bytes()))
        }
        None => bare.eq_ignore_ascii_case(want.as_bytes()),
    })
}

thread_local! {
    static ROUTER: (Router, Vec<RouteSpec>) = {
        let routes = fuzz_routes();
        (Router::new(&routes), routes)
    };
}

/// Router lookup over a fixed route table. Input lines: method, path
/// (without query), host (empty line: none), then `name: value` headers.
pub fn router(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = Lines::new(&text);
    let method = lines.next_line();
    let path = lines.next_line();
    let host = Some(lines.next_line()).filter(|h| !h.is_empty());
    let headers: Vec<(String, &str)> = lines
        .it
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
    };
    let facts = RequestFacts {
        method,
        path,
        host,
        header,
    };
    ROUTER.with(|(router, routes)| {
        let found = router.lookup(&facts);
        assert_eq!(found, router.lookup(&facts), "lookup is not deterministic");
        // (route, path and headers match, host verdict, method admitted)
        let verdicts: Vec<(usize, bool, Option<bool>, bool)> = routes
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let c = &r.conditions;
                let shape = path_match(&r.path, path)
                    && c.headers
                        .iter()
                        .all(|(n, v)| header(n) == Some(v.as_bytes()));
                let method_ok = c.methods.is_empty() || c.methods.iter().any(|m| m == method);
                (i, shape, host_ok(&c.host, host), method_ok)
            })
            .collect();
        let surely_admitted = |full_only: bool| {
            verdicts.iter().any(|&(i, shape, host, m)| {
                shape
                    && host == Some(true)
                    && m
                    && (!full_only
                        || routes
                            .get(i)
                            .is_some_and(|r| matches!(r.path, PathPattern::Full(_))))
            })
        };
        match &found {
            Lookup::Found { route, params } => {
                let Some(r) = routes.get(*route) else {
                    return panic_invariant("route index out of range");
                };
                let Some(&(_, shape, host_v, method_ok)) = verdicts.get(*route) else {
                    return;
                };
                assert!(
                    shape && method_ok && host_v != Some(false),
                    "route {route} does not match"
                );
                if matches!(r.path, PathPattern::Prefix(_)) {
                    assert!(params.is_empty(), "params on a prefix route");
                    assert!(
                        !surely_admitted(true),
                        "a prefix route beat a full-path route"
                    );
                }
                if let PathPattern::Full(p) = &r.path {
                    let wanted: Vec<&str> = segments(p)
                        .into_iter()
                        .zip(segments(path))
                        .filter(|(pat, _)| is_param(pat))
                        .map(|(_, seg)| seg)
                        .collect();
                    assert_eq!(params.len(), wanted.len(), "param count");
                    if path.starts_with('/') {
                        for (range, want) in params.iter().zip(wanted) {
                            assert_eq!(
                                path.get(range.clone()),
                                Some(want),
                                "param range {range:?}"
                            );
                        }
                    }
                }
            }
            Lookup::MethodNotAllowed { allow } => {
                assert!(!surely_admitted(false), "an admitting route was missed");
                assert!(!allow.is_empty(), "405 with no allowed method");
                assert!(!allow.iter().any(|m| m == method), "405 allows the method");
                for m in allow {
                    assert!(
                        verdicts.iter().any(|&(i, shape, host, _)| shape
                            && host != Some(false)
                            && routes
                                .get(i)
                                .is_some_and(|r| r.conditions.methods.contains(m))),
                        "405 allows {m:?}, which no matching route lists"
                    );
                }
            }
            Lookup::NotFound => {
                assert!(
                    !verdicts
                        .iter()
                        .any(|&(_, shape, host, _)| shape && host == Some(true)),
                    "404 although a route matches"
                );
            }
        }
    });
}

// ---- path normalisation -----------------------------------------------------------

/// Every percent-encoding decoded, merged runs of `/` when `merge`.
fn decode_all(path: &str, merge: bool) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let b = path.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let byte = match (c, hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (b'%', Some(h), Some(l)) => {
                i += 2;
                (h * 16 + l) as u8
            }
            _ => c,
        };
        i += 1;
        if !(merge && byte == b'/' && out.last() == Some(&b'/')) {
            out.push(byte);
        }
    }
    out
}

/// Path normaliser. Input: an options digit (`0`-`5`: merge slashes or
/// not, times Reject, Keep, Decode), then the path.
pub fn path(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let m = mode.wrapping_sub(b'0') % 6;
    let opts = PathOptions {
        merge_slashes: m < 3,
        encoded_slash: match m % 3 {
            0 => EncodedSlash::Reject,
            1 => EncodedSlash::Keep,
            _ => EncodedSlash::Decode,
        },
    };
    // Callers pass a path that starts with `/` (the head parser sees to it).
    let mut input = String::from_utf8_lossy(rest).into_owned();
    if !input.starts_with('/') {
        input.insert(0, '/');
    }
    let first = http_path::normalize(&input, opts);
    assert_eq!(
        first,
        http_path::normalize(&input, opts),
        "normalize is not deterministic"
    );
    let Ok(out) = first else {
        return;
    };
    let out: &str = &out;
    // Idempotent: a normal path is its own normal form.
    assert_eq!(
        http_path::normalize(out, opts).as_deref(),
        Ok(out),
        "normalising {out:?} again changes it"
    );
    assert!(
        !out.split('/').any(|seg| seg == "." || seg == ".."),
        "dot segment in {out:?}"
    );
    assert!(!out.contains(';'), "';' in {out:?}");
    if opts.merge_slashes {
        assert!(
            !out.contains("//"),
            "'//' in {out:?} although slashes are merged"
        );
    }
    assert!(out.starts_with('/'), "{input:?} -> {out:?} is not absolute");
    // Every remaining encoding is upper-case, of a byte that is not unreserved.
    let b = out.as_bytes();
    for (i, _) in out.match_indices('%') {
        let code = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        let v = code.and_then(|h| u8::from_str_radix(h, 16).ok());
        assert!(
            code.is_some_and(|h| h
                .bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()))
                && v.is_some_and(|v| !(v.is_ascii_alphanumeric() || b"-._~".contains(&v))),
            "bad encoding at {i} in {out:?}"
        );
    }
    if opts.encoded_slash == EncodedSlash::Reject {
        for bad in ["%2F", "%5C", "%00", "\\"] {
            assert!(!out.contains(bad), "{bad} in {out:?} under Reject");
        }
        // Same bytes once decoded: normalising never changes what is asked for.
        assert_eq!(
            decode_all(out, false),
            decode_all(&input, opts.merge_slashes),
            "{input:?} and {out:?} decode differently"
        );
    }
    if opts.encoded_slash == EncodedSlash::Decode {
        assert!(!out.contains("%00"), "%00 in {out:?} under Decode");
    }
}

// ---- config -------------------------------------------------------------------

/// Key files a fuzzed config may name (relative to the repository root).
const KEY_FILES: [&str; 3] = [
    "tests/keys/rsa.pub.pem",
    "tests/keys/ec.pub.pem",
    "tests/keys/ed.pub.pem",
];

/// True when loading `g` would reach outside the process: resolve a host
/// name, fetch a JWKS document, or read a file other than the test keys.
fn reaches_outside(g: &Gateway) -> bool {
    let literal = |a: &str| a.parse::<std::net::SocketAddr>().is_ok();
    let upstreams = g
        .upstreams
        .values()
        .any(|u| u.targets.iter().any(|t| !literal(t)));
    let auth = g.authenticators.values().any(|a| match a {
        Authenticator::Jwt(j) => match &j.key {
            KeySource::Secret(_) | KeySource::FromEnv(_) => false,
            KeySource::PemFile(p) | KeySource::JwksFile(p) => !KEY_FILES.contains(&p.as_str()),
            KeySource::Jwks { .. } => true,
        },
        Authenticator::ApiKey(_) | Authenticator::ClientCert(_) => false,
        Authenticator::Introspection(x) => {
            !auth::jwks::split_url(&x.url).is_ok_and(|(_, addr, _, _)| literal(&addr))
        }
    });
    upstreams || auth
}

/// Config loader: RON text to a compiled config, as `shardgate check` does
/// (without reading a file). Configs that would resolve names, fetch a
/// JWKS or read files other than the test keys are only deserialised.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let options = ron::Options::default().with_default_extension(
        ron::extensions::Extensions::IMPLICIT_SOME
            | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
    );
    if let Ok(g) = options.from_str::<Gateway>(&text) {
        if reaches_outside(&g) {
            return;
        }
    }
    match config::parse("fuzz.ron", &text) {
        Ok(g) => {
            if let Err(e) = crate::compiled::compile(&g) {
                panic_invariant(&format!("a validated config does not compile: {e}"));
            }
        }
        Err(e) => {
            assert!(!e.problems.is_empty(), "an error without problems");
            let lines = text.split('\n').count();
            for p in &e.problems {
                assert!(p.line <= lines + 1, "problem on line {} of {lines}", p.line);
            }
            let _ = e.to_string();
        }
    }
}

// ---- JWT ------------------------------------------------------------------------

const SECRET_A: &[u8] = b"fuzz-secret-a-0123456789";
const JWK_K1: &[u8] = b"fuzz-jwks-key-one";
const JWK_K2: &[u8] = b"fuzz-jwks-key-two-for-hs384";

const AUTH_RON: &str = r#"{
    "a": Jwt(
        algorithms: [HS256],
        key: Secret("fuzz-secret-a-0123456789"),
        issuer: "https://issuer.example",
        audience: "api",
        required_claims: ["sub"],
        forward_claims: { "sub": "X-User-Id", "role": "X-Role", "tags": "X-Tags" },
        roles_claim: "role",
    ),
    "b": Jwt(
        algorithms: [HS256, HS384],
        key: Secret("replaced-by-the-key-view"),
        forward_claims: { "sub": "X-Sub" },
    ),
}"#;

fn hmac(block: usize, hash: Hash, key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = if key.len() > block {
        hash(key)
    } else {
        key.to_vec()
    };
    k.resize(block, 0);
    let inner: Vec<u8> = k
        .iter()
        .map(|b| b ^ 0x36)
        .chain(msg.iter().copied())
        .collect();
    let mut outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    outer.extend(hash(&inner));
    hash(&outer)
}

fn sha256(d: &[u8]) -> Vec<u8> {
    Sha256::digest(d).to_vec()
}

fn sha384(d: &[u8]) -> Vec<u8> {
    Sha384::digest(d).to_vec()
}

/// A hash function over one message.
type Hash = fn(&[u8]) -> Vec<u8>;

/// The signing keys of the fuzzed plan: (block size, hash, key).
const KEYS: [(usize, Hash, &[u8]); 3] = [
    (64, sha256, SECRET_A),
    (64, sha256, JWK_K1),
    (128, sha384, JWK_K2),
];

/// Lenient base64url decoding (padding and either alphabet accepted).
fn unbase64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

fn signed_by_a_known_key(token: &str) -> bool {
    let Some((msg, sig)) = token.rsplit_once('.') else {
        return false;
    };
    let Some(sig) = unbase64(sig) else {
        return false;
    };
    KEYS.iter()
        .any(|&(block, hash, key)| hmac(block, hash, key, msg.as_bytes()) == sig)
}

struct JwtFixture {
    plan: AuthPlan,
    sets: HashMap<usize, auth::jwks::KeySet>,
}

fn jwt_fixture() -> Option<JwtFixture> {
    let options = ron::Options::default().with_default_extension(
        ron::extensions::Extensions::IMPLICIT_SOME
            | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
    );
    let auths: BTreeMap<String, Authenticator> = options.from_str(AUTH_RON).ok()?;
    let plan = AuthPlan::compile(&auths).ok()?;
    let b64 = auth::introspect::base64url;
    let jwks = format!(
        r#"{{"keys":[{{"kty":"oct","kid":"k1","alg":"HS256","k":"{}"}},{{"kty":"oct","kid":"k2","alg":"HS384","k":"{}"}}]}}"#,
        b64(JWK_K1),
        b64(JWK_K2)
    );
    let keys = auth::jwks::keys_from_document(&jwks).ok()?;
    let index = plan.index_of("b")?;
    Some(JwtFixture {
        plan,
        sets: HashMap::from([(index, Arc::new(keys))]),
    })
}

thread_local! {
    static JWT: Option<JwtFixture> = jwt_fixture();
}

fn check_identity(id: &Identity) {
    for (name, value) in &id.headers {
        assert!(
            !has_ctl(name.as_bytes()) && !has_ctl(value.as_bytes()),
            "identity header with CR/LF/NUL: {name:?}: {value:?}"
        );
    }
    assert!(id.claims.len() <= auth::MAX_CLAIMS, "too many claims kept");
    assert!(
        id.claims
            .iter()
            .all(|(_, v)| v.len() <= auth::MAX_CLAIM_BYTES),
        "an oversized claim kept"
    );
}

fn time_dependent(r: &Result<Identity, Denied>) -> bool {
    matches!(r, Err(Denied::Invalid(why)) if why.contains("expired") || why.contains("not yet valid"))
}

/// JWT parsing before (and around) the signature check: header decoding,
/// algorithm and `kid` selection, claims decoding and the identity built
/// from them. Input: a mode digit, then
/// - `0`: a token, sent as `Authorization: Bearer <token>`;
/// - `1`, `2`, `3`: a header JSON line and a claims JSON text, signed here
///   with the HS256 secret, the JWKS key `k1` (HS256) or `k2` (HS384), so
///   that the claims checks are reached;
/// - `4`: a whole `Authorization` value.
///
/// Any accepted token must carry a valid signature of one of those keys.
pub fn jwt(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let rest = String::from_utf8_lossy(rest);
    let authorization = match mode.wrapping_sub(b'0') % 5 {
        0 => format!("Bearer {rest}"),
        m @ 1..=3 => {
            let (header, claims) = rest.split_once('\n').unwrap_or((&rest, ""));
            let b64 = auth::introspect::base64url;
            let msg = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
            let Some(&(block, hash, key)) = KEYS.get(usize::from(m - 1)) else {
                return;
            };
            let sig = b64(&hmac(block, hash, key, msg.as_bytes()));
            format!("Bearer {msg}.{sig}")
        }
        _ => rest.into_owned(),
    };
    JWT.with(|fixture| {
        let Some(fx) = fixture else {
            return panic_invariant("the JWT fixture does not compile");
        };
        let no_header = |_: &str| None;
        let creds = Credentials {
            authorization: Some(authorization.as_bytes()),
            header: &no_header,
            query: None,
            client_cert: None,
        };
        let view = KeyView {
            sets: Some(&fx.sets),
            refetch: None,
        };
        let now = auth::unix_now_ms();
        let mut cache = TokenCache::new(4);
        let allowed = [0, 1];
        let first = fx
            .plan
            .authenticate_cached(&allowed, &creds, Some(&mut cache), &view, now);
        let again = fx
            .plan
            .authenticate_cached(&allowed, &creds, Some(&mut cache), &view, now);
        let uncached = fx
            .plan
            .authenticate_cached(&allowed, &creds, None, &view, now);
        if !time_dependent(&first) && !time_dependent(&uncached) {
            assert_eq!(first, uncached, "authentication is not deterministic");
        }
        if let Ok(id) = &first {
            assert_eq!(again.as_ref(), Ok(id), "the cache answered differently");
            check_identity(id);
            let token = authorization.split_once(' ').map_or("", |(_, t)| t.trim());
            assert!(
                signed_by_a_known_key(token),
                "accepted a token no key signed: {token:?}"
            );
        }
        // The plan without the key view: `b` has only its placeholder secret.
        let plain = fx.plan.authenticate(&allowed, &creds);
        if let Ok(id) = &plain {
            check_identity(id);
        }
    });
}

// ---- aggregation templates ----------------------------------------------------

const TEMPLATE_PARAMS: [&str; 2] = ["id", "oid"];
const TEMPLATE_PARTS: [&str; 2] = ["orders", "profile"];

/// Writes a parsed template back as text.
fn unparse(t: &Template) -> String {
    use template::{Piece, Source};
    let mut s = String::new();
    for p in &t.pieces {
        let (src, filter) = match p {
            Piece::Lit(l) => {
                s.push_str(&l.replace('{', "{{").replace('}', "}}"));
                continue;
            }
            Piece::Var(src) => (src, None),
            Piece::Filtered(src, f) => (src, Some(f)),
        };
        s.push('{');
        let path = match src {
            Source::Param(i) => {
                s.push_str(TEMPLATE_PARAMS.get(*i).unwrap_or(&""));
                &[][..]
            }
            Source::Query(n) => {
                s.push_str(&format!("query.{n}"));
                &[][..]
            }
            Source::Claim(n) => {
                s.push_str(&format!("claims.{n}"));
                &[][..]
            }
            Source::Part { part, path } => {
                s.push_str(TEMPLATE_PARTS.get(*part).unwrap_or(&""));
                path.as_slice()
            }
            Source::Item(path) => {
                s.push_str("item");
                path.as_slice()
            }
            Source::Body(path) => {
                s.push_str("body");
                path.as_slice()
            }
        };
        for seg in path {
            s.push('.');
            s.push_str(seg);
        }
        match filter {
            None => {}
            Some(template::Filter::First) => s.push_str("|first"),
            Some(template::Filter::Join(sep)) => s.push_str(&format!("|join(\"{sep}\")")),
        }
        s.push('}');
    }
    s
}

fn check_escapes(value: &str) {
    let mut url = String::new();
    assert!(template::escape_into(value, Escape::Url, &mut url).is_ok());
    assert!(
        url.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_~.%".contains(&b)),
        "URL escape left a reserved byte: {url:?}"
    );
    assert_eq!(
        template::percent_decode(&url, false),
        value,
        "URL escape does not round-trip"
    );
    if value == "." || value == ".." {
        assert!(!url.contains('.'), "a dot segment survived: {url:?}");
    }
    let mut header = String::new();
    let ok = template::escape_into(value, Escape::Header, &mut header).is_ok();
    assert_eq!(ok, !has_ctl(value.as_bytes()), "header escape verdict");
    if ok {
        assert_eq!(header, value);
    }
    let mut json = String::new();
    assert!(template::escape_into(value, Escape::Json, &mut json).is_ok());
    let back: Result<String, _> = serde_json::from_str(&format!("\"{json}\""));
    assert_eq!(
        back.ok().as_deref(),
        Some(value),
        "JSON escape does not round-trip"
    );
}

/// Aggregation templates. Input lines: the template, the request path, the
/// query (empty: none), the caller's `sub` claim, a value to escape, then a
/// JSON document as the result of part `orders`. The route has params
/// `{id}` and `{oid}` (path segments 2 and 4) and parts `orders`, `profile`.
pub fn template(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = Lines::new(&text);
    let source = lines.next_line();
    let path = lines.next_line();
    let query = Some(lines.next_line()).filter(|q| !q.is_empty());
    let sub = lines.next_line();
    let value = lines.next_line();
    let json = lines.rest();
    check_escapes(value);
    check_escapes(sub);
    let params: Vec<String> = TEMPLATE_PARAMS.iter().map(|p| p.to_string()).collect();
    let parsed = Template::parse(source, &params, &TEMPLATE_PARTS);
    assert_eq!(
        parsed,
        Template::parse(source, &params, &TEMPLATE_PARTS),
        "parse is not deterministic"
    );
    let Ok(t) = parsed else {
        return;
    };
    let again = Template::parse(&unparse(&t), &params, &TEMPLATE_PARTS);
    assert_eq!(again.as_ref(), Ok(&t), "template does not round-trip");
    // Params at segments 2 and 4 when present; otherwise ranges that may
    // point past the path or inside a character.
    let seg_ranges: Vec<Range<usize>> = path
        .split('/')
        .scan(0usize, |at, seg| {
            let r = *at..*at + seg.len();
            *at += seg.len() + 1;
            Some(r)
        })
        .collect();
    let params_at: Vec<Range<usize>> = [2usize, 4]
        .iter()
        .map(|&i| seg_ranges.get(i).cloned().unwrap_or(1..path.len() + i))
        .collect();
    let claims = vec![
        ("sub".to_string(), sub.to_string()),
        ("role".to_string(), "admin".to_string()),
    ];
    let orders: Option<Value> = serde_json::from_str(&json).ok();
    let profile = serde_json::json!({"id": 7, "name": "Ada", "tags": ["a", "b"], "ok": true});
    let part = |i: usize| match i {
        0 => orders.as_ref(),
        1 => Some(&profile),
        _ => None,
    };
    let ctx = template::Context {
        path,
        params: &params_at,
        query,
        claims: &claims,
        part: &part,
        item: orders.as_ref(),
        body: Some(&profile),
    };
    let lits_clean = t.pieces.iter().all(|p| match p {
        template::Piece::Lit(l) => !has_ctl(l.as_bytes()),
        template::Piece::Var(_) | template::Piece::Filtered(..) => true,
    });
    for esc in [Escape::Url, Escape::Header, Escape::Json] {
        let out = t.expand_to_string(&ctx, esc);
        assert_eq!(
            out,
            t.expand_to_string(&ctx, esc),
            "expansion is not deterministic"
        );
        if let (Ok(s), Escape::Header, true) = (&out, esc, lits_clean) {
            assert!(
                !has_ctl(s.as_bytes()),
                "header expansion with CR/LF/NUL: {s:?}"
            );
        }
    }
    for src in t.pieces.iter().filter_map(|p| match p {
        template::Piece::Var(template::Source::Part { path, .. })
        | template::Piece::Filtered(template::Source::Part { path, .. }, _) => Some(path),
        _ => None,
    }) {
        if let Some(root) = orders.as_ref() {
            let _ = template::select(root, src);
        }
    }
}
