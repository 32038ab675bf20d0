//! TLS termination through the real binary: a private CA made per test
//! (rcgen), a rustls client driven by the test, SNI, protocol versions,
//! session resumption, certificate reload, handshake timeout, plain HTTP on
//! a TLS port.

mod common;
mod pki;

use common::*;
use pki::*;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind, ProtocolVersion, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// Opens a TLS connection to `port` asking for `sni` and completes the handshake.
fn connect(cfg: &Arc<ClientConfig>, port: u16, sni: &str) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends a GET and reads one response with a Content-Length body.
fn get(s: &mut Tls, path: &str) -> (u16, String) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    s.flush().unwrap();
    read_response(s)
}

/// A gateway config with one TLS listener on `$PORT` (`tls` is the RON of
/// its `Tls(...)`) in front of `backend`.
fn tls_config(tls: &str, backend: &Backend, shards: usize) -> String {
    format!(
        "Gateway(\n    shards: Count({shards}),\n    listeners: [Listener(name: \"tls\", bind: \"127.0.0.1:$PORT\", tls: Some({tls}))],\n    limits_http: {LIMITS},\n    upstreams: {{\n{}\n    }},\n    routes: [\n{}\n    ],\n)\n",
        upstream("b", &[&backend.addr()], ""),
        catch_all("b")
    )
}

fn single(c: &Path, k: &Path) -> String {
    format!(
        "Tls(cert: {:?}, key: {:?}, handshake_timeout_ms: 700)",
        c, k
    )
}

#[test]
fn https_request_with_a_private_ca_over_keep_alive() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&single(&c, &k), &backend, 2));
    let cfg = client(&ca, &both());
    let mut s = connect(&cfg, gw.port, "localhost").unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(get(&mut s, "/one"), (200, "B GET /one".into()));
    assert_eq!(get(&mut s, "/two"), (200, "B GET /two".into()));
    assert_eq!(backend.count(), 2);
    // A client that does not trust the CA fails the handshake.
    let stranger = client(&Ca::new("Other CA"), &both());
    assert!(connect(&stranger, gw.port, "localhost").is_err());
}

#[test]
fn tls_1_2_and_1_3_both_work() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&single(&c, &k), &backend, 1));
    for (v, want) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let cfg = client(&ca, &[v]);
        let mut s = connect(&cfg, gw.port, "localhost").unwrap();
        assert_eq!(s.conn.protocol_version(), Some(want));
        assert_eq!(get(&mut s, "/v"), (200, "B GET /v".into()));
    }
}

#[test]
fn sni_picks_exact_wildcard_and_default_certificates() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let api = ca.leaf("api", &["api.example.com", "localhost"]);
    let wild = ca.leaf("wild", &["*.example.org"]);
    let (ac, ak) = api.write(&dir, "api");
    let (wc, wk) = wild.write(&dir, "wild");
    let tls =
        format!("Tls(certs: [Cert(cert: {ac:?}, key: {ak:?}), Cert(cert: {wc:?}, key: {wk:?})])");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&tls, &backend, 1));
    let cfg = client(&ca, &both());
    // Accepts any certificate, so the one served for a name it does not
    // cover can be seen too.
    let mut any = (*client(&ca, &both())).clone();
    any.dangerous()
        .set_certificate_verifier(Arc::new(AnyCert(rustls::crypto::ring::default_provider())));
    let any = Arc::new(any);
    let served = |sni: &str| {
        let s = connect(&any, gw.port, sni).unwrap();
        s.conn.peer_certificates().and_then(|c| c.first().cloned())
    };
    assert_eq!(served("api.example.com"), Some(api.der.clone()));
    assert_eq!(served("API.Example.COM"), Some(api.der.clone()));
    assert_eq!(served("shop.example.org"), Some(wild.der.clone()));
    // The wildcard covers one label only; other names get the first (default).
    assert_eq!(served("example.org"), Some(api.der.clone()));
    assert_eq!(served("a.b.example.org"), Some(api.der.clone()));
    assert_eq!(served("other.test"), Some(api.der.clone()));
    // And the wildcard one serves requests.
    let mut s = connect(&cfg, gw.port, "shop.example.org").unwrap();
    assert_eq!(get(&mut s, "/w"), (200, "B GET /w".into()));
}

