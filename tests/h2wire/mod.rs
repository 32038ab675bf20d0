//! Raw HTTP/2 on a `TcpStream` for the frame-level tests against the real
//! gateway: frames built and read by hand, an HPACK encoder (literal fields,
//! no Huffman, no indexing, so any block can be written, malformed ones
//! too) and a full HPACK decoder (static and dynamic table, Huffman) for
//! what the gateway answers.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// The client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One frame on the wire.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn ping(flags: u8, data: [u8; 8]) -> Vec<u8> {
    frame(PING, flags, 0, &data)
}

pub fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &p)
}

/// A frame as read, with the decoded header list of a complete header
/// block (HEADERS with END_HEADERS, or the CONTINUATION that ended it).
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    pub headers: Option<Vec<(String, String)>>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn error_code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A GOAWAY's last stream id.
    pub fn last_stream(&self) -> Option<u32> {
        let b = self.payload.get(..4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .as_ref()?
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn status(&self) -> Option<u16> {
        self.header(":status")?.parse().ok()
    }

    pub fn end_stream(&self) -> bool {
        matches!(self.kind, DATA | HEADERS) && self.flags & END_STREAM != 0
    }
}

/// What reading found.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// The peer closed (EOF or reset).
    Closed,
    /// Nothing came within the wait.
    Quiet,
}

/// The answer to one stream.
#[derive(Debug, Default, Clone)]
pub struct Answer {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Option<Vec<(String, String)>>,
    /// RST_STREAM's code, if the stream was reset.
    pub reset: Option<u32>,
    /// The stream ended (END_STREAM seen).
    pub ended: bool,
}

impl Answer {
    pub fn status(&self) -> Option<u16> {
        self.header(":status")?.parse().ok()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A raw HTTP/2 client connection.
pub struct H2 {
    pub sock: TcpStream,
    /// Bytes read, from `at` on not yet taken as frames.
    buf: Vec<u8>,
    at: usize,
    decoder: Decoder,
    /// A header block being continued.
    fragment: Option<Vec<u8>>,
    /// Sends WINDOW_UPDATE for every DATA received (off: the windows run dry).
    pub auto_window: bool,
    /// Acknowledges the server's SETTINGS and answers its PINGs.
    pub auto_ack: bool,
    /// Every GOAWAY seen.
    pub goaways: Vec<Frame>,
    /// The server's SETTINGS (the first, non-ACK frame).
    pub server_settings: Vec<(u16, u32)>,
    pub closed: bool,
}

impl H2 {
    /// A TCP connection, nothing sent yet.
    pub fn tcp(port: u16) -> H2 {
        let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
        sock.set_nodelay(true).unwrap();
        sock.set_write_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        H2 {
            sock,
            buf: Vec::new(),
            at: 0,
            decoder: Decoder::new(4096),
            fragment: None,
            auto_window: true,
            auto_ack: true,
            goaways: Vec::new(),
            server_settings: Vec::new(),
            closed: false,
        }
    }

    /// Preface and SETTINGS with `pairs` sent; the server's SETTINGS read
    /// and acknowledged.
    pub fn connect_with(port: u16, pairs: &[(u16, u32)]) -> H2 {
        let mut c = H2::tcp(port);
        c.send(PREFACE);
        c.send(&settings(pairs));
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.server_settings.is_empty() {
            assert!(Instant::now() < deadline, "no SETTINGS from the server");
            match c.next(Duration::from_secs(5)) {
                Event::Frame(_) => {}
                e => panic!("no SETTINGS from the server: {e:?}"),
            }
        }
        c
    }

    /// [`H2::connect_with`] with no settings.
    pub fn connect(port: u16) -> H2 {
        H2::connect_with(port, &[])
    }

    /// Writes bytes; `false` when the server closed its side.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.sock.write_all(bytes).is_ok()
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.sock.write_all(bytes).expect("write to the gateway");
    }

    /// A request's HEADERS (one frame, END_HEADERS).
    pub fn request(&mut self, stream: u32, headers: &[(&str, &str)], end_stream: bool) {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.send(&frame(HEADERS, flags, stream, &block(headers)));
    }

    /// A GET for `path`.
    pub fn get(&mut self, stream: u32, path: &str) {
        self.request(stream, &get_headers(path), true);
    }

    /// The next frame, or that the connection closed or stayed quiet.
    pub fn next(&mut self, wait: Duration) -> Event {
        if self.closed {
            return Event::Closed;
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some(f) = self.pop() {
                return Event::Frame(f);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Event::Quiet;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    self.closed = true;
                    return Event::Closed;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Event::Quiet;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.closed = true;
                    return Event::Closed;
                }
            }
        }
    }

