//! TLS towards upstreams through the real binary: verification against a
//! CA file, a wrong CA refused with 502, SNI from the target host, mTLS to
//! an upstream that requires a client certificate, pooled TLS connections.

mod common;
mod pki;

use common::*;
use pki::*;
use rustls::server::WebPkiClientVerifier;
use rustls::{ServerConfig, ServerConnection, StreamOwned};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An https backend on a thread per connection: answers every request
/// `200` with `<name> <path> sni=<server name> client=<client cert CN?>`,
/// keeping connections alive.
struct TlsBackend {
    addr: String,
    connections: Arc<AtomicUsize>,
    handshakes_failed: Arc<AtomicUsize>,
    snis: Arc<Mutex<Vec<String>>>,
}

impl TlsBackend {
    fn start(name: &'static str, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsBackend {
        TlsBackend::start_with(name, leaf, client_ca, None)
    }

    /// As `start`, answering every request with `fixed` (JSON) instead.
    fn start_with(
        name: &'static str,
        leaf: &Leaf,
        client_ca: Option<&Ca>,
        fixed: Option<&'static str>,
    ) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(ca.der()).unwrap();
                builder.with_client_cert_verifier(
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .unwrap(),
                )
            }
            None => builder.with_no_client_auth(),
        };
        use rustls::pki_types::pem::PemObject;
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let config = Arc::new(
            builder
                .with_single_cert(vec![leaf.der.clone()], key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let handshakes_failed = Arc::new(AtomicUsize::new(0));
        let snis = Arc::new(Mutex::new(Vec::new()));
        let (c, f, sn) = (connections.clone(), handshakes_failed.clone(), snis.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let config = config.clone();
                let (f, sn) = (f.clone(), sn.clone());
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                    let conn = ServerConnection::new(config).unwrap();
                    let mut s = StreamOwned::new(conn, tcp);
                    while s.conn.is_handshaking() {
                        if s.conn.complete_io(&mut s.sock).is_err() {
                            f.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                    }
                    let sni = s.conn.server_name().unwrap_or("-").to_string();
                    sn.lock().unwrap().push(sni.clone());
                    let client = if s.conn.peer_certificates().is_some() {
                        "cert"
                    } else {
                        "none"
                    };
                    let mut r = BufReader::new(s);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split(' ').nth(1).unwrap_or("").to_string();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 {
                                return;
                            }
                            if h == "\r\n" {
                                break;
                            }
                        }
                        let body = match fixed {
                            Some(f) => f.to_string(),
                            None => format!("{name} {path} sni={sni} client={client}"),
                        };
                        let out = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if r.get_mut().write_all(out.as_bytes()).is_err() {
                            return;
                        }
                        let _ = r.get_mut().flush();
                    }
                });
            }
        });
        TlsBackend {
            addr,
            connections,
            handshakes_failed,
            snis,
        }
    }

    fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }
}

fn plain_get(port: u16, c: &mut Option<TcpStream>, path: &str) -> (u16, String) {
    if c.is_none() {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        *c = Some(s);
    }
    let s = c.as_mut().unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: gw.test\r\n\r\n").unwrap();
    read_response(s)
}

fn gateway(upstream_ron: &str) -> Gateway {
    Gateway::start(&config(1, upstream_ron, &catch_all("up")))
}

#[test]
fn https_upstream_verified_against_a_ca_file_with_pooled_connections() {
    let ca = Ca::new("Upstream CA");
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let backend = TlsBackend::start("U", &ca.leaf("up", &["localhost"]), None);
    let ca_file = dir.join("ca.pem");
    let gw = gateway(&format!(
        "        \"up\": Upstream(targets: [\"https://localhost:{}\"], tls: Some(UpstreamTls(ca_file: Some({ca_file:?})))),\n",
        backend.port()
    ));
    let mut c = None;
    for i in 0..5 {
        let (status, body) = plain_get(gw.port, &mut c, &format!("/p{i}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body, format!("U /p{i} sni=localhost client=none"));
    }
    // One pooled TLS connection served all five.
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    assert_eq!(backend.snis.lock().unwrap().as_slice(), ["localhost"]);
}

#[test]
fn configured_server_name_is_sent_and_verified() {
    let ca = Ca::new("Upstream CA");
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let backend = TlsBackend::start("U", &ca.leaf("up", &["inventory.internal"]), None);
    let ca_file = dir.join("ca.pem");
    let gw = gateway(&format!(
        "        \"up\": Upstream(targets: [{:?}], tls: Some(UpstreamTls(ca_file: Some({ca_file:?}), server_name: Some(\"inventory.internal\")))),\n",
        backend.addr
    ));
    let mut c = None;
    let (status, body) = plain_get(gw.port, &mut c, "/n");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "U /n sni=inventory.internal client=none");
}

#[test]
fn wrong_ca_is_refused_with_502_json() {
    let ca = Ca::new("Upstream CA");
    let other = Ca::new("Other CA");
    let dir = temp_dir();
    std::fs::write(dir.join("other.pem"), other.pem()).unwrap();
    let backend = TlsBackend::start("U", &ca.leaf("up", &["localhost"]), None);
    let ca_file = dir.join("other.pem");
    let gw = gateway(&format!(
        "        \"up\": Upstream(targets: [\"https://localhost:{}\"], tls: Some(UpstreamTls(ca_file: Some({ca_file:?})))),\n",
        backend.port()
    ));
    let resp = Client::connect(gw.port).get("/x");
    assert_json_error(&resp, 502);
    assert!(resp.text().contains("TLS handshake"), "{}", resp.text());
    // The bundled public roots do not trust a private CA either.
    let gw2 = gateway(&format!(
        "        \"up\": Upstream(targets: [\"https://localhost:{}\"]),\n",
        backend.port()
    ));
    assert_json_error(&Client::connect(gw2.port).get("/y"), 502);
}

#[test]
fn mtls_to_an_upstream_that_requires_a_client_certificate() {
    let ca = Ca::new("Upstream CA");
    let clients = Ca::new("Client CA");
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let (cert, key) = clients
        .leaf("gateway", &["gateway.internal"])
        .write(&dir, "client");
    let backend = TlsBackend::start("M", &ca.leaf("up", &["localhost"]), Some(&clients));
    let ca_file = dir.join("ca.pem");
    let with_cert = gateway(&format!(
        "        \"up\": Upstream(targets: [\"https://localhost:{}\"], tls: Some(UpstreamTls(ca_file: Some({ca_file:?}), cert: Some({cert:?}), key: Some({key:?})))),\n",
        backend.port()
    ));
    let mut c = None;
    let (status, body) = plain_get(with_cert.port, &mut c, "/m");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "M /m sni=localhost client=cert");
    // Without the client certificate the upstream refuses the handshake.
    let without = gateway(&format!(
        "        \"up\": Upstream(targets: [\"https://localhost:{}\"], tls: Some(UpstreamTls(ca_file: Some({ca_file:?})))),\n",
        backend.port()
    ));
    let resp = Client::connect(without.port).get("/n");
    assert!(resp.status == 502, "{} {}", resp.status, resp.text());
    // The backend's thread counts the failed handshake after sending its
    // alert, which is what the gateway answered 502 on: wait for the count.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.handshakes_failed.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(backend.handshakes_failed.load(Ordering::SeqCst) >= 1);
}

