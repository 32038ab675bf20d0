//! The Redis serialization protocol (RESP2), as far as the rate-limit client
//! needs it: commands are encoded as arrays of bulk strings, and replies are
//! parsed from a byte buffer without trusting the server — every length is
//! bounded, nesting is bounded, and malformed input is an error rather than a
//! panic.

/// Longest bulk string accepted in a reply.
pub const MAX_BULK: usize = 1024 * 1024;
/// Most elements accepted in one reply array.
pub const MAX_ARRAY: usize = 64 * 1024;
/// Longest status, error or length line accepted (without its CRLF).
pub const MAX_LINE: usize = 64 * 1024;
/// Deepest nesting of arrays accepted.
pub const MAX_DEPTH: usize = 8;

/// One parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A status reply (`+OK`).
    Simple(String),
    /// An error reply (`-ERR ...`), its text without the `-`.
    Error(String),
    /// An integer reply (`:42`).
    Integer(i64),
    /// A bulk string (`$3\r\nabc`).
    Bulk(Vec<u8>),
    /// A null bulk string or null array (`$-1`, `*-1`).
    Nil,
    /// An array of replies.
    Array(Vec<Reply>),
}

impl Reply {
    /// A short description of the reply's kind, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Reply::Simple(_) => "status",
            Reply::Error(_) => "error",
            Reply::Integer(_) => "integer",
            Reply::Bulk(_) => "bulk string",
            Reply::Nil => "nil",
            Reply::Array(_) => "array",
        }
    }
}

/// Appends the command `args` to `out` as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for arg in args {
        out.push(b'$');
        out.extend_from_slice(arg.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the start of `buf`. Returns the reply and the
/// number of bytes it took, `Ok(None)` when `buf` holds only part of a
/// reply, or an error describing malformed or oversized input.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], pos: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    let Some(&tag) = buf.get(pos) else {
        return Ok(None);
    };
    let Some((line, next)) = line_at(buf, pos + 1)? else {
        return Ok(None);
    };
    match tag {
        b'+' => Ok(Some((Reply::Simple(text(line)), next))),
        b'-' => Ok(Some((Reply::Error(text(line)), next))),
        b':' => Ok(Some((Reply::Integer(integer(line)?), next))),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((Reply::Nil, next)));
            }
            let len = usize::try_from(len).map_err(|_| format!("bad bulk length {len}"))?;
            if len > MAX_BULK {
                return Err(format!("bulk string of {len} bytes exceeds {MAX_BULK}"));
            }
            // `next` is within `buf` and `len` is at most MAX_BULK: no overflow.
            let after = next + len + 2;
            let Some(framed) = buf.get(next..after) else {
                return Ok(None);
            };
            let Some(body) = framed.strip_suffix(b"\r\n") else {
                return Err("bulk string not terminated by CRLF".to_string());
            };
            Ok(Some((Reply::Bulk(body.to_vec()), after)))
        }
        b'*' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((Reply::Nil, next)));
            }
            let len = usize::try_from(len).map_err(|_| format!("bad array length {len}"))?;
            if len > MAX_ARRAY {
                return Err(format!("array of {len} elements exceeds {MAX_ARRAY}"));
            }
            if depth >= MAX_DEPTH {
                return Err("arrays nested too deeply".to_string());
            }
            // Never trust the announced length for an allocation: every
            // element takes at least 3 bytes, so what is buffered bounds it.
            let mut items = Vec::with_capacity(len.min(buf.len().saturating_sub(next) / 3));
            let mut at = next;
            for _ in 0..len {
                match parse_at(buf, at, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        at = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(items), at)))
        }
        other => Err(format!("unexpected reply type byte 0x{other:02x}")),
    }
}

/// The line starting at `pos` (without CRLF) and the position after its CRLF.
fn line_at(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, String> {
    let rest = buf.get(pos..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let Some(line) = rest.get(..i).and_then(|l| l.strip_suffix(b"\r")) else {
                return Err("line not terminated by CRLF".to_string());
            };
            if line.len() > MAX_LINE {
                return Err(format!("reply line exceeds {MAX_LINE} bytes"));
            }
            Ok(Some((line, pos + i + 1)))
        }
        None if rest.len() > MAX_LINE + 1 => Err(format!("reply line exceeds {MAX_LINE} bytes")),
        None => Ok(None),
    }
}

fn text(line: &[u8]) -> String {
    String::from_utf8_lossy(line).into_owned()
}

fn integer(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| format!("bad integer {:?}", text(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        let mut out = Vec::new();
        encode(&[b"GET", b"k\r\n"], &mut out);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nk\r\n\r\n");
    }

    #[test]
    fn parses_every_reply_kind() {
        let input = b"*6\r\n+OK\r\n-ERR no\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n*1\r\n*0\r\nrest";
        let (reply, used) = parse(input).unwrap().unwrap();
        assert_eq!(&input[used..], b"rest");
        assert_eq!(
            reply,
            Reply::Array(vec![
                Reply::Simple("OK".into()),
                Reply::Error("ERR no".into()),
                Reply::Integer(-42),
                Reply::Bulk(b"a\r\n".to_vec()),
                Reply::Nil,
                Reply::Array(vec![Reply::Array(vec![])]),
            ])
        );
        assert_eq!(parse(b"*-1\r\n").unwrap(), Some((Reply::Nil, 5)));
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete() {
        let input = b"*3\r\n:1\r\n$5\r\nhello\r\n+OK\r\n";
        for cut in 0..input.len() {
            assert_eq!(parse(&input[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(input).unwrap().is_some());
    }

    #[test]
    fn rejects_malformed_and_oversized_replies() {
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b":\r\n",
            b":+1\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\n",
            b"$99999999999\r\n",
            b"*99999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        let long = vec![b'+'; MAX_LINE + 10];
        assert!(parse(&long).is_err());
    }
}