#[test]
fn sessions_resume_with_tickets_across_shards() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&single(&c, &k), &backend, 2));
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = client(&ca, &[v]);
        let mut first = connect(&cfg, gw.port, "localhost").unwrap();
        assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
        assert_eq!(get(&mut first, "/a"), (200, "B GET /a".into()));
        // Several new connections land on both shards; every one resumes.
        for i in 0..6 {
            let mut s = connect(&cfg, gw.port, "localhost").unwrap();
            assert_eq!(
                s.conn.handshake_kind(),
                Some(HandshakeKind::Resumed),
                "{v:?} connection {i} did not resume"
            );
            assert_eq!(get(&mut s, "/r"), (200, "B GET /r".into()));
        }
    }
}

#[test]
fn certificate_reload_keeps_open_connections_and_a_bad_one_keeps_the_old() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let old = ca.leaf("old", &["localhost"]);
    let (c, k) = old.write(&dir, "gw");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&single(&c, &k), &backend, 2));
    let cfg = client(&ca, &[&rustls::version::TLS13]);
    let mut open = connect(&cfg, gw.port, "localhost").unwrap();
    assert_eq!(get(&mut open, "/1"), (200, "B GET /1".into()));
    let peer = |s: &Tls| s.conn.peer_certificates().and_then(|c| c.first().cloned());
    assert_eq!(peer(&open), Some(old.der.clone()));

    // New files under the same names, then SIGHUP.
    let new = ca.leaf("new", &["localhost"]);
    new.write(&dir, "gw");
    let before = gw.stderr().len();
    gw.send_signal("HUP");
    assert!(
        gw.wait_stderr("reloaded", Duration::from_secs(10)),
        "{}",
        gw.stderr()
    );
    assert!(gw.stderr().len() > before);
    // Fresh configs, so no resumption hides the certificate; the shards
    // take the new config between requests, so allow them a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let fresh = client(&ca, &[&rustls::version::TLS13]);
        let s = connect(&fresh, gw.port, "localhost").unwrap();
        if peer(&s) == Some(new.der.clone()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate is not served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The connection opened before the reload keeps going.
    assert_eq!(get(&mut open, "/2"), (200, "B GET /2".into()));

    // A broken certificate file: the reload fails, naming the file, and the
    // certificate in use stays.
    std::fs::write(
        &c,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let before = gw.stderr().len();
    gw.send_signal("HUP");
    let file = c.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.stderr()[before..].contains("failed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gw.stderr()[before..].to_string();
    assert!(log.contains("failed") && log.contains(&file), "{log}");
    let fresh = client(&ca, &[&rustls::version::TLS13]);
    let mut s = connect(&fresh, gw.port, "localhost").unwrap();
    assert_eq!(peer(&s), Some(new.der.clone()));
    assert_eq!(get(&mut s, "/3"), (200, "B GET /3".into()));
    // A key that belongs to another certificate is refused the same way.
    std::fs::write(&c, &new.cert_pem).unwrap();
    std::fs::write(&k, ca.leaf("x", &["localhost"]).key_pem).unwrap();
    let before = gw.stderr().len();
    gw.send_signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gw.stderr()[before..].contains("failed") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = gw.stderr()[before..].to_string();
    assert!(log.contains("does not belong"), "{log}");
    assert_eq!(get(&mut open, "/4"), (200, "B GET /4".into()));
}

#[test]
fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&single(&c, &k), &backend, 1));
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let r = tcp.read(&mut buf);
    assert!(
        matches!(r, Ok(0))
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{r:?}"
    );
    // Closed by the 700 ms timeout, not by the 10 s read timeout here.
    assert!(started.elapsed() < Duration::from_secs(8));
    // The gateway still serves.
    let cfg = client(&ca, &both());
    let mut s = connect(&cfg, gw.port, "localhost").unwrap();
    assert_eq!(get(&mut s, "/after"), (200, "B GET /after".into()));
}

