//! Response compression and request decompression on a route.
//!
//! A response is compressed with gzip, brotli or zstd when the route has a
//! `compression` policy, the client's `Accept-Encoding` accepts one of the
//! route's algorithms (q-values honoured, `q=0` refuses), the upstream did not
//! encode it, its type is one of the configured content types and it is not a
//! HEAD answer, a `204`/`304`, a range (`206`, `Content-Range`) or marked
//! `Cache-Control: no-transform`. A `Content-Length` below `min_bytes` keeps
//! the response as it is. The body is compressed as it streams: each piece
//! read from the upstream goes through the encoder and out (chunked to an
//! HTTP/1.1 client), and the encoder is flushed whenever the gateway would
//! otherwise wait for the upstream, so a slow stream is not held back.
//! Every response whose representation depends on `Accept-Encoding` carries
//! `Vary: Accept-Encoding`.
//!
//! Request decompression (`decompress_requests`) inflates a gzip, brotli or
//! zstd request body before it goes on, refusing with 413 a body that
//! inflates past `max_decompressed_bytes` or more than `max_ratio` times its
//! compressed size (a decompression bomb); the inflated body is what the
//! upstream and the request transformation see.
//!
//! The pure parts (negotiation, eligibility, the encoders) are functions of
//! their inputs; [`copy_compressed`] and [`write_buffered`] are the I/O shell.

use crate::error::GatewayError;
use crate::http::body::{CopyError, CopyLimits, OutFraming};
use crate::http::chunked::ChunkedDecoder;
use crate::http::{Conn, Framing, ResponseHead};
use crate::tls::Stream;
use serde::Deserialize;
use std::io::Write as _;

/// A route's `compression` policy, as written in the config.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// Codings offered, in the gateway's order of preference (it decides
    /// between codings the client weighs equally).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Responses whose `Content-Length` is below this are sent as they are.
    #[serde(default = "default_min_bytes")]
    pub min_bytes: u64,
    /// Media types compressed (`type/subtype`, or `type/*`), compared
    /// without case and without parameters.
    #[serde(default = "default_content_types")]
    pub content_types: Vec<String>,
    /// Compression level: one for every algorithm, or one each.
    #[serde(default)]
    pub level: Option<Level>,
    /// Inflate gzip, brotli and zstd request bodies (`Content-Encoding`)
    /// before they go upstream; other codings are refused with 415.
    #[serde(default)]
    pub decompress_requests: bool,
    /// Most bytes an inflated request body may have (413 beyond).
    #[serde(default = "default_max_decompressed")]
    pub max_decompressed_bytes: u64,
    /// Most an inflated request body may be times its compressed size (413 beyond).
    #[serde(default = "default_max_ratio")]
    pub max_ratio: u64,
}

/// A content coding the gateway can produce.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum Algorithm {
    /// `gzip` (RFC 1952), the one every client has.
    Gzip,
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
}

impl Algorithm {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Gzip => "gzip",
            Algorithm::Brotli => "br",
            Algorithm::Zstd => "zstd",
        }
    }

    /// The algorithm for a `Content-Encoding` / `Accept-Encoding` token.
    pub fn from_token(t: &str) -> Option<Algorithm> {
        if t.eq_ignore_ascii_case("gzip") || t.eq_ignore_ascii_case("x-gzip") {
            Some(Algorithm::Gzip)
        } else if t.eq_ignore_ascii_case("br") {
            Some(Algorithm::Brotli)
        } else if t.eq_ignore_ascii_case("zstd") {
            Some(Algorithm::Zstd)
        } else {
            None
        }
    }

    /// Levels accepted for the algorithm.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Algorithm::Gzip => 1..=9,
            Algorithm::Brotli => 0..=11,
            Algorithm::Zstd => 1..=19,
        }
    }

    fn default_level(self) -> u32 {
        match self {
            Algorithm::Gzip => 6,
            Algorithm::Brotli => 4,
            Algorithm::Zstd => 3,
        }
    }
}

