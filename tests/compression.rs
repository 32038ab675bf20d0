//! Response compression and request decompression through the real
//! binary: round trips with curl and Python clients for gzip, brotli and
//! zstd, `Vary`, q-values, the size and type rules, no double compression,
//! streaming, and the decompression-bomb limit.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A JSON document of about `n` bytes.
fn json_doc(n: usize) -> Vec<u8> {
    let mut s = String::from("{\"items\":[");
    let mut i = 0;
    while s.len() < n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item number {i}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b\"]}}",
            i * 7 % 1000,
            i % 100
        ));
        i += 1;
    }
    s.push_str("]}");
    s.into_bytes()
}

fn backend() -> Backend {
    Backend::start(|r| {
        let path = r.target.split('?').next().unwrap_or("");
        match path {
            "/json" => Response::ok(json_doc(20_000)).header("Content-Type", "application/json"),
            "/small" => Response::ok(json_doc(500)).header("Content-Type", "application/json"),
            "/small-chunked" => Response::chunked(vec![json_doc(500)])
                .header("Content-Type", "application/json; charset=utf-8"),
            "/text-chunked" => {
                let doc = json_doc(50_000);
                Response::chunked(doc.chunks(7000).map(<[u8]>::to_vec).collect())
                    .header("Content-Type", "text/plain")
            }
            "/png" => Response::ok(json_doc(20_000)).header("Content-Type", "image/png"),
            "/pre-gzipped" => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&json_doc(20_000)).unwrap();
                Response::ok(e.finish().unwrap())
                    .header("Content-Type", "application/json")
                    .header("Content-Encoding", "gzip")
            }
            "/vary" => Response::ok(json_doc(20_000))
                .header("Content-Type", "application/json")
                .header("Vary", "Origin")
                .header("ETag", "\"v1\""),
            "/no-transform" => Response::ok(json_doc(20_000))
                .header("Content-Type", "application/json")
                .header("Cache-Control", "no-transform"),
            "/range" => Response::ok(json_doc(20_000))
                .status(206)
                .header("Content-Type", "application/json")
                .header("Content-Range", "bytes 0-19999/40000"),
            "/empty" => Response::ok("").status(204),
            "/echo" => Response::ok(format!(
                "{{\"len\":{},\"sum\":{},\"coding\":{:?}}}",
                r.body_len,
                r.checksum,
                r.header("content-encoding").unwrap_or("none")
            ))
            .header("Content-Type", "application/json"),
            _ => Response::ok("?").status(404),
        }
    })
}

fn gateway(b: &Backend) -> Gateway {
    Gateway::start(&config(
        2,
        &upstream("app", &[&b.addr()], ""),
        r#"        Route(name: "z", match: Match(path_prefix: "/"), upstream: "app",
              compression: Some(Compression(algorithms: [Zstd, Brotli, Gzip], min_bytes: 1024,
                  content_types: ["application/json", "text/*"],
                  level: Some(Each(gzip: 5, brotli: 5, zstd: 3)),
                  decompress_requests: true, max_decompressed_bytes: 200000, max_ratio: 50))),
"#,
    ))
}

fn decode(coding: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        "br" => brotli::Decompressor::new(data, 4096).read_to_end(&mut out),
        "zstd" => zstd::stream::read::Decoder::new(data)
            .unwrap()
            .read_to_end(&mut out),
        other => panic!("unexpected coding {other}"),
    }
    .unwrap_or_else(|e| panic!("{coding} body does not decode: {e}"));
    out
}

#[test]
fn each_coding_round_trips_streamed_with_vary() {
    let b = backend();
    let gw = gateway(&b);
    let original = json_doc(20_000);
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "zstd"),
        ("gzip;q=1, br;q=0.9, zstd;q=0.5", "gzip"),
        ("br;q=0.5, *;q=0.8", "zstd"),
        ("zstd;q=0, br;q=0, *", "gzip"),
    ] {
        let resp = get_with(gw.port, "/json", &[("Accept-Encoding", accept)]);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-encoding"), Some(coding), "{accept}");
        assert_eq!(resp.header("vary"), Some("Accept-Encoding"));
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert!(!resp.has("content-length"));
        assert!(resp.body.len() < original.len() / 3, "{coding} compresses");
        assert_eq!(decode(coding, &resp.body), original, "{accept}");
    }
    // Refused codings (q=0), no header, or only unknown codings: as it is.
    for accept in [
        Some("gzip;q=0, br;q=0.000, zstd;q=0"),
        None,
        Some("deflate"),
    ] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
        let resp = get_with(gw.port, "/json", &headers);
        assert_eq!(resp.header("content-encoding"), None, "{accept:?}");
        assert_eq!(resp.header("vary"), Some("Accept-Encoding"));
        assert_eq!(resp.body, original);
        assert_eq!(
            resp.header("content-length"),
            Some(original.len().to_string().as_str())
        );
    }
}