#[test]
fn plain_http_on_a_tls_port_is_refused_with_400() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let gw = Gateway::start(&tls_config(&single(&c, &k), &backend, 1));
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut tcp);
    assert_eq!(status, 400);
    assert!(body.contains("HTTPS"), "{body}");
    let mut rest = Vec::new();
    let _ = tcp.read_to_end(&mut rest);
    assert!(rest.is_empty());
    assert_eq!(backend.count(), 0);
}

#[test]
fn check_reports_bad_certificate_files_with_positions() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, _k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let (_c2, k2) = ca.leaf("other", &["localhost"]).write(&dir, "other");
    let backend = Backend::echo("B");
    let missing = dir.join("missing.pem");
    let text = tls_config(&single(&c, &k2), &backend, 1).replace("$PORT", "18443");
    let bad = dir.join("bad.ron");
    std::fs::write(&bad, &text).unwrap();
    let (status, out, err) = run_cli(&["check", bad.to_str().unwrap()]);
    assert!(!status.success());
    let all = out + &err;
    assert!(
        all.contains("listeners[0].tls") && all.contains("does not belong"),
        "{all}"
    );
    assert!(all.contains("bad.ron:3:"), "{all}");
    let text = text.replace(c.to_str().unwrap(), missing.to_str().unwrap());
    std::fs::write(&bad, &text).unwrap();
    let (status, out, err) = run_cli(&["check", bad.to_str().unwrap()]);
    assert!(!status.success());
    let all = out + &err;
    assert!(all.contains("missing.pem"), "{all}");
}

#[test]
fn plain_listener_redirects_to_https_and_tls_answers_carry_hsts() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let cfg = format!(
        "Gateway(\n    shards: Count(1),\n    listeners: [\n        Listener(name: \"edge\", bind: \"127.0.0.1:$PORT\", tls: Some(Tls(cert: {c:?}, key: {k:?}, hsts: Some(Hsts(max_age_s: 600, include_subdomains: true))))),\n        Listener(name: \"plain\", bind: \"127.0.0.1:$PORT2\", redirect_https: Some(\"edge\")),\n    ],\n    limits_http: {LIMITS},\n    upstreams: {{\n{}\n    }},\n    routes: [\n{}\n    ],\n)\n",
        upstream("b", &[&backend.addr()], ""),
        catch_all("b")
    );
    let gw = Gateway::start(&cfg);
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port2)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw_get = |path: &str| -> String {
        write!(
            tcp,
            "GET {path} HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(tcp.read(&mut b).unwrap(), 1);
            head.push(b[0]);
        }
        String::from_utf8(head).unwrap()
    };
    let head = raw_get("/a/b?x=1");
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    let want = format!("location: https://api.example.com:{}/a/b?x=1\r\n", gw.port);
    assert!(head.contains(&want), "{head}");
    // Kept alive: a second request on the same connection.
    let head = raw_get("/c");
    assert!(head.starts_with("HTTP/1.1 308"), "{head}");
    assert_eq!(backend.count(), 0);
    // The TLS listener adds the HSTS header to proxied answers.
    let client = client(&ca, &both());
    let mut s = connect(&client, gw.port, "localhost").unwrap();
    write!(s, "GET /h HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("strict-transport-security: max-age=600; includeSubDomains\r\n"),
        "{head}"
    );
}