/// Compression level(s).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub enum Level {
    /// The same level for every algorithm (1 to 9).
    All(u32),
    /// One level per algorithm (gzip 1-9, brotli 0-11, zstd 1-19).
    Each {
        /// gzip level.
        #[serde(default = "default_gzip_level")]
        gzip: u32,
        /// brotli quality.
        #[serde(default = "default_brotli_level")]
        brotli: u32,
        /// zstd level.
        #[serde(default = "default_zstd_level")]
        zstd: u32,
    },
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::Zstd, Algorithm::Brotli, Algorithm::Gzip]
}
fn default_min_bytes() -> u64 {
    1024
}
fn default_content_types() -> Vec<String> {
    [
        "application/json",
        "application/javascript",
        "application/xml",
        "image/svg+xml",
        "text/*",
    ]
    .map(String::from)
    .to_vec()
}
fn default_max_decompressed() -> u64 {
    10 * 1024 * 1024
}
fn default_max_ratio() -> u64 {
    100
}
fn default_gzip_level() -> u32 {
    Algorithm::Gzip.default_level()
}
fn default_brotli_level() -> u32 {
    Algorithm::Brotli.default_level()
}
fn default_zstd_level() -> u32 {
    Algorithm::Zstd.default_level()
}

/// The compiled policy of one route.
#[derive(Debug, Clone)]
pub struct CompressPlan {
    /// Offered codings with their levels, in preference order.
    pub algorithms: Vec<(Algorithm, u32)>,
    /// See [`Compression::min_bytes`].
    pub min_bytes: u64,
    /// Lower-case `(type, subtype)`; `None` subtype for `type/*`.
    pub content_types: Vec<(String, Option<String>)>,
    /// Request decompression and its limits (`None`: off).
    pub decompress: Option<BombLimit>,
}

/// Limits on an inflated request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BombLimit {
    /// Most inflated bytes.
    pub max_bytes: u64,
    /// Most inflated bytes per compressed byte.
    pub max_ratio: u64,
}

/// Problems of a `compression` block: (field below `compression`, message).
pub fn check(c: &Compression) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if c.algorithms.is_empty() {
        out.push(("algorithms".into(), "name at least one algorithm".into()));
    }
    for (i, a) in c.algorithms.iter().enumerate() {
        if c.algorithms.get(..i).is_some_and(|s| s.contains(a)) {
            out.push(("algorithms".into(), format!("{a:?} is listed twice")));
        }
    }
    match &c.level {
        Some(Level::All(n)) if !(1..=9).contains(n) => out.push((
            "level".into(),
            format!("{n} is not a level every algorithm has: use 1 to 9, or Each(..)"),
        )),
        Some(Level::Each { gzip, brotli, zstd }) => {
            for (a, n) in [
                (Algorithm::Gzip, gzip),
                (Algorithm::Brotli, brotli),
                (Algorithm::Zstd, zstd),
            ] {
                let r = a.levels();
                if !r.contains(n) {
                    out.push((
                        format!("level.{}", format!("{a:?}").to_lowercase()),
                        format!(
                            "{n} is outside {:?}'s levels {} to {}",
                            a,
                            r.start(),
                            r.end()
                        ),
                    ));
                }
            }
        }
        _ => {}
    }
    for t in &c.content_types {
        if parse_type_pattern(t).is_none() {
            out.push((
                "content_types".into(),
                format!("{t:?} is not a media type (type/subtype or type/*)"),
            ));
        }
    }
    if c.decompress_requests && (c.max_decompressed_bytes == 0 || c.max_ratio == 0) {
        out.push((
            "max_decompressed_bytes".into(),
            "max_decompressed_bytes and max_ratio must be at least 1".into(),
        ));
    }
    out
}

fn parse_type_pattern(t: &str) -> Option<(String, Option<String>)> {
    let (ty, sub) = t.trim().split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(ty) {
        return None;
    }
    if sub == "*" {
        return Some((ty.to_ascii_lowercase(), None));
    }
    token(sub).then(|| (ty.to_ascii_lowercase(), Some(sub.to_ascii_lowercase())))
}

impl CompressPlan {
    /// Compiles a checked policy.
    pub fn compile(c: &Compression) -> CompressPlan {
        let level = |a: Algorithm| match &c.level {
            None => a.default_level(),
            Some(Level::All(n)) => *n,
            Some(Level::Each { gzip, brotli, zstd }) => match a {
                Algorithm::Gzip => *gzip,
                Algorithm::Brotli => *brotli,
                Algorithm::Zstd => *zstd,
            },
        };
        CompressPlan {
            algorithms: c.algorithms.iter().map(|&a| (a, level(a))).collect(),
            min_bytes: c.min_bytes,
            content_types: c
                .content_types
                .iter()
                .filter_map(|t| parse_type_pattern(t))
                .collect(),
            decompress: c.decompress_requests.then_some(BombLimit {
                max_bytes: c.max_decompressed_bytes,
                max_ratio: c.max_ratio,
            }),
        }
    }