    fn pop(&mut self) -> Option<Frame> {
        let buf = self.buf.get(self.at..)?;
        if buf.len() < 9 {
            return None;
        }
        let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
        if buf.len() < 9 + len {
            return None;
        }
        let mut f = Frame {
            kind: buf[3],
            flags: buf[4],
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
            payload: buf[9..9 + len].to_vec(),
            headers: None,
        };
        // Consumed bytes are dropped in bulk, not per frame.
        self.at += 9 + len;
        if self.at > 1 << 20 || self.at == self.buf.len() {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.react(&mut f);
        Some(f)
    }

    /// Decodes header blocks (keeping the HPACK state), acknowledges
    /// SETTINGS and PING, and opens the windows again, as configured.
    fn react(&mut self, f: &mut Frame) {
        match f.kind {
            HEADERS => {
                let fragment = header_fragment(f);
                self.header_block(f, fragment);
            }
            CONTINUATION => {
                let mut fragment = self.fragment.take().unwrap_or_default();
                fragment.extend_from_slice(&f.payload);
                self.header_block(f, fragment);
            }
            SETTINGS if f.flags & ACK == 0 => {
                if self.server_settings.is_empty() {
                    self.server_settings = f
                        .payload
                        .chunks_exact(6)
                        .map(|c| {
                            (
                                u16::from_be_bytes([c[0], c[1]]),
                                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                            )
                        })
                        .collect();
                    // An empty SETTINGS still counts as received.
                    if self.server_settings.is_empty() {
                        self.server_settings.push((0, 0));
                    }
                }
                if self.auto_ack {
                    let _ = self.try_send(&frame(SETTINGS, ACK, 0, &[]));
                }
            }
            PING if f.flags & ACK == 0 && self.auto_ack => {
                let _ = self.try_send(&frame(PING, ACK, 0, &f.payload));
            }
            DATA if self.auto_window && !f.payload.is_empty() => {
                let n = f.payload.len() as u32;
                let mut out = window_update(0, n);
                if f.flags & END_STREAM == 0 {
                    out.extend(window_update(f.stream, n));
                }
                let _ = self.try_send(&out);
            }
            GOAWAY => self.goaways.push(f.clone()),
            _ => {}
        }
    }

    /// Decodes a header block that `f` ends, or keeps it for the
    /// CONTINUATION to come.
    fn header_block(&mut self, f: &mut Frame, fragment: Vec<u8>) {
        if f.flags & END_HEADERS == 0 {
            self.fragment = Some(fragment);
            return;
        }
        let headers = self.decoder.decode(&fragment);
        f.headers = Some(headers.expect("HPACK from the server"));
    }

    /// Frames until the connection closes or stays quiet for `wait`.
    pub fn drain(&mut self, wait: Duration) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Event::Frame(f) = self.next(wait) {
            out.push(f);
        }
        out
    }