#[test]
fn introspection_over_https_with_a_ca_file() {
    let ca = Ca::new("IdP CA");
    let dir = temp_dir();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let idp = TlsBackend::start_with(
        "I",
        &ca.leaf("idp", &["localhost"]),
        None,
        Some(r#"{"active":true,"sub":"alice","scope":"read"}"#),
    );
    let backend = Backend::echo("B");
    let ca_file = dir.join("ca.pem");
    let text = config(
        1,
        &upstream("b", &[&backend.addr()], ""),
        "        Route(name: \"r\", match: Match(path_prefix: \"/\"), upstream: \"b\", auth: Required([\"idp\"])),\n",
    )
    .replace(
        "    routes: [",
        &format!(
            "    authenticators: {{ \"idp\": Introspection(url: \"https://localhost:{}/introspect\", client_id: \"c\", client_secret: \"s\", ca_file: Some({ca_file:?}), forward_claims: {{ \"sub\": \"X-User-Id\" }}) }},\n    routes: [",
            idp.port()
        ),
    );
    let gw = Gateway::start(&text);
    let resp = Client::connect(gw.port).request(
        "GET",
        "/who",
        &[("Authorization", "Bearer opaque-token")],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(backend.last().header("x-user-id"), Some("alice"));
    assert_eq!(idp.snis.lock().unwrap().as_slice(), ["localhost"]);
}

/// A redis-server speaking TLS only (its own CA), killed when dropped.
struct TlsRedis(std::process::Child, u16);

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tls_redis(ca: &Ca, dir: &std::path::Path) -> TlsRedis {
    let (c, k) = ca.leaf("redis", &["localhost"]).write(dir, "redis");
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let port = free_port();
    let child = std::process::Command::new("/usr/bin/redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            c.to_str().unwrap(),
            "--tls-key-file",
            k.to_str().unwrap(),
        ])
        .args(["--tls-ca-cert-file", dir.join("ca.pem").to_str().unwrap()])
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (with TLS) is needed for this test");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsRedis(child, port)
}

#[test]
fn redis_rate_limit_over_rediss() {
    let ca = Ca::new("Redis CA");
    let dir = temp_dir();
    let redis = tls_redis(&ca, &dir);
    let backend = Backend::echo("B");
    let ca_file = dir.join("ca.pem");
    let text = config(
        1,
        &upstream("b", &[&backend.addr()], ""),
        "        Route(name: \"r\", match: Match(path_prefix: \"/\"), upstream: \"b\", rate_limits: [\"shared\"]),\n",
    )
    .replace(
        "    routes: [",
        &format!(
            "    rate_limits: {{ \"shared\": RateLimit(key: Route, algorithm: FixedWindow(limit: 3, window_s: 86400), policy: Redis(url: \"rediss://localhost:{}\", ca_file: Some({ca_file:?}))) }},\n    routes: [",
            redis.1
        ),
    );
    let gw = Gateway::start(&text);
    let statuses: Vec<u16> = (0..5)
        .map(|i| get(gw.port, &format!("/{i}")).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429], "{}", gw.stderr());
    // A gateway that does not trust the server's CA cannot use it: with
    // fault_tolerant false that is a 503, not an admission.
    let strict = text.replace(&format!("ca_file: Some({ca_file:?})"), "ca_file: None");
    let gw2 = Gateway::start(&strict);
    assert_eq!(get(gw2.port, "/x").status, 503);
}