    /// True when `content_type` (a `Content-Type` value) is one to compress.
    pub fn type_matches(&self, content_type: Option<&[u8]>) -> bool {
        let Some(ct) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
            return false;
        };
        let essence = ct.split(';').next().unwrap_or("").trim();
        let Some((ty, sub)) = essence.split_once('/') else {
            return false;
        };
        self.content_types.iter().any(|(t, s)| {
            t.eq_ignore_ascii_case(ty) && s.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(sub))
        })
    }
}

/// The coding chosen for a client, from its `Accept-Encoding`: the offered
/// algorithm with the highest q-value above 0 (an unlisted one takes the
/// q of `*`, if any); ties go to the earlier offered one.
pub fn negotiate(offered: &[(Algorithm, u32)], accept: Option<&[u8]>) -> Option<(Algorithm, u32)> {
    let accept = std::str::from_utf8(accept?).ok()?;
    let mut listed: [Option<u32>; 3] = [None; 3];
    let mut star = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let mut q = 1000;
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                if k.trim().eq_ignore_ascii_case("q") {
                    q = parse_q(v.trim()).unwrap_or(0);
                }
            }
        }
        if coding == "*" {
            star = Some(q);
        } else if let Some(a) = Algorithm::from_token(coding) {
            let slot = listed.get_mut(a as usize);
            if let Some(slot) = slot {
                // The highest weight given to the coding wins (x-gzip and gzip).
                *slot = Some(slot.map_or(q, |old| old.max(q)));
            }
        }
    }
    let mut best: Option<((Algorithm, u32), u32)> = None;
    for &(a, level) in offered {
        let q = listed
            .get(a as usize)
            .copied()
            .flatten()
            .or(star)
            .unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some(((a, level), q));
        }
    }
    best.map(|(a, _)| a)
}

/// A q-value in thousandths (`1`, `0.5`, `0.001`); `None` when malformed.
fn parse_q(v: &str) -> Option<u32> {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u32 = match int {
        "0" => 0,
        "1" => 1,
        _ => return None,
    };
    let mut thousandths = 0u32;
    for (i, b) in frac.bytes().enumerate() {
        let scale = [100, 10, 1].get(i).copied().unwrap_or(0);
        thousandths += u32::from(b - b'0') * scale;
    }
    let q = whole * 1000 + thousandths;
    (q <= 1000).then_some(q)
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    /// Its form depends on `Accept-Encoding`: say so with `Vary`.
    pub vary: bool,
    /// Compress it with this coding and level.
    pub encode: Option<(Algorithm, u32)>,
}

/// Decides for a response with this status and these fields; `chosen` is
/// the coding negotiated with the client ([`negotiate`]), `length` the body
/// length when known, `head_request` true when it answers HEAD.
pub fn decide(
    plan: &CompressPlan,
    chosen: Option<(Algorithm, u32)>,
    resp: &ResponseHead,
    length: Option<u64>,
    head_request: bool,
) -> Decision {
    let no = Decision::default();
    if matches!(resp.status, 100..=199 | 204 | 206 | 304) || resp.header("content-range").is_some()
    {
        return no;
    }
    if resp
        .header("content-encoding")
        .is_some_and(|e| !e.trim_ascii().eq_ignore_ascii_case(b"identity"))
    {
        return no;
    }
    if resp
        .header("cache-control")
        .is_some_and(|v| has_token(v, b"no-transform"))
    {
        return no;
    }
    if !plan.type_matches(resp.header("content-type")) {
        return no;
    }
    let vary = Decision {
        vary: true,
        encode: None,
    };
    if head_request || resp.framing == Framing::None {
        return vary;
    }
    if length.is_some_and(|n| n < plan.min_bytes) {
        return vary;
    }
    Decision {
        vary: true,
        encode: chosen,
    }
}

/// A strong `ETag` made weak (`W/"x"`): the compressed bytes are not the
/// upstream's representation. `None` for one that is weak already.
pub fn weak_etag(tag: &[u8]) -> Option<String> {
    let t = std::str::from_utf8(tag).ok()?.trim();
    (!t.starts_with("W/")).then(|| format!("W/{t}"))
}