    /// Reads until the connection is closed, at most `wait` in all; whether
    /// it closed.
    pub fn wait_closed(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Event::Closed => return true,
                Event::Quiet => return false,
                Event::Frame(_) => {}
            }
        }
    }

    /// Reads the answer to `stream`: up to its end, its reset, a GOAWAY that
    /// leaves it out, or the connection's end, at most `wait` in all.
    pub fn answer(&mut self, stream: u32, wait: Duration) -> Answer {
        let deadline = Instant::now() + wait;
        let mut a = Answer::default();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = match self.next(left) {
                Event::Frame(f) => f,
                Event::Closed | Event::Quiet => return a,
            };
            if f.kind == GOAWAY && f.last_stream().is_some_and(|l| l < stream) {
                return a;
            }
            if f.stream != stream {
                continue;
            }
            match f.kind {
                HEADERS | CONTINUATION => {
                    if let Some(h) = f.headers.clone() {
                        if a.headers.is_empty() {
                            a.headers = h;
                        } else {
                            a.trailers = Some(h);
                        }
                    }
                }
                DATA => a.body.extend_from_slice(&data_payload(&f)),
                RST_STREAM => {
                    a.reset = f.error_code();
                    return a;
                }
                _ => {}
            }
            // END_STREAM on a HEADERS whose block goes on ends the stream
            // with the CONTINUATION that ends the block.
            if f.end_stream() || (f.kind == CONTINUATION && a.ended) {
                a.ended = true;
                if f.kind == DATA || f.flags & END_HEADERS != 0 {
                    return a;
                }
            }
        }
    }

    /// A GOAWAY with its code, if one came.
    pub fn goaway_code(&self) -> Option<u32> {
        self.goaways.last().and_then(Frame::error_code)
    }
}

/// The header block fragment of a HEADERS frame (padding and priority off).
fn header_fragment(f: &Frame) -> Vec<u8> {
    let mut p = &f.payload[..];
    let mut pad = 0usize;
    if f.flags & PADDED != 0 && !p.is_empty() {
        pad = p[0] as usize;
        p = &p[1..];
    }
    if f.flags & PRIORITY_FLAG != 0 && p.len() >= 5 {
        p = &p[5..];
    }
    p[..p.len().saturating_sub(pad)].to_vec()
}

/// The data of a DATA frame (padding off).
fn data_payload(f: &Frame) -> Vec<u8> {
    if f.flags & PADDED != 0 && !f.payload.is_empty() {
        let pad = f.payload[0] as usize;
        return f.payload[1..f.payload.len().saturating_sub(pad).max(1)].to_vec();
    }
    f.payload.clone()
}

/// The pseudo-header fields of a GET.
pub fn get_headers(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
        (":path", path),
    ]
}

// ---------------------------------------------------------------------------
// HPACK
// ---------------------------------------------------------------------------

/// An HPACK integer with an `n`-bit prefix, `first` holding the bits above it.
pub fn hpack_int(first: u8, n: u32, value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut v = value - max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A string literal without Huffman coding.
pub fn hpack_str(s: &[u8], out: &mut Vec<u8>) {
    hpack_int(0, 7, s.len(), out);
    out.extend_from_slice(s);
}

/// A header block of literal fields without indexing (new names).
pub fn block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in headers {
        out.push(0x00);
        hpack_str(n.as_bytes(), &mut out);
        hpack_str(v.as_bytes(), &mut out);
    }
    out
}

/// A literal field with incremental indexing (new name): enters the
/// decoder's dynamic table.
pub fn indexed_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x40];
    hpack_str(name.as_bytes(), &mut out);
    hpack_str(value.as_bytes(), &mut out);
    out
}

/// An indexed field (static 1..=61, dynamic from 62).
pub fn indexed(index: usize) -> Vec<u8> {
    let mut out = Vec::new();
    hpack_int(0x80, 7, index, &mut out);
    out
}

