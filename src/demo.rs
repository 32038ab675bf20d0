//! Built-in demo backends (users, orders, products) for `cargo run --release`.
//! They run on one extra thread with their own monoio runtime and speak
//! HTTP/1.1 through the gateway's own codec.
use crate::error::json_string;
use crate::http::body::{discard_body, CopyLimits};
use crate::http::{Conn, Parsed, RequestHead};
use monoio::net::TcpListener;
use std::time::Duration;

/// The demo config, compiled into the binary (same text as `config/demo.ron`).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.ron");

/// Where the demo's self-signed certificate was written (set once at start).
static DEMO_CERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The demo's https listener, added after the `public` one.
const PUBLIC_LISTENER: &str = r#"Listener(name: "public", bind: "127.0.0.1:8080"),"#;

/// Makes a self-signed certificate for `localhost` and `127.0.0.1` (in a
/// fresh directory under the system's temporary directory) and adds an
/// https listener on 127.0.0.1:8443 serving it to the demo config `text`.
/// A config without the demo's `public` listener is returned unchanged.
pub fn with_https_listener(text: &str) -> Result<String, String> {
    if !text.contains(PUBLIC_LISTENER) {
        return Ok(text.to_string());
    }
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .map_err(|e| format!("demo certificate: {e}"))?;
    let dir = std::env::temp_dir().join(format!("shardgate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    std::fs::write(&key, made.key_pair.serialize_pem())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let cert = cert.display().to_string();
    let listener = format!(
        "{PUBLIC_LISTENER}\n        Listener(name: \"https\", bind: \"127.0.0.1:8443\",\n                 tls: Some(Tls(cert: {cert:?}, key: {:?}))),",
        key.display().to_string()
    );
    let _ = DEMO_CERT.set(cert);
    Ok(text.replacen(PUBLIC_LISTENER, &listener, 1))
}

/// The HS256 secret of the demo config's `jwt` authenticator.
pub const DEMO_SECRET: &str = "shardgate-demo-secret-do-not-use-in-production";

/// A demo token for `sub` with `role` and `scope`, valid for a day.
pub fn demo_token(sub: &str, role: &str, scope: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 86_400;
    let claims = serde_json::json!({
        "sub": sub, "role": role, "scope": scope, "iss": "shardgate-demo", "exp": exp,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(DEMO_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

#[derive(Clone, Copy)]
enum Service {
    Users,
    Orders(u16),
    Products,
    ProductsV2,
}

const BACKENDS: [(u16, Service); 5] = [
    (9001, Service::Users),
    (9002, Service::Orders(9002)),
    (9012, Service::Orders(9012)),
    (9003, Service::Products),
    (9004, Service::ProductsV2),
];

/// Starts the demo backends on their loopback ports; fails if a port is taken.
pub fn start_backends() -> Result<(), String> {
    let mut std_listeners = Vec::new();
    for (port, svc) in BACKENDS {
        let l = std::net::TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("cannot bind demo backend on 127.0.0.1:{port}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        std_listeners.push((l, svc));
    }
    std::thread::Builder::new()
        .name("shardgate-demo".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else {
                eprintln!("shardgate: demo backends: cannot build runtime");
                return;
            };
            rt.block_on(async move {
                for (l, svc) in std_listeners {
                    match TcpListener::from_std(l) {
                        Ok(l) => {
                            monoio::spawn(accept(l, svc));
                        }
                        Err(e) => eprintln!("shardgate: demo backend: {e}"),
                    }
                }
                std::future::pending::<()>().await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn accept(l: TcpListener, svc: Service) {
    while let Ok((s, _)) = l.accept().await {
        monoio::spawn(async move {
            let mut conn = Conn::new(s, 16 * 1024);
            let limit = Duration::from_secs(30);
            loop {
                let head = loop {
                    match RequestHead::parse(conn.buffered(), 16 * 1024, 100) {
                        Ok(Parsed::Complete(h, n)) => {
                            conn.consume(n);
                            break h;
                        }
                        Ok(Parsed::Partial) => {}
                        Err(_) => return,
                    }
                    if !matches!(conn.fill(limit).await, Ok(n) if n > 0) {
                        return;
                    }
                };
                let lim = CopyLimits {
                    read_timeout: limit,
                    write_timeout: limit,
                    max_bytes: 1 << 20,
                    trailers: false,
                };
                if discard_body(&mut conn, head.framing, lim).await.is_err() {
                    return;
                }
                let (status, body) = answer(svc, &head);
                let resp = format!(
                    "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    crate::error::reason_phrase(status),
                    body.len()
                );
                let (r, _) = conn.write(resp.into_bytes(), limit).await;
                if r.is_err() || !head.keep_alive {
                    return;
                }
            }
        });
    }
}

fn seen_by_backend(head: &RequestHead) -> String {
    let mut s = String::from("{\"path\":");
    json_string(&mut s, head.target());
    for (key, name) in [
        ("request_id", "x-request-id"),
        ("forwarded_for", "x-forwarded-for"),
        ("user", "x-user-id"),
        ("role", "x-role"),
    ] {
        if let Some(v) = head.header(name) {
            s.push_str(&format!(",\"{key}\":"));
            json_string(&mut s, &String::from_utf8_lossy(v));
        }
    }
    s.push('}');
    s
}

fn answer(svc: Service, head: &RequestHead) -> (u16, String) {
    let seen = seen_by_backend(head);
    let path = head.path();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (svc, segs.as_slice()) {
        (_, ["health"]) => (200, "{\"status\":\"ok\"}".into()),
        (Service::Users, ["users", id]) => {
            let names = ["ada", "grace", "linus", "barbara", "ken"];
            let name = id.parse::<usize>().ok().and_then(|n| names.get(n % names.len())).copied();
            match name {
                Some(n) => (
                    200,
                    format!("{{\"id\":{id:?},\"name\":\"{n}\",\"email\":\"{n}@example.com\",\"seen_by_backend\":{seen}}}"),
                ),
                None => (404, format!("{{\"error\":\"no such user\",\"seen_by_backend\":{seen}}}")),
            }
        }
        (Service::Users, ["admin", ..]) => (
            200,
            format!("{{\"admin\":true,\"users\":5,\"seen_by_backend\":{seen}}}"),
        ),
        (Service::Orders(port), ["orders", ..]) => (
            200,
            format!(
                "{{\"orders\":[{{\"id\":\"o-1001\",\"customer_id\":\"1\",\"product_id\":\"p-2\",\"total\":42.5,\"status\":\"shipped\"}},\
                 {{\"id\":\"o-1002\",\"customer_id\":\"1\",\"product_id\":\"p-1\",\"total\":7.0,\"status\":\"open\"}}],\
                 \"served_by\":{port},\"seen_by_backend\":{seen}}}"
            ),
        ),
        (Service::Products, ["products"]) => (
            200,
            format!("{{\"products\":[{{\"id\":\"p-1\",\"name\":\"keyboard\",\"price\":49}},{{\"id\":\"p-2\",\"name\":\"mouse\",\"price\":19}}],\"version\":1,\"seen_by_backend\":{seen}}}"),
        ),
        (Service::Products, ["products", id]) => (
            200,
            format!("{{\"id\":{id:?},\"name\":\"keyboard\",\"price\":49,\"version\":1,\"seen_by_backend\":{seen}}}"),
        ),
        (Service::ProductsV2, ["products", ..]) => (
            200,
            format!("{{\"items\":[{{\"sku\":\"p-1\",\"title\":\"keyboard\",\"price_cents\":4900}}],\"version\":2,\"seen_by_backend\":{seen}}}"),
        ),
        _ => (404, format!("{{\"error\":\"not found\",\"seen_by_backend\":{seen}}}")),
    }
}

/// Printed once the demo gateway is ready.
pub fn print_instructions() {
    let https = DEMO_CERT.get().map_or_else(String::new, |cert| {
        format!(
            "TLS (self-signed certificate made at start, trusted with --cacert):\n  curl -i --cacert {cert} https://localhost:8443/api/v1/products\n"
        )
    });
    let user = demo_token("1", "user", "users:read");
    let admin = demo_token("2", "admin", "users:read");
    println!(
        r#"
shardgate demo is running: gateway on http://127.0.0.1:8080, demo backends on 127.0.0.1:9001-9004,9012.
Demo tokens (HS256, valid 24 h):
  USER={user}
  ADMIN={admin}
Try:
  curl -i http://127.0.0.1:8080/api/v1/products                          # public prefix route, strip_prefix
  curl -i -H 'X-API-Version: 2.0' http://127.0.0.1:8080/api/v1/products # header route to products-v2
  curl -i http://127.0.0.1:8080/api/v1/users/1                           # 401: the route needs a token
  curl -i -H "Authorization: Bearer $USER" http://127.0.0.1:8080/api/v1/users/1   # 200, X-User-Id forwarded
  curl -i -H "Authorization: Bearer $USER" http://127.0.0.1:8080/api/v1/admin     # 403: needs role admin
  curl -i -H "Authorization: Bearer $ADMIN" http://127.0.0.1:8080/api/v1/admin    # 200
  curl -i -H 'X-User-Id: 2' http://127.0.0.1:8080/api/v1/products       # spoofed identity header is stripped
  curl -i -X DELETE -H "Authorization: Bearer $USER" http://127.0.0.1:8080/api/v1/users/1  # 405 with Allow
  for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w '%{{http_code}} ' -H "Authorization: Bearer $USER" http://127.0.0.1:8080/api/v1/users/1; done; echo
                                                                          # per-user limit: 5 x 200, then 429 (+1 per 2 s)
  curl -s http://127.0.0.1:8080/api/v1/orders; curl -s http://127.0.0.1:8080/api/v1/orders  # two targets
  curl -s -H "Authorization: Bearer $USER" http://127.0.0.1:8080/api/v1/dashboard  # 4 backend calls, 1 JSON answer
  curl -i http://127.0.0.1:8080/nope                                     # 404 as JSON
{https}Operate it (admin listener, private):
  open http://127.0.0.1:9900/                                            # live status page
  curl -s http://127.0.0.1:9900/metrics | grep shardgate_requests_total  # Prometheus metrics
  curl -s http://127.0.0.1:9900/ready; curl -s http://127.0.0.1:9900/upstreams   # readiness, upstream state
  curl -s http://127.0.0.1:9900/config                                   # effective config, secrets redacted
  kill -HUP <pid>   # reload config/demo.ron;   Ctrl-C or kill -TERM <pid>  # graceful shutdown
"#
    );
}