/// True when the comma-separated list `v` has the token `t` (any case).
fn has_token(v: &[u8], t: &[u8]) -> bool {
    v.split(|&b| b == b',').any(|item| {
        let item = item.split(|&b| b == b'=').next().unwrap_or_default();
        item.trim_ascii().eq_ignore_ascii_case(t)
    })
}

/// The `Vary` value for a response that had `old`: `Accept-Encoding`
/// appended unless it is there already (or the response varies on `*`).
pub fn vary_value(old: Option<&[u8]>) -> Option<String> {
    match old {
        None => Some("Accept-Encoding".into()),
        Some(v) if has_token(v, b"accept-encoding") || has_token(v, b"*") => None,
        Some(v) => Some(format!("{}, Accept-Encoding", String::from_utf8_lossy(v))),
    }
}

/// A streaming encoder: bytes written in come out compressed.
pub enum Encoder {
    /// gzip.
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    /// brotli.
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// brotli's window: 2^18 bytes keeps an encoder's memory to about a MiB.
const BROTLI_LGWIN: u32 = 18;
/// zstd's window log: 2^20 bytes, for the same reason.
const ZSTD_WINDOW_LOG: u32 = 20;
/// zstd's chain and hash table logs at levels 8 and up: 2^20 entries each
/// (about 8 MiB per encoder at most).
const ZSTD_TABLE_LOG: u32 = 20;

impl Encoder {
    /// An encoder for `alg` at `level`.
    pub fn new(alg: Algorithm, level: u32) -> std::io::Result<Encoder> {
        Ok(match alg {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level.min(9)),
            )),
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                level.min(11),
                BROTLI_LGWIN,
            ))),
            Algorithm::Zstd => {
                let level = i32::try_from(level.min(19)).unwrap_or(3);
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                e.window_log(ZSTD_WINDOW_LOG)?;
                if level >= 8 {
                    // The high levels' match tables (up to 2^24 entries)
                    // would cost tens of MiB per response.
                    e.set_parameter(zstd::zstd_safe::CParameter::ChainLog(ZSTD_TABLE_LOG))?;
                    e.set_parameter(zstd::zstd_safe::CParameter::HashLog(ZSTD_TABLE_LOG))?;
                }
                Encoder::Zstd(e)
            }
        })
    }

    fn sink(&mut self) -> &mut Vec<u8> {
        match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }
    }

    /// Compresses `data`, appending whatever output is ready to `out`.
    pub fn write(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.write_all(data)?,
            Encoder::Brotli(e) => e.write_all(data)?,
            Encoder::Zstd(e) => e.write_all(data)?,
        }
        out.append(self.sink());
        Ok(())
    }

    /// Flushes what was written so far (a decodable prefix) onto `out`.
    pub fn flush(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Brotli(e) => e.flush()?,
            Encoder::Zstd(e) => e.flush()?,
        }
        out.append(self.sink());
        Ok(())
    }

    /// Ends the stream, appending the rest of the output to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let mut rest = match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        };
        out.append(&mut rest);
        Ok(())
    }
}

/// `data` compressed whole with `alg` at `level`.
pub fn compress_all(alg: Algorithm, level: u32, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut e = Encoder::new(alg, level)?;
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    e.write(data, &mut out)?;
    e.finish(&mut out)?;
    Ok(out)
}

/// Inflates a request body coded as `coding` (a `Content-Encoding` value),
/// within `limit`: 413 past it, 415 for a coding the gateway does not
/// decode, 400 for a corrupt body.
pub fn inflate(coding: &[u8], body: &[u8], limit: BombLimit) -> Result<Vec<u8>, GatewayError> {
    use std::io::Read;
    let coding = std::str::from_utf8(coding).unwrap_or("").trim();
    let alg = Algorithm::from_token(coding).ok_or(GatewayError::UnsupportedMediaType(
        "the request's Content-Encoding is not gzip, br or zstd",
    ))?;
    let by_ratio = (body.len() as u64).saturating_mul(limit.max_ratio);
    let cap = limit.max_bytes.min(by_ratio.max(1));
    let reader: Box<dyn Read + '_> = match alg {
        Algorithm::Gzip => Box::new(flate2::read::MultiGzDecoder::new(body)),
        Algorithm::Brotli => Box::new(brotli::Decompressor::new(body, 4096)),
        Algorithm::Zstd => Box::new(
            zstd::stream::read::Decoder::new(body)
                .map_err(|_| GatewayError::BadRequest("corrupt zstd request body"))?,
        ),
    };
    // One byte past the cap tells "too large" from "exactly at the cap".
    let mut out = Vec::new();
    let read = reader.take(cap.saturating_add(1)).read_to_end(&mut out);
    match read {
        Err(_) => Err(GatewayError::BadRequest(
            "the request body does not decode as its Content-Encoding says",
        )),
        Ok(n) if n as u64 > cap => Err(GatewayError::PayloadTooLarge),
        Ok(_) => Ok(out),
    }
}

