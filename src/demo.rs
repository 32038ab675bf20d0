//! Built-in demo backends (users, orders, products, a WebSocket echo, a
//! gRPC inventory service) for `cargo run --release`. They run on one extra
//! thread with their own monoio runtime and speak HTTP/1.1 through the
//! gateway's own codec; the echo speaks the minimal RFC 6455 server side
//! (handshake, frames, ping, close). The gRPC inventory backend
//! ([`inventory`]) runs on a thread of its own on the gateway's HTTP/2 server.
use crate::error::json_string;
use crate::http::body::{discard_body, CopyLimits};
use crate::http::{Conn, Parsed, RequestHead};
use monoio::net::TcpListener;
use std::time::Duration;

pub mod inventory;
pub use inventory::start as start_inventory;

/// Where the demo's gRPC inventory backend listens.
pub const INVENTORY_ADDR: &str = "127.0.0.1:9006";

/// The demo config, compiled into the binary (same text as `config/demo.ron`).
pub const DEMO_CONFIG: &str = include_str!("../config/demo.ron");

/// Where the demo's self-signed certificate was written (set once at start).
static DEMO_CERT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The demo's https listener, added after the `public` one.
const PUBLIC_LISTENER: &str = r#"Listener(name: "public", bind: "127.0.0.1:8080", http2: true),"#;

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
    let dir = files_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    std::fs::write(&key, made.key_pair.serialize_pem())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    let cert = cert.display().to_string();
    let listener = format!(
        "{PUBLIC_LISTENER}\n        Listener(name: \"https\", bind: \"127.0.0.1:8443\", http2: true,\n                 tls: Some(Tls(cert: {cert:?}, key: {:?}))),",
        key.display().to_string()
    );
    let _ = DEMO_CERT.set(cert);
    Ok(text.replacen(PUBLIC_LISTENER, &listener, 1))
}

/// Where the demo writes its certificate and bundled files: a directory of
/// this process's under the system's temporary directory, removed when the
/// demo stops.
pub fn files_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("shardgate-demo-{}", std::process::id()))
}

/// The demo's order schema (`config/schemas/order.json`), compiled in.
pub const ORDER_SCHEMA: &str = include_str!("../config/schemas/order.json");

/// Writes the bundled order schema and the inventory descriptor set next
/// to the demo's certificate (in a fresh directory under the system's
/// temporary directory) and points the demo config `text` at them, so the
/// demo runs from any directory.
pub fn with_bundled_schemas(text: &str) -> Result<String, String> {
    let dir = files_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join("order.json");
    std::fs::write(&path, ORDER_SCHEMA).map_err(|e| format!("{}: {e}", path.display()))?;
    let pb = dir.join("inventory.pb");
    std::fs::write(&pb, inventory::DESCRIPTORS).map_err(|e| format!("{}: {e}", pb.display()))?;
    Ok(text
        .replace(
            "\"schemas/order.json\"",
            &format!("{:?}", path.display().to_string()),
        )
        .replace(
            "\"../protos/inventory.pb\"",
            &format!("{:?}", pb.display().to_string()),
        ))
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
    /// WebSocket echo: every data frame back as it came, pings answered.
    Echo,
}

const BACKENDS: [(u16, Service); 6] = [
    (9001, Service::Users),
    (9002, Service::Orders(9002)),
    (9012, Service::Orders(9012)),
    (9003, Service::Products),
    (9004, Service::ProductsV2),
    (9005, Service::Echo),
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
    start_inventory(INVENTORY_ADDR)?;
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
                if let (Service::Echo, Some(key)) = (svc, head.header("sec-websocket-key")) {
                    let resp = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
                        websocket_accept(key)
                    );
                    let (r, _) = conn.write(resp.into_bytes(), limit).await;
                    if r.is_ok() {
                        echo_frames(&mut conn).await;
                    }
                    return;
                }
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

/// The `Sec-WebSocket-Accept` answer to a client's key (RFC 6455 §4.2.2).
pub fn websocket_accept(key: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(key.trim_ascii());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    crate::auth::introspect::base64(&h.finalize())
}

/// Largest frame the demo echo takes.
const MAX_FRAME: u64 = 1 << 20;