const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Huffman code lengths of the symbols 0..=255 (RFC 7541 Appendix B; the
/// code is canonical, so the lengths determine the codes).
const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// An HPACK decoder with its dynamic table.
pub struct Decoder {
    table: VecDeque<(String, String)>,
    size: usize,
    max: usize,
    huffman: HashMap<(u8, u32), u8>,
}

impl Decoder {
    pub fn new(max: usize) -> Decoder {
        // Canonical codes: by length, then by symbol.
        let mut order: Vec<(u8, u8)> = (0..=255u8)
            .map(|s| (HUFFMAN_LENGTHS[s as usize], s))
            .collect();
        order.sort();
        let mut huffman = HashMap::new();
        let mut code = 0u32;
        let mut prev = order[0].0;
        for (len, sym) in order {
            code <<= len - prev;
            prev = len;
            huffman.insert((len, code), sym);
            code += 1;
        }
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max,
            huffman,
        }
    }

    fn get(&self, index: usize) -> Result<(String, String), String> {
        if index == 0 {
            return Err("index 0".into());
        }
        if let Some((n, v)) = STATIC.get(index - 1) {
            return Ok((n.to_string(), v.to_string()));
        }
        self.table
            .get(index - 62)
            .cloned()
            .ok_or_else(|| format!("index {index} out of the table"))
    }

    fn insert(&mut self, name: String, value: String) {
        self.size += name.len() + value.len() + 32;
        self.table.push_front((name, value));
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max {
            let Some((n, v)) = self.table.pop_back() else {
                break;
            };
            self.size -= n.len() + v.len() + 32;
        }
    }

    pub fn decode(&mut self, mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        while let Some(&first) = b.first() {
            if first & 0x80 != 0 {
                let i = int(&mut b, 7)?;
                out.push(self.get(i)?);
            } else if first & 0xe0 == 0x20 {
                self.max = int(&mut b, 5)?;
                self.evict();
            } else {
                let (prefix, index) = if first & 0xc0 == 0x40 {
                    (6, true)
                } else {
                    (4, false)
                };
                let i = int(&mut b, prefix)?;
                let name = if i == 0 {
                    self.string(&mut b)?
                } else {
                    self.get(i)?.0
                };
                let value = self.string(&mut b)?;
                if index {
                    self.insert(name.clone(), value.clone());
                }
                out.push((name, value));
            }
        }
        Ok(out)
    }

    fn string(&self, b: &mut &[u8]) -> Result<String, String> {
        let huffman = b.first().ok_or("no string")? & 0x80 != 0;
        let len = int(b, 7)?;
        if b.len() < len {
            return Err("string past the block".into());
        }
        let (raw, rest) = b.split_at(len);
        *b = rest;
        let bytes = if huffman {
            self.unhuffman(raw)?
        } else {
            raw.to_vec()
        };
        String::from_utf8(bytes).map_err(|e| e.to_string())
    }

    fn unhuffman(&self, raw: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let (mut code, mut len) = (0u32, 0u8);
        for byte in raw {
            for bit in (0..8).rev() {
                code = code << 1 | u32::from(byte >> bit & 1);
                len += 1;
                if let Some(&sym) = self.huffman.get(&(len, code)) {
                    out.push(sym);
                    code = 0;
                    len = 0;
                } else if len > 30 {
                    return Err("bad Huffman code".into());
                }
            }
        }
        // Padding: fewer than 8 bits, all ones.
        if len >= 8 || code != (1u32 << len) - 1 {
            return Err("bad Huffman padding".into());
        }
        Ok(out)
    }
}

fn int(b: &mut &[u8], n: u32) -> Result<usize, String> {
    let max = (1usize << n) - 1;
    let first = *b.first().ok_or("no integer")? as usize & max;
    *b = &b[1..];
    if first < max {
        return Ok(first);
    }
    let (mut v, mut shift) = (max, 0);
    loop {
        let byte = *b.first().ok_or("integer past the block")?;
        *b = &b[1..];
        v += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
        if shift > 28 {
            return Err("integer too large".into());
        }
    }
}

// ---------------------------------------------------------------------------
// Gateway helpers
// ---------------------------------------------------------------------------