/// Reads a body framed as `framing` from `src`, chunk by chunk.
pub(crate) struct BodySource {
    framing: Framing,
    left: u64,
    dec: ChunkedDecoder,
    done: bool,
}

impl BodySource {
    /// A reader of a body framed as `framing`.
    pub(crate) fn new(framing: Framing) -> BodySource {
        BodySource {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            dec: ChunkedDecoder::default(),
            done: framing == Framing::None,
        }
    }

    /// True once the body's end was read.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// Moves the body data buffered in `src` onto `out`; true once the
    /// body has ended.
    pub(crate) fn take(&mut self, src: &mut Conn, out: &mut Vec<u8>) -> Result<bool, CopyError> {
        match self.framing {
            Framing::None => self.done = true,
            Framing::Length(_) => {
                let k = (src.buffered().len() as u64).min(self.left) as usize;
                out.extend_from_slice(src.buffered().get(..k).unwrap_or_default());
                src.consume(k);
                self.left -= k as u64;
                self.done = self.left == 0;
            }
            Framing::UntilClose => {
                out.extend_from_slice(src.buffered());
                let n = src.buffered().len();
                src.consume(n);
            }
            Framing::Chunked => loop {
                if self.dec.is_done() {
                    self.done = true;
                    break;
                }
                let step = self.dec.step(src.buffered()).map_err(CopyError::BadChunk)?;
                if let Some(r) = step.data.clone() {
                    out.extend_from_slice(src.buffered().get(r).unwrap_or_default());
                }
                src.consume(step.consumed);
                if self.dec.is_done() {
                    self.done = true;
                    break;
                }
                if step.consumed == 0 || src.buffered().is_empty() {
                    break;
                }
            },
        }
        Ok(self.done)
    }

    /// Waits for more of the body; a close-delimited body ends at the close.
    pub(crate) async fn fill(
        &mut self,
        src: &mut Conn,
        timeout: std::time::Duration,
    ) -> Result<(), CopyError> {
        use crate::http::io::IoFail;
        match src.fill(timeout).await {
            Ok(0) if self.framing == Framing::UntilClose => {
                self.done = true;
                Ok(())
            }
            Ok(0) => Err(CopyError::SourceClosed),
            Ok(_) => Ok(()),
            Err(IoFail::Timeout) => Err(CopyError::ReadTimeout),
            Err(IoFail::Io(_)) if self.framing == Framing::UntilClose => {
                self.done = true;
                Ok(())
            }
            Err(IoFail::Io(_)) => Err(CopyError::SourceClosed),
        }
    }
}