#[test]
fn client_certificates_authenticate_and_forward_the_subject() {
    let ca = Ca::new("Server CA");
    let partners = Ca::new("Partners CA");
    let strangers = Ca::new("Strangers CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    std::fs::write(dir.join("partners.pem"), partners.pem()).unwrap();
    let partners_file = dir.join("partners.pem");
    let backend = Backend::echo("B");
    let cfg = format!(
        "Gateway(\n    shards: Count(1),\n    listeners: [Listener(name: \"edge\", bind: \"127.0.0.1:$PORT\", tls: Some(Tls(cert: {c:?}, key: {k:?})))],\n    limits_http: {LIMITS},\n    upstreams: {{\n{}\n    }},\n    authenticators: {{\n        \"partners\": ClientCert(ca: {partners_file:?}, forward_claims: {{ \"subject\": \"X-Client-Subject\", \"san\": \"X-Client-San\" }}),\n    }},\n    routes: [\n        Route(name: \"open\", match: Match(path_prefix: \"/open\"), upstream: \"b\"),\n        Route(name: \"partner\", match: Match(path_prefix: \"/partner\"), upstream: \"b\", auth: Required([\"partners\"])),\n    ],\n)\n",
        upstream("b", &[&backend.addr()], ""),
    );
    let gw = Gateway::start(&cfg);

    // Accepted: the subject and SANs are forwarded; a forged header is not.
    let leaf = partners.leaf("acme-client", &["client.acme.test"]);
    let with_cert = client_with_cert(&ca, &leaf);
    let mut s = connect(&with_cert, gw.port, "localhost").unwrap();
    write!(
        s,
        "GET /partner/x HTTP/1.1\r\nHost: localhost\r\nX-Client-Subject: CN=forged\r\n\r\n"
    )
    .unwrap();
    let (status, body) = read_response(&mut s);
    assert_eq!((status, body.as_str()), (200, "B GET /partner/x"));
    let seen = backend.last();
    assert_eq!(seen.header("x-client-subject"), Some("CN=acme-client"));
    assert_eq!(seen.header("x-client-san"), Some("client.acme.test"));
    assert_eq!(seen.headers_named("x-client-subject").len(), 1);

    // Missing: the handshake goes through, the route answers 401, an open
    // route still serves.
    let without = client(&ca, &both());
    let mut s = connect(&without, gw.port, "localhost").unwrap();
    let (status, body) = get(&mut s, "/partner/y");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("error"), "{body}");
    assert_eq!(get(&mut s, "/open/z"), (200, "B GET /open/z".into()));

    // Wrong CA: refused at the handshake, or at the latest by the route.
    let stranger = client_with_cert(&ca, &strangers.leaf("mallory", &["m.test"]));
    let before = backend.count();
    match connect(&stranger, gw.port, "localhost") {
        Err(_) => {}
        Ok(mut s) => {
            write!(s, "GET /partner/w HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut buf = Vec::new();
            let r = s.read_to_end(&mut buf);
            let text = String::from_utf8_lossy(&buf);
            assert!(r.is_err() || !text.starts_with("HTTP/1.1 200"), "{text}");
        }
    }
    assert_eq!(backend.count(), before);
}

#[test]
fn handshakes_past_the_shard_cap_are_closed_at_once() {
    let ca = Ca::new("Test CA");
    let dir = temp_dir();
    let (c, k) = ca.leaf("gateway", &["localhost"]).write(&dir, "gw");
    let backend = Backend::echo("B");
    let tls =
        format!("Tls(cert: {c:?}, key: {k:?}, handshake_timeout_ms: 1500, max_handshakes: 1)");
    let gw = Gateway::start(&tls_config(&tls, &backend, 1));
    // A silent client holds the shard's only handshake slot.
    let _silent = TcpStream::connect(("127.0.0.1", gw.port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let cfg = client(&ca, &both());
    let refused = connect(&cfg, gw.port, "localhost");
    assert!(
        refused.is_err(),
        "a second handshake was served past max_handshakes: 1"
    );
    // Once the silent one timed out, the slot is free again.
    std::thread::sleep(Duration::from_millis(1800));
    let mut s = connect(&cfg, gw.port, "localhost").unwrap();
    assert_eq!(get(&mut s, "/ok"), (200, "B GET /ok".into()));
}
