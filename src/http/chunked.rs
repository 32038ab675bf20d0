//! An incremental, strict decoder for `Transfer-Encoding: chunked`.
//!
//! It is fed whatever bytes are buffered and says how many it consumed and
//! which of them are body data, so data is forwarded without copying. Strict
//! on purpose (request smuggling): sizes are 1–16 hex digits, every line ends
//! in CRLF, extensions and trailers are bounded and dropped.

/// Longest chunk-size line (size, extensions) accepted.
const MAX_SIZE_LINE: usize = 4096;
/// Most trailer bytes accepted.
const MAX_TRAILERS: usize = 8192;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A size line that is not hex, too long, or not CRLF-terminated.
    BadSize,
    /// Chunk data not followed by CRLF.
    BadDelimiter,
    /// Trailer section too large or malformed.
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size { digits: u8, value: u64 },
    Ext { value: u64 },
    SizeLf { value: u64 },
    Data { left: u64 },
    DataCr,
    DataLf,
    TrailerLineStart,
    TrailerLine,
    TrailerLf { empty: bool },
    Done,
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Input bytes consumed by this step.
    pub consumed: usize,
    /// Body data inside the consumed bytes, as a range of the input.
    pub data: Option<std::ops::Range<usize>>,
}

/// Decoder state for one chunked body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line_len: usize,
    trailer_len: usize,
    /// The trailer section's lines (CRLF-terminated), when asked to keep them.
    trailers: Option<Vec<u8>>,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                digits: 0,
                value: 0,
            },
            line_len: 0,
            trailer_len: 0,
            trailers: None,
        }
    }
}

impl ChunkedDecoder {
    /// A decoder that keeps the trailer section (see [`ChunkedDecoder::take_trailers`]).
    pub fn keeping_trailers() -> Self {
        ChunkedDecoder {
            trailers: Some(Vec::new()),
            ..Default::default()
        }
    }

    /// The trailer lines read so far, raw and CRLF-terminated (empty when
    /// there were none or they are not kept).
    pub fn take_trailers(&mut self) -> Vec<u8> {
        self.trailers
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// True once the terminating chunk and trailers were read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes from `input` until it yields data, finishes, or needs more input.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while let Some(&b) = input.get(i) {
            match self.state {
                State::Size { digits, value } => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(ChunkError::BadSize);
                    }
                    match (b as char).to_digit(16) {
                        Some(d) if digits < 16 => {
                            self.state = State::Size {
                                digits: digits + 1,
                                value: (value << 4) | u64::from(d),
                            }
                        }
                        Some(_) => return Err(ChunkError::BadSize),
                        None if digits == 0 => return Err(ChunkError::BadSize),
                        None if b == b';' => self.state = State::Ext { value },
                        None if b == b'\r' => self.state = State::SizeLf { value },
                        None => return Err(ChunkError::BadSize),
                    }
                }
                State::Ext { value } => {
                    self.line_len += 1;
                    if self.line_len > MAX_SIZE_LINE {
                        return Err(ChunkError::BadSize);
                    }
                    if b == b'\r' {
                        self.state = State::SizeLf { value };
                    } else if b == b'\n' || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(ChunkError::BadSize);
                    }
                }
                State::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadSize);
                    }
                    self.line_len = 0;
                    self.state = if value == 0 {
                        State::TrailerLineStart
                    } else {
                        State::Data { left: value }
                    };
                }
                State::Data { left } => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(left);
                    let end = i + take as usize;
                    self.state = if take == left {
                        State::DataCr
                    } else {
                        State::Data { left: left - take }
                    };
                    return Ok(Step {
                        consumed: end,
                        data: Some(i..end),
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadDelimiter);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadDelimiter);
                    }
                    self.state = State::Size {
                        digits: 0,
                        value: 0,
                    };
                }
                State::TrailerLineStart | State::TrailerLine => {
                    self.trailer_len += 1;
                    if self.trailer_len > MAX_TRAILERS {
                        return Err(ChunkError::BadTrailer);
                    }
                    if let Some(t) = &mut self.trailers {
                        t.push(b);
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf {
                            empty: self.state == State::TrailerLineStart,
                        };
                    } else if b == b'\n' {
                        return Err(ChunkError::BadTrailer);
                    } else {
                        self.state = State::TrailerLine;
                    }
                }
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(ChunkError::BadTrailer);
                    }
                    if empty {
                        // The final empty line is not part of the section.
                        if let Some(t) = &mut self.trailers {
                            t.pop();
                        }
                        self.state = State::Done;
                        return Ok(Step {
                            consumed: i + 1,
                            data: None,
                        });
                    }
                    if let Some(t) = &mut self.trailers {
                        t.push(b'\n');
                    }
                    self.state = State::TrailerLineStart;
                }
                State::Done => {
                    return Ok(Step {
                        consumed: i,
                        data: None,
                    })
                }
            }
            i += 1;
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_trailers_when_asked() {
        let input = b"3\r\nabc\r\n0\r\nX-A: 1\r\nX-B: 2\r\n\r\n";
        for keep in [false, true] {
            let mut d = if keep {
                ChunkedDecoder::keeping_trailers()
            } else {
                ChunkedDecoder::default()
            };
            let mut at = 0;
            while !d.is_done() {
                let step = d.step(input.get(at..).unwrap_or_default()).unwrap();
                at += step.consumed;
            }
            let want: &[u8] = if keep { b"X-A: 1\r\nX-B: 2\r\n" } else { b"" };
            assert_eq!(d.take_trailers(), want);
        }
    }

    fn decode_all(input: &[u8], feed: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        loop {
            let step = d.step(&buf)?;
            if let Some(r) = step.data.clone() {
                out.extend_from_slice(&buf[r]);
            }
            buf.drain(..step.consumed);
            if d.is_done() {
                break;
            }
            if step.consumed == 0 {
                if fed >= input.len() {
                    break;
                }
                let end = (fed + feed).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
        Ok((out, d.is_done()))
    }

    #[test]
    fn decodes_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for feed in 1..body.len() {
            let (out, done) = decode_all(body, feed).unwrap();
            assert_eq!(out, b"hello0123456789");
            assert!(done);
        }
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloX\r\n",
            b"11111111111111111\r\n",
            b" 5\r\nhello\r\n",
            b"0\r\nbad\ntrailer\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 64).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn stops_at_end_of_body() {
        let mut d = ChunkedDecoder::default();
        let input = b"0\r\n\r\nGET / HTTP/1.1";
        let s = d.step(input).unwrap();
        assert_eq!(s.consumed, 5);
        assert!(d.is_done());
    }
}
