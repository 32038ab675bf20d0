//! gRPC message framing: every message on the wire is a 1-byte flags field
//! (bit 0: compressed), a 4-byte big-endian length and the message bytes.
//! Also the writer of server-streaming answers as one JSON array or as
//! newline-delimited JSON.

use std::fmt;

/// Length of the prefix before every message.
pub const HEADER_LEN: usize = 5;

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The compressed flag is set; the gateway asks for no compression
    /// (it sends no `grpc-accept-encoding`), so a compressed message is an
    /// upstream fault.
    Compressed,
    /// A flags byte other than 0 or 1.
    BadFlags(u8),
    /// The message is longer than the configured cap.
    TooLarge { len: usize, max: usize },
    /// The body ended inside a frame.
    Truncated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Compressed => f.write_str(
                "compressed gRPC message (flag 1): compression was not negotiated and is refused",
            ),
            FrameError::BadFlags(b) => write!(f, "gRPC frame with unknown flags byte {b:#04x}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "gRPC message of {len} bytes is over the {max}-byte cap")
            }
            FrameError::Truncated => f.write_str("gRPC body ends inside a message frame"),
        }
    }
}

/// Appends `message` as one uncompressed frame to `out`.
pub fn encode(message: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u32::try_from(message.len()).map_err(|_| FrameError::TooLarge {
        len: message.len(),
        max: u32::MAX as usize,
    })?;
    out.reserve(HEADER_LEN + message.len());
    out.push(0);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Ok(())
}

/// Reads the frame at the start of `buf`: `Ok(Some((message, used)))`,
/// `Ok(None)` when `buf` holds only part of it.
pub fn decode_one(buf: &[u8], max: usize) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(&[flags, l0, l1, l2, l3]) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    match flags {
        0 => {}
        1 => return Err(FrameError::Compressed),
        other => return Err(FrameError::BadFlags(other)),
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    match buf.get(HEADER_LEN..HEADER_LEN + len) {
        Some(message) => Ok(Some((message, HEADER_LEN + len))),
        None => Ok(None),
    }
}

/// Splits a whole body into its messages; a partial frame at the end is
/// [`FrameError::Truncated`].
pub fn decode_all(mut body: &[u8], max: usize) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        match decode_one(body, max)? {
            Some((message, used)) => {
                out.push(message);
                body = body.get(used..).unwrap_or_default();
            }
            None => return Err(FrameError::Truncated),
        }
    }
    Ok(out)
}

/// Incremental frame reader for a streamed body. Memory stays bounded by
/// one frame: a frame's length is checked against the cap as soon as its
/// header arrives, and the caller drains [`FrameDecoder::next_message`]
/// after every [`FrameDecoder::push`].
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    pos: usize,
    max: usize,
}

impl FrameDecoder {
    /// A decoder refusing messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        FrameDecoder {
            buf: Vec::new(),
            pos: 0,
            max,
        }
    }

    /// Adds bytes read from the body.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match decode_one(rest, self.max)? {
            Some((message, used)) => {
                let message = message.to_vec();
                self.pos += used;
                Ok(Some(message))
            }
            None => Ok(None),
        }
    }

    /// Bytes buffered but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// At the end of the body: an error if it stopped inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.pending() == 0 {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

/// How a server-streaming method's messages are written to an HTTP client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StreamMode {
    /// One JSON array, `[{..},{..}]`, written as the messages arrive.
    #[default]
    JsonArray,
    /// One JSON object per line (`application/x-ndjson`).
    Ndjson,
}

impl StreamMode {
    /// The response `Content-Type` of the mode.
    pub fn content_type(self) -> &'static str {
        match self {
            StreamMode::JsonArray => "application/json",
            StreamMode::Ndjson => "application/x-ndjson",
        }
    }
}

/// Writes the JSON of streamed messages in a [`StreamMode`]: `item` for
/// each message, then `finish` (or `error` then `finish` when the stream
/// ends with a non-OK status after the response head is out: the error
/// object `{"error":{..}}` becomes the last element or line).
#[derive(Debug)]
pub struct StreamWriter {
    mode: StreamMode,
    items: usize,
}

impl StreamWriter {
    pub fn new(mode: StreamMode) -> Self {
        StreamWriter { mode, items: 0 }
    }

    pub fn mode(&self) -> StreamMode {
        self.mode
    }