/// Reads a whole body into memory, refusing (`TooLarge`) one over `max`.
pub(crate) async fn read_all(
    src: &mut Conn,
    framing: Framing,
    max: u64,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, CopyError> {
    if let Framing::Length(n) = framing {
        if n > max {
            return Err(CopyError::TooLarge);
        }
    }
    let mut body = Vec::new();
    let mut source = BodySource::new(framing);
    loop {
        let ended = source.take(src, &mut body)?;
        if body.len() as u64 > max {
            return Err(CopyError::TooLarge);
        }
        if ended {
            return Ok(body);
        }
        source.fill(src, timeout).await?;
        if source.is_done() {
            return Ok(body);
        }
    }
}

/// A sink that sees a body's bytes as they pass.
pub type Tap<'t> = &'t mut dyn FnMut(&[u8]);

/// Appends `data` to `out` framed as `framing` says.
fn frame(data: &[u8], framing: OutFraming, out: &mut Vec<u8>) {
    if data.is_empty() {
        return;
    }
    match framing {
        OutFraming::Raw => out.extend_from_slice(data),
        OutFraming::Chunked => {
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
    }
}

async fn send(dst: &mut Stream, buf: &mut Vec<u8>, lim: &CopyLimits) -> Result<u64, CopyError> {
    if buf.is_empty() {
        return Ok(0);
    }
    let n = buf.len() as u64;
    let (res, mut back) =
        crate::http::io::write_all_to(dst, std::mem::take(buf), lim.write_timeout).await;
    back.clear();
    *buf = back;
    res.map_err(CopyError::Write)?;
    Ok(n)
}

/// Streams the body framed as `framing` from `src` to `dst` through
/// `enc`, framed as `out` on the way. Never holds more than one read of
/// the source plus the encoder's window; the encoder is flushed before
/// each wait for the source. `tap` sees the uncompressed body piece by
/// piece (for a store that keeps the response as it was before
/// compression). Returns the bytes written.
pub(crate) async fn copy_compressed(
    src: &mut Conn,
    framing: Framing,
    dst: &mut Stream,
    out: OutFraming,
    enc: Encoder,
    lim: CopyLimits,
    mut tap: Option<Tap<'_>>,
) -> Result<u64, CopyError> {
    // Larger reads: fewer flushes, so a better ratio, when the upstream is fast.
    src.reserve_total(STREAM_READ);
    let result = copy_compressed_with(src, framing, dst, out, enc, lim, &mut tap).await;
    src.shrink_to(STREAM_READ / 4);
    result
}

fn io(e: std::io::Error) -> CopyError {
    CopyError::Write(crate::http::io::IoFail::Io(e))
}

/// Read buffer while compressing a stream (given back after).
const STREAM_READ: usize = 128 * 1024;

#[allow(clippy::too_many_arguments)]
async fn copy_compressed_with(
    src: &mut Conn,
    framing: Framing,
    dst: &mut Stream,
    out: OutFraming,
    mut enc: Encoder,
    lim: CopyLimits,
    tap: &mut Option<Tap<'_>>,
) -> Result<u64, CopyError> {
    let mut source = BodySource::new(framing);
    let mut plain = Vec::new();
    let mut packed = Vec::new();
    let mut wire = Vec::new();
    let mut written = 0u64;
    loop {
        plain.clear();
        let ended = source.take(src, &mut plain)?;
        if !plain.is_empty() {
            if let Some(t) = tap.as_mut() {
                t(&plain);
            }
            enc.write(&plain, &mut packed).map_err(io)?;
        }
        if ended {
            break;
        }
        enc.flush(&mut packed).map_err(io)?;
        frame(&packed, out, &mut wire);
        packed.clear();
        written += send(dst, &mut wire, &lim).await?;
        source.fill(src, lim.read_timeout).await?;
        if source.is_done() {
            break;
        }
    }
    enc.finish(&mut packed).map_err(io)?;
    frame(&packed, out, &mut wire);
    if out == OutFraming::Chunked {
        wire.extend_from_slice(b"0\r\n\r\n");
    }
    written += send(dst, &mut wire, &lim).await?;
    Ok(written)
}

/// The fields a decision changes on a response head: names to drop and
/// fields to add (`Vary`, `Content-Encoding`, a weakened `ETag`).
pub fn head_changes(
    decision: Decision,
    resp: &ResponseHead,
) -> (Vec<&'static str>, Vec<(&'static str, String)>) {
    let mut drop = Vec::new();
    let mut extra = Vec::new();
    if decision.vary {
        if let Some(v) = vary_value(resp.header("vary")) {
            drop.push("vary");
            extra.push(("vary", v));
        }
    }
    if let Some((alg, _)) = decision.encode {
        drop.push("content-encoding");
        extra.push(("content-encoding", alg.token().to_string()));
        if let Some(tag) = resp.header("etag").and_then(weak_etag) {
            drop.push("etag");
            extra.push(("etag", tag));
        }
    }
    (drop, extra)
}

/// [`write_buffered`] for a request: the coding is negotiated from its
/// `Accept-Encoding` (for an answer made without the proxy, e.g. a stored
/// one); `plan` is the route's compression, if any.
#[allow(clippy::too_many_arguments)]
pub async fn write_response(
    plan: Option<&CompressPlan>,
    req: &crate::http::RequestHead,
    resp: &ResponseHead,
    body: &[u8],
    client: &mut Conn,
    ex: &mut crate::proxy::Exchange<'_>,
    keep_alive: bool,
) -> crate::proxy::Disposition {
    let chosen = plan.and_then(|p| negotiate(&p.algorithms, req.header("accept-encoding")));
    let head_request = req.method() == "HEAD";
    write_buffered(
        plan,
        chosen,
        resp,
        body,
        client,
        ex,
        keep_alive,
        req.version == 0,
        head_request,
    )
    .await
}

/// Writes a complete response held in memory — `resp` for its status and
/// fields (its framing fields are replaced), `body` for its body — to the
/// client, compressed when `plan` and the client's coding (`chosen`, from
/// [`negotiate`]) allow it, with `Vary` and `Content-Length` set. The
/// transformed responses go out through it; so can any stored response.
#[allow(clippy::too_many_arguments)]
pub async fn write_buffered(
    plan: Option<&CompressPlan>,
    chosen: Option<(Algorithm, u32)>,
    resp: &ResponseHead,
    body: &[u8],
    client: &mut Conn,
    ex: &mut crate::proxy::Exchange<'_>,
    keep_alive: bool,
    http10_client: bool,
    head_request: bool,
) -> crate::proxy::Disposition {
    use crate::proxy::Disposition;
    use crate::transform::head::{self, NewFraming};
    let decision = match plan {
        Some(p) => decide(p, chosen, resp, Some(body.len() as u64), head_request),
        None => Decision::default(),
    };
    let packed = match decision.encode {
        Some((alg, level)) => compress_all(alg, level, body).ok(),
        None => None,
    };
    let decision = Decision {
        encode: decision.encode.filter(|_| packed.is_some()),
        ..decision
    };
    let (drop, extra) = head_changes(decision, resp);
    let out_body: &[u8] = packed.as_deref().unwrap_or(body);
    // A status without a body keeps its fields as they are (no length).
    let bodyless = matches!(resp.status, 100..=199 | 204 | 304);
    let framing = if bodyless {
        NewFraming::Keep
    } else {
        NewFraming::Length(out_body.len())
    };
    let Some(out) = head::response(resp, None, &drop, &extra, framing, false) else {
        return Disposition::Close;
    };
    let out_framing = (!bodyless).then_some(OutFraming::Raw);
    let mut bytes = crate::proxy::client_head(&out, out_framing, ex, keep_alive, http10_client);
    if !head_request && !bodyless {
        bytes.extend_from_slice(out_body);
    }
    ex.seen.status = resp.status;
    ex.seen.bytes_out = bytes.len() as u64;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    ex.response_started = true;
    if r.is_ok() && keep_alive {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const ALL: [(Algorithm, u32); 3] = [
        (Algorithm::Zstd, 3),
        (Algorithm::Brotli, 4),
        (Algorithm::Gzip, 6),
    ];

    fn pick(accept: &str) -> Option<Algorithm> {
        negotiate(&ALL, Some(accept.as_bytes())).map(|(a, _)| a)
    }

    #[test]
    fn negotiation_honours_q_values_and_the_offer_order() {
        assert_eq!(pick("gzip"), Some(Algorithm::Gzip));
        assert_eq!(pick("gzip, br"), Some(Algorithm::Brotli));
        assert_eq!(pick("gzip, deflate, br, zstd"), Some(Algorithm::Zstd));
        assert_eq!(pick("zstd;q=0.5, gzip"), Some(Algorithm::Gzip));
        assert_eq!(pick("gzip;q=0, br;q=0"), None);
        assert_eq!(pick("*;q=0.1, zstd;q=0"), Some(Algorithm::Brotli));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("gzip;q=garbage"), None);
        assert_eq!(pick("X-GZIP;Q=1.000"), Some(Algorithm::Gzip));
        assert_eq!(negotiate(&ALL, None), None);
        assert_eq!(parse_q("0.001"), Some(1));
        assert_eq!(parse_q("1.5"), None);
    }

    fn head(raw: &str) -> ResponseHead {
        match ResponseHead::parse(raw.as_bytes(), 4096, false) {
            Ok(crate::http::Parsed::Complete(h, _)) => h,
            _ => panic!("bad head"),
        }
    }

    #[test]
    fn decisions_follow_status_type_size_and_upstream_coding() {
        let plan = CompressPlan::compile(&Compression {
            algorithms: vec![Algorithm::Gzip],
            min_bytes: 100,
            content_types: vec!["application/json".into(), "text/*".into()],
            level: None,
            decompress_requests: false,
            max_decompressed_bytes: 1,
            max_ratio: 1,
        });
        let gz = Some((Algorithm::Gzip, 6));
        let json = head(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n",
        );
        assert_eq!(decide(&plan, gz, &json, Some(500), false).encode, gz);
        assert!(decide(&plan, None, &json, Some(500), false).vary);
        assert_eq!(decide(&plan, gz, &json, Some(50), false).encode, None);
        assert_eq!(decide(&plan, gz, &json, Some(500), true).encode, None);
        let text = head("HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(decide(&plan, gz, &text, None, false).encode, gz);
        let png = head("HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 500\r\n\r\n");
        assert_eq!(
            decide(&plan, gz, &png, Some(500), false),
            Decision::default()
        );
        let coded = head("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-encoding: br\r\ncontent-length: 500\r\n\r\n");
        assert_eq!(
            decide(&plan, gz, &coded, Some(500), false),
            Decision::default()
        );
        let partial = head("HTTP/1.1 206 Partial Content\r\ncontent-type: text/plain\r\ncontent-length: 500\r\n\r\n");
        assert_eq!(
            decide(&plan, gz, &partial, Some(500), false),
            Decision::default()
        );
        let keep = head("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncache-control: public, no-transform\r\ncontent-length: 500\r\n\r\n");
        assert_eq!(
            decide(&plan, gz, &keep, Some(500), false),
            Decision::default()
        );
        assert_eq!(
            vary_value(Some(b"Origin")).as_deref(),
            Some("Origin, Accept-Encoding")
        );
        assert_eq!(vary_value(Some(b"accept-encoding")), None);
        assert_eq!(weak_etag(b"\"x\"").as_deref(), Some("W/\"x\""));
        assert_eq!(weak_etag(b"W/\"x\""), None);
    }

    fn decode(alg: Algorithm, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        match alg {
            Algorithm::Gzip => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
            Algorithm::Brotli => brotli::Decompressor::new(data, 4096).read_to_end(&mut out),
            Algorithm::Zstd => zstd::stream::read::Decoder::new(data)
                .unwrap()
                .read_to_end(&mut out),
        }
        .unwrap();
        out
    }

    #[test]
    fn streamed_output_decodes_to_the_input_at_every_flush() {
        let input: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("{{\"id\":{i},\"name\":\"item\"}},").into_bytes())
            .collect();
        for (alg, level) in ALL {
            let mut e = Encoder::new(alg, level).unwrap();
            let mut out = Vec::new();
            for piece in input.chunks(7_777) {
                e.write(piece, &mut out).unwrap();
                e.flush(&mut out).unwrap();
            }
            e.finish(&mut out).unwrap();
            assert!(out.len() < input.len() / 4, "{alg:?} compresses");
            assert_eq!(decode(alg, &out), input, "{alg:?} round trip");
        }
    }

    #[test]
    fn inflation_is_bounded_by_size_and_ratio() {
        let big = vec![b'a'; 1_000_000];
        let limit = BombLimit {
            max_bytes: 10_000_000,
            max_ratio: 100,
        };
        for (alg, level) in ALL {
            let packed = compress_all(alg, level, &big).unwrap();
            // About a thousand to one: over the ratio.
            assert!(matches!(
                inflate(alg.token().as_bytes(), &packed, limit),
                Err(GatewayError::PayloadTooLarge)
            ));
            let loose = BombLimit {
                max_bytes: 2_000_000,
                max_ratio: 100_000,
            };
            assert_eq!(
                inflate(alg.token().as_bytes(), &packed, loose).unwrap(),
                big
            );
            let tight = BombLimit {
                max_bytes: 999_999,
                max_ratio: 100_000,
            };
            assert!(inflate(alg.token().as_bytes(), &packed, tight).is_err());
        }
        assert!(matches!(
            inflate(b"deflate", b"x", limit),
            Err(GatewayError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            inflate(b"gzip", b"not gzip", limit),
            Err(GatewayError::BadRequest(_))
        ));
    }
}
