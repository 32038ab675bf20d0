//! Property tests for the request parser and the chunked decoder: arbitrary
//! input never panics, and valid input decodes the same however it is split.

use proptest::prelude::*;
use shardgate::http::chunked::ChunkedDecoder;
use shardgate::http::{Framing, Parsed, RequestHead};

proptest! {
    #[test]
    fn request_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = RequestHead::parse(&bytes, 1024, 16);
    }

    #[test]
    fn request_parser_accepts_generated_heads(
        path in "/[a-z0-9/]{0,40}",
        names in proptest::collection::vec("[A-Za-z][A-Za-z0-9-]{0,15}", 0..10),
        value in "[ -~]{0,30}",
        len in 0u64..100_000,
    ) {
        let mut s = format!("POST {path} HTTP/1.1\r\nHost: h\r\n");
        for n in &names {
            let lower = n.to_ascii_lowercase();
            if lower == "content-length" || lower == "transfer-encoding" || lower == "connection" {
                continue;
            }
            s.push_str(&format!("{n}: {}\r\n", value.trim()));
        }
        s.push_str(&format!("Content-Length: {len}\r\n\r\n"));
        match RequestHead::parse(s.as_bytes(), 64 * 1024, 64) {
            Ok(Parsed::Complete(h, n)) => {
                prop_assert_eq!(n, s.len());
                prop_assert_eq!(h.path(), path.as_str());
                let expected = if len == 0 { Framing::None } else { Framing::Length(len) };
                prop_assert_eq!(h.framing, expected);
            }
            _ => prop_assert!(false, "valid head refused: {s:?}"),
        }
    }

    #[test]
    fn chunked_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let mut d = ChunkedDecoder::default();
        let mut pos = 0;
        while pos < bytes.len() && !d.is_done() {
            match d.step(&bytes[pos..]) {
                Ok(s) if s.consumed > 0 => pos += s.consumed,
                _ => break,
            }
        }
    }

    #[test]
    fn chunked_roundtrip_any_split(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
        split in 1usize..64,
    ) {
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(format!("{:X};x=y\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
            expected.extend_from_slice(c);
        }
        wire.extend_from_slice(b"0\r\nTrailer-A: 1\r\n\r\nNEXT");
        let mut d = ChunkedDecoder::default();
        let mut buf: Vec<u8> = Vec::new();
        let mut fed = 0;
        let mut out = Vec::new();
        while !d.is_done() {
            let step = d.step(&buf).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            if let Some(r) = step.data.clone() {
                out.extend_from_slice(&buf[r]);
            }
            buf.drain(..step.consumed);
            if step.consumed == 0 {
                prop_assert!(fed < wire.len(), "decoder starved");
                let end = (fed + split).min(wire.len());
                buf.extend_from_slice(&wire[fed..end]);
                fed = end;
            }
        }
        prop_assert_eq!(out, expected);
        let rest: Vec<u8> = buf.iter().chain(&wire[fed..]).copied().collect();
        prop_assert_eq!(rest, b"NEXT".to_vec());
    }
}