    /// Appends one message's JSON.
    pub fn item(&mut self, json: &[u8], out: &mut Vec<u8>) {
        match self.mode {
            StreamMode::JsonArray => {
                out.push(if self.items == 0 { b'[' } else { b',' });
                out.extend_from_slice(json);
            }
            StreamMode::Ndjson => {
                out.extend_from_slice(json);
                out.push(b'\n');
            }
        }
        self.items += 1;
    }

    /// Appends `{"error": <error_json>}` as the last element.
    pub fn error(&mut self, error_json: &[u8], out: &mut Vec<u8>) {
        let mut wrapped = Vec::with_capacity(error_json.len() + 10);
        wrapped.extend_from_slice(b"{\"error\":");
        wrapped.extend_from_slice(error_json);
        wrapped.push(b'}');
        self.item(&wrapped, out);
    }

    /// Closes the answer.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.mode == StreamMode::JsonArray {
            if self.items == 0 {
                out.push(b'[');
            }
            out.push(b']');
        }
    }

    /// Messages written so far.
    pub fn items(&self) -> usize {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_round_trips() {
        let mut body = Vec::new();
        encode(b"hello", &mut body).unwrap();
        encode(b"", &mut body).unwrap();
        encode(&[7u8; 300], &mut body).unwrap();
        assert_eq!(&body[..5], &[0, 0, 0, 0, 5]);
        let messages = decode_all(&body, 1024).unwrap();
        assert_eq!(messages, vec![&b"hello"[..], &b""[..], &[7u8; 300][..]]);
    }

    #[test]
    fn refuses_compressed_unknown_flags_oversize_and_truncated() {
        assert_eq!(
            decode_all(&[1, 0, 0, 0, 1, 9], 10),
            Err(FrameError::Compressed)
        );
        assert_eq!(
            decode_all(&[0x80, 0, 0, 0, 0], 10),
            Err(FrameError::BadFlags(0x80))
        );
        assert_eq!(
            decode_all(&[0, 0, 0, 1, 0], 10),
            Err(FrameError::TooLarge { len: 256, max: 10 })
        );
        assert_eq!(
            decode_all(&[0, 0, 0, 0, 3, 1], 10),
            Err(FrameError::Truncated)
        );
        assert_eq!(decode_all(&[0, 0], 10), Err(FrameError::Truncated));
        assert!(FrameError::Compressed.to_string().contains("compress"));
    }

    #[test]
    fn incremental_decoder_handles_any_split() {
        let mut body = Vec::new();
        for i in 0..20u8 {
            encode(&vec![i; usize::from(i) * 3], &mut body).unwrap();
        }
        for chunk in [1, 2, 5, 7, 64, body.len()] {
            let mut dec = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for part in body.chunks(chunk) {
                dec.push(part);
                while let Some(m) = dec.next_message().unwrap() {
                    got.push(m);
                }
            }
            dec.finish().unwrap();
            assert_eq!(got.len(), 20, "chunk {chunk}");
            for (i, m) in got.iter().enumerate() {
                assert_eq!(m, &vec![i as u8; i * 3]);
            }
        }
    }

    #[test]
    fn incremental_decoder_checks_the_cap_at_the_header() {
        let mut dec = FrameDecoder::new(100);
        dec.push(&[0, 0, 1, 0, 0]);
        assert_eq!(
            dec.next_message(),
            Err(FrameError::TooLarge {
                len: 65536,
                max: 100
            })
        );
        let mut dec = FrameDecoder::new(100);
        dec.push(&[0, 0, 0, 0, 4, 1]);
        assert_eq!(dec.next_message(), Ok(None));
        assert_eq!(dec.finish(), Err(FrameError::Truncated));
    }

    #[test]
    fn stream_writer_json_array() {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(StreamMode::JsonArray);
        w.finish(&mut out);
        assert_eq!(out, b"[]");
        let mut out = Vec::new();
        let mut w = StreamWriter::new(StreamMode::JsonArray);
        w.item(br#"{"a":1}"#, &mut out);
        w.item(br#"{"a":2}"#, &mut out);
        w.error(br#"{"code":14}"#, &mut out);
        w.finish(&mut out);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{"a":1},{"a":2},{"error":{"code":14}}])
        );
        assert_eq!(w.items(), 3);
    }

    #[test]
    fn stream_writer_ndjson() {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(StreamMode::Ndjson);
        w.item(br#"{"a":1}"#, &mut out);
        w.item(br#"{"a":2}"#, &mut out);
        w.finish(&mut out);
        assert_eq!(out, b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(StreamMode::Ndjson.content_type(), "application/x-ndjson");
    }
}