/// A gateway config with one listener on `$PORT` that speaks h2c
/// (`http2_limits` given as the fields of `Http2Limits(...)`), the HTTP
/// limits `limits`, and the given top-level extra fields, upstreams map
/// body and routes list body.
pub fn h2_config(
    h2_limits: &str,
    limits: &str,
    top: &str,
    upstreams: &str,
    routes: &str,
) -> String {
    format!(
        "Gateway(\n    shards: Count(1),\n    listeners: [Listener(name: \"main\", bind: \"127.0.0.1:$PORT\", http2: true, http2_limits: Http2Limits({h2_limits}))],\n    limits_http: {limits},\n    shutdown_grace_ms: 5000,\n    {top}\n    upstreams: {{\n{upstreams}\n    }},\n    routes: [\n{routes}\n    ],\n)\n"
    )
}

/// What curl got.
#[derive(Debug)]
pub struct Curl {
    /// `2`, `1.1`, ... (curl's `http_version`).
    pub version: String,
    pub status: u16,
    /// The response head (`-i`), lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl Curl {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl with `args` (a URL among them), the head and body on stdout.
pub fn curl(args: &[&str]) -> Curl {
    curl_with_stdin(args, None)
}

/// [`curl`] with a file as its standard input.
pub fn curl_with_stdin(args: &[&str], stdin: Option<&std::path::Path>) -> Curl {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-i",
        "--max-time",
        "60",
        "-w",
        "\n%{http_version} %{http_code}",
    ])
    .args(args);
    if let Some(path) = stdin {
        cmd.stdin(std::fs::File::open(path).expect("curl's stdin"));
    }
    let out = cmd.output().expect("curl runs");
    let mut stdout = out.stdout;
    let at = stdout.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let tail = String::from_utf8_lossy(&stdout[(at + 1).min(stdout.len())..]).to_string();
    stdout.truncate(at);
    let mut parts = tail.split_whitespace();
    let version = parts.next().unwrap_or("").to_string();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = match stdout.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => (stdout[..end].to_vec(), stdout[end + 4..].to_vec()),
        None => (stdout, Vec::new()),
    };
    let head = String::from_utf8_lossy(&head);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut headers: Vec<(String, String)> = headers;
    if let Some(first) = head.lines().next() {
        headers.insert(0, (":line".into(), first.trim().to_string()));
    }
    Curl {
        version,
        status,
        headers,
        body,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl with prior knowledge: (HTTP version, status, body) of a GET.
pub fn curl_h2c(port: u16, path: &str) -> (String, u16, Vec<u8>) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let c = curl(&["--http2-prior-knowledge", &url]);
    (c.version, c.status, c.body)
}

/// Checks that the gateway still answers others promptly: an HTTP/1.1 GET
/// on a new connection and an h2c GET by curl on another, both 200 for
/// `path`, each within a few seconds.
pub fn assert_responsive(port: u16, path: &str) {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect for HTTP/1.1");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "HTTP/1.1 request after the attack: {text:?}"
    );
    let (version, status, _) = curl_h2c(port, path);
    assert_eq!(
        (version.as_str(), status),
        ("2", 200),
        "h2c request after the attack"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the gateway took {:?} to answer two requests",
        started.elapsed()
    );
}

/// Resident set size of a process in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_round_trip_and_rfc_examples() {
        let mut d = Decoder::new(4096);
        let b = block(&[(":status", "200"), ("x-a", "b")]);
        assert_eq!(
            d.decode(&b).unwrap(),
            vec![(":status".into(), "200".into()), ("x-a".into(), "b".into())]
        );
        // RFC 7541 C.4.1: a request with Huffman-coded strings.
        let c41 = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let got = d.decode(&c41).unwrap();
        assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
        // C.4.2: the dynamic table entry is reused.
        let c42 = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let got = d.decode(&c42).unwrap();
        assert_eq!(got[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(got[4], ("cache-control".into(), "no-cache".into()));
    }
}