#[test]
fn size_type_status_and_upstream_coding_rules() {
    let b = backend();
    let gw = gateway(&b);
    let gzip = [("Accept-Encoding", "gzip")];
    // Below min_bytes by Content-Length: as it is, still varying.
    let small = get_with(gw.port, "/small", &gzip);
    assert_eq!(small.header("content-encoding"), None);
    assert_eq!(small.header("vary"), Some("Accept-Encoding"));
    assert_eq!(small.body, json_doc(500));
    // Without a Content-Length the size is unknown: compressed.
    let chunked = get_with(gw.port, "/small-chunked", &gzip);
    assert_eq!(chunked.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &chunked.body), json_doc(500));
    // text/* matches text/plain.
    let text = get_with(gw.port, "/text-chunked", &gzip);
    assert_eq!(text.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &text.body), json_doc(50_000));
    // A type not listed: untouched, no Vary.
    let png = get_with(gw.port, "/png", &gzip);
    assert_eq!(png.header("content-encoding"), None);
    assert_eq!(png.header("vary"), None);
    assert_eq!(png.body, json_doc(20_000));
    // Already compressed upstream: passed on byte for byte, not again.
    let pre = get_with(
        gw.port,
        "/pre-gzipped",
        &[("Accept-Encoding", "zstd, gzip")],
    );
    assert_eq!(pre.header("content-encoding"), Some("gzip"));
    assert_eq!(decode("gzip", &pre.body), json_doc(20_000));
    // An upstream Vary is extended; a strong ETag becomes weak.
    let vary = get_with(gw.port, "/vary", &gzip);
    assert_eq!(vary.header("vary"), Some("Origin, Accept-Encoding"));
    assert_eq!(vary.header("etag"), Some("W/\"v1\""));
    assert_eq!(decode("gzip", &vary.body), json_doc(20_000));
    // no-transform, ranges, 204 and HEAD are never compressed.
    let nt = get_with(gw.port, "/no-transform", &gzip);
    assert_eq!(nt.header("content-encoding"), None);
    assert_eq!(nt.body, json_doc(20_000));
    let range = get_with(gw.port, "/range", &gzip);
    assert_eq!(range.status, 206);
    assert_eq!(range.header("content-encoding"), None);
    assert_eq!(range.body, json_doc(20_000));
    let empty = get_with(gw.port, "/empty", &gzip);
    assert_eq!(empty.status, 204);
    assert_eq!(empty.header("content-encoding"), None);
    let mut c = Client::connect(gw.port);
    let head = c.request("HEAD", "/json", &gzip, b"");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(
        head.header("content-length"),
        Some(json_doc(20_000).len().to_string().as_str())
    );
    // The connection stays usable after a compressed response.
    let next = c.request("GET", "/json", &gzip, b"");
    assert_eq!(decode("gzip", &next.body), json_doc(20_000));
    let again = c.request("GET", "/small", &gzip, b"");
    assert_eq!(again.body, json_doc(500));
}