/// Echoes WebSocket frames on an upgraded connection until it closes.
async fn echo_frames(conn: &mut Conn) {
    let idle = Duration::from_secs(600);
    loop {
        let (first, payload) = loop {
            match parse_frame(conn.buffered()) {
                Ok(Some((first, payload, n))) => {
                    conn.consume(n);
                    break (first, payload);
                }
                Ok(None) => {}
                Err(_) => return,
            }
            if !matches!(conn.fill(idle).await, Ok(n) if n > 0) {
                return;
            }
        };
        let reply = match first & 0x0f {
            // Data frames (and continuations) go back as they came.
            0x0..=0x2 => frame(first, &payload),
            0x8 => {
                let _ = conn.write(frame(0x88, &payload), idle).await;
                return;
            }
            0x9 => frame(0x8a, &payload),
            0xa => continue,
            _ => return,
        };
        if conn.write(reply, idle).await.0.is_err() {
            return;
        }
    }
}

/// A client frame: its first byte (FIN and opcode), its unmasked payload,
/// and its length on the wire.
type Frame = (u8, Vec<u8>, usize);

/// One masked client frame at the start of `buf`; `None` until it is complete.
fn parse_frame(buf: &[u8]) -> Result<Option<Frame>, &'static str> {
    let (Some(&first), Some(&second)) = (buf.first(), buf.get(1)) else {
        return Ok(None);
    };
    if second & 0x80 == 0 {
        return Err("client frames must be masked");
    }
    let (len, at) = match second & 0x7f {
        126 => match buf.get(2..4).and_then(|b| <[u8; 2]>::try_from(b).ok()) {
            Some(b) => (u64::from(u16::from_be_bytes(b)), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err("frame too large for the demo");
    }
    let Some(mask) = buf
        .get(at..at + 4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
    else {
        return Ok(None);
    };
    let end = at + 4 + len as usize;
    let Some(data) = buf.get(at + 4..end) else {
        return Ok(None);
    };
    let payload = data
        .iter()
        .zip(mask.iter().cycle())
        .map(|(b, m)| b ^ m)
        .collect();
    Ok(Some((first, payload, end)))
}

/// An unmasked server frame.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(first);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
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

thread_local! {
    /// The products backend answers 500 (switched by `POST /admin/fail`
    /// and `POST /admin/recover` on it; the backends share one thread).
    static PRODUCTS_FAILING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The demo catalogue: id, name, price.
const PRODUCTS: [(&str, &str, u32); 3] = [
    ("p-1", "keyboard", 49),
    ("p-2", "mouse", 19),
    ("p-3", "monitor", 199),
];

fn product_json((id, name, price): (&str, &str, u32)) -> String {
    format!("{{\"id\":\"{id}\",\"name\":\"{name}\",\"price\":{price}}}")
}

fn answer(svc: Service, head: &RequestHead) -> (u16, String) {
    let seen = seen_by_backend(head);
    let path = head.path();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let post = head.method() == "POST";
    match (svc, segs.as_slice()) {
        (Service::Products, ["admin", "fail"]) if post => {
            PRODUCTS_FAILING.with(|f| f.set(true));
            (200, "{\"products_backend\":\"failing\"}".into())
        }
        (Service::Products, ["admin", "recover"]) if post => {
            PRODUCTS_FAILING.with(|f| f.set(false));
            (200, "{\"products_backend\":\"healthy\"}".into())
        }
        (Service::Products, _) if PRODUCTS_FAILING.with(|f| f.get()) => (
            500,
            format!("{{\"error\":\"products backend switched to failing\",\"seen_by_backend\":{seen}}}"),
        ),
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
        // `/products?ids=p-1,p-2` is the batch endpoint: the listed products only.
        (Service::Products, ["products"]) => {
            let ids = head
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("ids=")));
            let listed: Vec<String> = PRODUCTS
                .iter()
                .filter(|p| ids.is_none_or(|ids| ids.split(',').any(|i| i == p.0)))
                .map(|p| product_json(*p))
                .collect();
            (
                200,
                format!("{{\"products\":[{}],\"version\":1,\"seen_by_backend\":{seen}}}", listed.join(",")),
            )
        }
        (Service::Products, ["products", id]) => match PRODUCTS.iter().find(|p| p.0 == *id) {
            Some(p) => {
                let body = product_json(*p);
                let body = body.strip_suffix('}').unwrap_or(&body);
                (200, format!("{body},\"version\":1,\"seen_by_backend\":{seen}}}"))
            }
            None => (404, format!("{{\"error\":\"no such product\",\"seen_by_backend\":{seen}}}")),
        },
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
            "TLS (self-signed certificate made at start, trusted with --cacert):\n  curl -i --cacert {cert} https://localhost:8443/api/v1/products\n  curl -i --http2 --cacert {cert} https://localhost:8443/api/v1/products    # HTTP/2 by ALPN\n"
        )
    });
    let user = demo_token("1", "user", "users:read");
    let admin = demo_token("2", "admin", "users:read");
    println!(
        r#"
shardgate demo is running: gateway on http://127.0.0.1:8080, demo backends on 127.0.0.1:9001-9006,9012.
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
  curl -s http://127.0.0.1:8080/api/v1/orders-with-products          # each order with its product (for_each)
  curl -s http://127.0.0.1:8080/api/v1/orders-with-products/batched  # the same from one batch call
  curl -i http://127.0.0.1:8080/nope                                     # 404 as JSON

CORS and validation:
  curl -i -X OPTIONS -H 'Origin: https://app.example.com' -H 'Access-Control-Request-Method: PUT' -H 'Access-Control-Request-Headers: authorization' http://127.0.0.1:8080/api/v1/users/1
                                                                          # 204 preflight answered at the edge (no token needed)
  curl -i -H 'Origin: https://app.example.com' http://127.0.0.1:8080/api/v1/products   # Access-Control-Allow-Origin, Vary: Origin
  curl -i -H 'Origin: https://example.com.evil.com' http://127.0.0.1:8080/api/v1/products  # no CORS fields
  curl -i -H 'Content-Type: application/json' -d '{{"customer_id":"x","items":[{{"product_id":"p-1","qty":0}}],"gift":true}}' http://127.0.0.1:8080/api/v1/checkout
                                                                          # 400 listing every violation (path, keyword, message)
  curl -i -H 'Content-Type: application/json' -d '{{"customer_id":"1","items":[{{"product_id":"p-1","qty":2}}]}}' http://127.0.0.1:8080/api/v1/checkout
                                                                          # 200: valid, forwarded to the orders backend
  curl -i -H 'Content-Type: text/plain' -d 'hello' http://127.0.0.1:8080/api/v1/checkout  # 415
  curl -si http://127.0.0.1:8080/api/v1/catalogue http://127.0.0.1:8080/api/v1/catalogue | grep -i -E '^(x-cache-status|age):'
                                                                          # response cache: MISS, then HIT with Age (one connection, so one shard)
  curl -s -X POST 'http://127.0.0.1:9900/cache/purge?prefix=/api/v1/catalogue'; echo   # purge it: the next call is a MISS
  python3 -m websockets ws://127.0.0.1:8080/ws/echo                      # WebSocket echo through the gateway (pip install websockets; or: websocat ws://127.0.0.1:8080/ws/echo)

HTTP/2 (the same pipeline for every stream):
  curl -i --http2-prior-knowledge http://127.0.0.1:8080/api/v1/products  # h2c with prior knowledge, beside HTTP/1.1 on the same port
  nghttp -nv http://127.0.0.1:8080/api/v1/products http://127.0.0.1:8080/api/v1/orders   # two streams on one connection (apt install nghttp2-client)

REST/JSON -> gRPC (the inventory.v1.Inventory backend on 127.0.0.1:9006 speaks gRPC over h2c):
  curl -i http://127.0.0.1:8080/api/v1/inventory/sku-1001               # GetItem as JSON: enums, int64, Timestamp, Duration, wrappers
  curl -i http://127.0.0.1:8080/api/v1/inventory/sku-9999               # gRPC NOT_FOUND -> 404 JSON {{"code":5,"status":"NOT_FOUND",..}}
  curl -s 'http://127.0.0.1:8080/api/v1/inventory?filter.include_discontinued=true'   # ListItems (server streaming) as a JSON array
  curl -s -H 'Content-Type: application/json' -d '{{"item":{{"sku":"sku-2001","name":"drill","kind":"KIND_TOOL","quantity":"5"}}}}' http://127.0.0.1:8080/api/v1/inventory
                                                                          # CreateItem (body: "*")
  curl -s -X PATCH -H 'Content-Type: application/json' -d '{{"quantity":"7"}}' http://127.0.0.1:8080/api/v1/inventory/sku-2001    # UpdateItem (body: "item")
  curl -s -H 'Content-Type: application/json' -d '{{"quantity":"2","holdFor":"600s"}}' http://127.0.0.1:8080/api/v1/inventory/sku-1001:reserve
                                                                          # ReserveItem: no annotation, bound in the config
  curl -i -H 'Content-Type: application/json' -d '{{"item":{{"sku":"x","colour":"red"}}}}' http://127.0.0.1:8080/api/v1/inventory   # unknown field: 400 JSON
  printf '\x00\x00\x00\x00\x0a\x0a\x08sku-1001' | curl -s --http2-prior-knowledge -H 'content-type: application/grpc' -H 'te: trailers' --data-binary @- http://127.0.0.1:8080/inventory.v1.Inventory/GetItem | od -c | head -5
                                                                          # raw gRPC (GetItem sku-1001) through the gateway's pass-through route
                                                                          # (the same to http://127.0.0.1:9006/... reaches the backend directly)

Circuit breaker and fallback (products: the breaker opens at 60% failures of 3+ calls on a shard, for 5 s):
  curl -X POST http://127.0.0.1:9003/admin/fail; echo                    # the products backend now answers 500
  for i in 1 2 3 4 5 6 7 8; do curl -s -o /dev/null -D - http://127.0.0.1:8080/api/v1/products | grep -i -E '^(HTTP|x-fallback)'; done
                                                                          # 200 from the fallback: upstream-5xx, then circuit-open
  curl -s http://127.0.0.1:9900/upstreams | grep -A2 '"circuit_breaker"'  # "state": "open"
  curl -s http://127.0.0.1:9900/metrics | grep circuit_breaker_state      # 1 = open
  curl -X POST http://127.0.0.1:9003/admin/recover; echo; sleep 5         # recovered; the open period ends
  for i in 1 2 3 4 5 6; do curl -s http://127.0.0.1:8080/api/v1/products; echo; done
                                                                          # trials pass (one shard at a time), it closes: real answers

{https}Operate it (admin listener, private):
  open http://127.0.0.1:9900/                                            # live status page
  curl -s http://127.0.0.1:9900/metrics | grep shardgate_requests_total  # Prometheus metrics
  curl -s http://127.0.0.1:9900/ready; curl -s http://127.0.0.1:9900/upstreams   # readiness, upstream state
  curl -s http://127.0.0.1:9900/config                                   # effective config, secrets redacted
  kill -HUP <pid>   # reload config/demo.ron;   Ctrl-C or kill -TERM <pid>  # graceful shutdown
"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_is_rfc_6455s_example() {
        assert_eq!(
            websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_parse_when_complete_and_unmask() {
        // RFC 6455 §5.7: a masked "Hello".
        let f = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(parse_frame(&f), Ok(Some((0x81, b"Hello".to_vec(), 11))));
        assert_eq!(parse_frame(&f[..10]), Ok(None));
        assert!(parse_frame(&[0x81, 0x05, b'H']).is_err());
        let big = frame(0x82, &[7u8; 70_000]);
        assert_eq!(big.get(..2), Some(&[0x82, 127][..]));
    }

    fn products(target: &str) -> (u16, serde_json::Value) {
        let raw = format!("GET {target} HTTP/1.1\r\nhost: x\r\n\r\n");
        let Ok(crate::http::Parsed::Complete(head, _)) =
            RequestHead::parse(raw.as_bytes(), 8192, 10)
        else {
            panic!("head");
        };
        let (status, body) = answer(Service::Products, &head);
        (status, serde_json::from_str(&body).unwrap())
    }

    #[test]
    fn products_answer_by_id_and_in_batches() {
        let (status, v) = products("/products/p-2");
        assert_eq!((status, v["name"].as_str()), (200, Some("mouse")));
        let (status, v) = products("/products/p-1");
        assert_eq!((status, v["name"].as_str()), (200, Some("keyboard")));
        assert_eq!(products("/products/p-404").0, 404);
        let (_, v) = products("/products?ids=p-3,p-1");
        let ids: Vec<&str> = v["products"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["id"].as_str())
            .collect();
        assert_eq!(ids, ["p-1", "p-3"]);
        let (_, v) = products("/products");
        assert_eq!(v["products"].as_array().unwrap().len(), 3);
    }
}