#[test]
fn http10_clients_get_a_close_delimited_compressed_body() {
    let b = backend();
    let gw = gateway(&b);
    let mut c = Client::connect(gw.port);
    c.send(b"GET /json HTTP/1.0\r\nHost: t\r\nAccept-Encoding: br\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.header("content-encoding"), Some("br"));
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(decode("br", &resp.body), json_doc(20_000));
}

#[test]
fn curl_decodes_every_coding() {
    let b = backend();
    let gw = gateway(&b);
    let dir = temp_dir();
    let original = json_doc(20_000);
    for coding in ["auto", "gzip", "br", "zstd"] {
        let out = dir.join(format!("body-{coding}"));
        let heads = dir.join(format!("head-{coding}"));
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--compressed", "-o"])
            .arg(&out)
            .arg("-D")
            .arg(&heads);
        if coding != "auto" {
            cmd.args(["-H", &format!("Accept-Encoding: {coding}")]);
        }
        let status = cmd
            .arg(format!("http://127.0.0.1:{}/json", gw.port))
            .status()
            .expect("run curl");
        assert!(status.success());
        let heads = std::fs::read_to_string(&heads)
            .unwrap()
            .to_ascii_lowercase();
        let expect = if coding == "auto" { "zstd" } else { coding };
        assert!(
            heads.contains(&format!("content-encoding: {expect}\r\n")),
            "{coding}: {heads}"
        );
        assert!(heads.contains("vary: accept-encoding\r\n"), "{heads}");
        assert_eq!(std::fs::read(&out).unwrap(), original, "{coding}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A Python interpreter with the brotli and zstandard modules (Debian's
/// python3-brotli and python3-zstandard; scripts/test.sh installs them).
fn python() -> String {
    for py in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(py)
            .args(["-c", "import brotli, zstandard"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return py.to_string();
        }
    }
    panic!("no python3 with brotli and zstandard (scripts/test.sh installs python3-brotli and python3-zstandard)");
}

const PY_CLIENT: &str = r#"
import gzip, hashlib, http.client, json, sys, zlib, brotli, zstandard
port = int(sys.argv[1])
for coding in ["gzip", "br", "zstd"]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/json", headers={"Accept-Encoding": coding})
    r = c.getresponse()
    raw = r.read()
    assert r.getheader("Content-Encoding") == coding, r.getheaders()
    assert r.getheader("Vary") == "Accept-Encoding"
    if coding == "gzip":
        body = gzip.decompress(raw)
        assert zlib.decompress(raw, 16 + zlib.MAX_WBITS) == body
    elif coding == "br":
        body = brotli.decompress(raw)
    else:
        body = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    print(coding, len(body), hashlib.sha256(body).hexdigest())
# Request bodies compressed by Python, inflated by the gateway.
doc = json.dumps({"v": list(range(1000))}).encode()
for coding, packed in [("gzip", gzip.compress(doc)), ("br", brotli.compress(doc)),
                       ("zstd", zstandard.ZstdCompressor().compress(doc))]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("POST", "/echo", body=packed,
              headers={"Content-Encoding": coding, "Content-Type": "application/json"})
    r = c.getresponse()
    print("post", coding, r.status, len(doc), r.read().decode())
"#;

#[test]
fn python_clients_round_trip_every_coding_both_ways() {
    let b = backend();
    let gw = gateway(&b);
    let out = Command::new(python())
        .args(["-c", PY_CLIENT, &gw.port.to_string()])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use sha2::Digest;
    let original = json_doc(20_000);
    let sha: String = sha2::Sha256::digest(&original)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for coding in ["gzip", "br", "zstd"] {
        let line = format!("{coding} {} {sha}", original.len());
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
    for coding in ["gzip", "br", "zstd"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("post {coding} ")))
            .unwrap_or_else(|| panic!("{coding}: {stdout}"));
        let mut parts = line.splitn(5, ' ');
        let (_, _, status, len, body) = (
            parts.next(),
            parts.next(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert_eq!(status, "200", "{line}");
        assert!(body.starts_with(&format!("{{\"len\":{len},")), "{line}");
        assert!(body.ends_with("\"coding\":\"none\"}"), "{line}");
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[test]
fn request_decompression_refuses_bombs_and_unknown_codings() {
    let b = backend();
    let gw = gateway(&b);
    let doc = json_doc(5000);
    let resp = request(
        gw.port,
        "POST",
        "/echo",
        &[
            ("Content-Encoding", "gzip"),
            ("Content-Type", "application/json"),
        ],
        &gzip(&doc),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = b.last();
    assert_eq!(seen.body, doc);
    assert_eq!(seen.header("content-encoding"), None);
    assert_eq!(
        seen.header("content-length"),
        Some(doc.len().to_string().as_str())
    );
    let before = b.count();
    // About a thousand to one: past max_ratio (50), though small in bytes.
    let bomb = gzip(&vec![b'0'; 100_000]);
    assert!(bomb.len() * 50 < 100_000);
    let resp = request(
        gw.port,
        "POST",
        "/echo",
        &[("Content-Encoding", "gzip")],
        &bomb,
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    // A modest ratio, but past max_decompressed_bytes (200000).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noisy: Vec<u8> = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"0123456789abcdef"[(x % 16) as usize]
        })
        .collect();
    let packed = gzip(&noisy);
    assert!(
        packed.len() * 50 > noisy.len(),
        "ratio stays under the limit"
    );
    let resp = request(
        gw.port,
        "POST",
        "/echo",
        &[("Content-Encoding", "gzip")],
        &packed,
    );
    assert_eq!(resp.status, 413, "{}", resp.text());
    // Codings the gateway does not decode, and bodies that do not decode.
    let resp = request(
        gw.port,
        "POST",
        "/echo",
        &[("Content-Encoding", "deflate")],
        b"xx",
    );
    assert_eq!(resp.status, 415, "{}", resp.text());
    let resp = request(
        gw.port,
        "POST",
        "/echo",
        &[("Content-Encoding", "gzip")],
        b"not gzip",
    );
    assert_eq!(resp.status, 400, "{}", resp.text());
    assert_eq!(b.count(), before, "no refused body reached the upstream");
}

#[test]
fn a_slow_stream_is_compressed_piece_by_piece() {
    // An upstream that sends half its body, then waits until the client has
    // received compressed bytes of it: a gateway that buffered the whole
    // body before compressing would never let that happen.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (got_first, wait_first) = mpsc::channel::<()>();
    let doc = json_doc(40_000);
    let (first, second) = doc.split_at(20_000);
    let (first, second) = (first.to_vec(), second.to_vec());
    let server = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        s.write_all(format!("{:x}\r\n", first.len()).as_bytes())
            .unwrap();
        s.write_all(&first).unwrap();
        s.write_all(b"\r\n").unwrap();
        let released = wait_first.recv_timeout(Duration::from_secs(10)).is_ok();
        s.write_all(format!("{:x}\r\n", second.len()).as_bytes())
            .unwrap();
        s.write_all(&second).unwrap();
        s.write_all(b"\r\n0\r\n\r\n").unwrap();
        released
    });
    let gw = Gateway::start(&config(
        1,
        &upstream("app", &[&addr.to_string()], ""),
        r#"        Route(name: "z", match: Match(path_prefix: "/"), upstream: "app",
              compression: Some(Compression(algorithms: [Gzip]))),
"#,
    ));
    let mut c = Client::connect(gw.port);
    c.send(b"GET /slow HTTP/1.1\r\nHost: t\r\nAccept-Encoding: gzip\r\n\r\n");
    let head = c.conn.read_head(64 * 1024).unwrap().unwrap();
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    // The chunks sent before the upstream's second half decode to a prefix
    // of the first half (the first may hold only the gzip header, when the
    // gateway flushed before the first half's bytes arrived).
    let mut packed = Vec::new();
    let mut prefix = Vec::new();
    for _ in 0..64 {
        let size = c.conn.read_line().unwrap();
        let size = usize::from_str_radix(String::from_utf8_lossy(&size).trim(), 16).unwrap();
        assert!(size > 0, "the stream ended before its second half was sent");
        let at = packed.len();
        c.conn
            .read_exact_to(size as u64 + 2, &mut |b| packed.extend_from_slice(b))
            .unwrap();
        packed.truncate(at + size);
        prefix.clear();
        let _ = flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut prefix);
        if !prefix.is_empty() {
            break;
        }
    }
    assert!(!prefix.is_empty() && doc.starts_with(&prefix));
    got_first.send(()).unwrap();
    // The rest of the stream completes the document.
    let mut rest = Vec::new();
    c.conn
        .read_chunked_to(&mut |b| rest.extend_from_slice(b))
        .unwrap();
    packed.extend_from_slice(&rest);
    assert_eq!(decode("gzip", &packed), doc);
    assert!(
        server.join().unwrap(),
        "the upstream was released by the client"
    );
}

#[test]
fn check_reports_bad_compression_settings() {
    let text = r#"Gateway(
    listeners: [Listener(name: "l", bind: "127.0.0.1:8080")],
    upstreams: { "a": Upstream(targets: ["127.0.0.1:9"]) },
    routes: [
        Route(name: "r", match: Match(path: "/r"), upstream: "a",
              compression: Some(Compression(algorithms: [Gzip, Gzip],
                                            content_types: ["json"],
                                            level: Some(Each(brotli: 12))))),
    ],
)
"#;
    let dir = temp_dir();
    let path = dir.join("c.ron");
    std::fs::write(&path, text).unwrap();
    let (status, _, stderr) = run_cli(&["check", path.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line_of = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
    for (needle, field, words) in [
        (
            "algorithms",
            "routes[0].compression.algorithms",
            "listed twice",
        ),
        (
            "content_types",
            "routes[0].compression.content_types",
            "not a media type",
        ),
        (
            "brotli: 12",
            "routes[0].compression.level.brotli",
            "outside",
        ),
    ] {
        let line = line_of(needle);
        assert!(
            stderr.lines().any(|l| l.contains(&format!(":{line}:"))
                && l.contains(field)
                && l.contains(words)),
            "{field} at line {line}: {stderr}"
        );
    }
}
