//! The live status page in a real headless browser: the real gateway with an
//! admin listener and a backend, traffic with some 404s and 429s, and
//! Chromium driven over WebDriver (chromedriver, plain HTTP from here) until
//! the page's charts and tables show that traffic; then the DOM is checked
//! against what the clients saw, and a screenshot is saved to
//! `target/status-page.png`.
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; scripts/test.sh installs them). Without them the test
//! says so and passes, unless `SHARDGATE_BROWSER_REQUIRED=1` (set by
//! scripts/test.sh), where a missing browser fails it.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Finding the browser
// ---------------------------------------------------------------------------

fn find_binary(names: &[&str], extra: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    extra.iter().map(PathBuf::from).find(|p| p.is_file())
}

fn browser() -> Option<(PathBuf, PathBuf)> {
    let driver = find_binary(&["chromedriver"], &["/usr/lib/chromium/chromedriver"])?;
    let chrome = find_binary(
        &["chromium", "chromium-browser", "google-chrome"],
        &["/usr/lib/chromium/chromium"],
    )?;
    Some((driver, chrome))
}

// ---------------------------------------------------------------------------
// WebDriver over plain HTTP
// ---------------------------------------------------------------------------

/// One HTTP/1.1 exchange with `Connection: close`; the parsed JSON body.
fn http_json(port: u16, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    // chromedriver keeps the connection open whatever the request says: the
    // body ends where its length (or its last chunk) says.
    let mut raw = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        if let Some(split) = find(&raw, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = &raw[split + 4..];
            let length = head.lines().find_map(|l| {
                l.strip_prefix("content-length:")
                    .and_then(|n| n.trim().parse::<usize>().ok())
            });
            let payload = match length {
                Some(n) if body.len() >= n => Some(body[..n].to_vec()),
                Some(_) => None,
                None if head.contains("transfer-encoding: chunked") => dechunk(body).ok(),
                None => None,
            };
            if let Some(payload) = payload {
                return serde_json::from_slice(&payload).map_err(|e| {
                    format!(
                        "bad JSON from chromedriver ({e}): {}",
                        String::from_utf8_lossy(&payload)
                    )
                });
            }
        }
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "chromedriver closed mid-response: {}",
                String::from_utf8_lossy(&raw)
            ));
        }
        raw.extend_from_slice(&buf[..n]);
    }
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(data, b"\r\n").ok_or("bad chunk")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size: {e}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("short chunk")?);
        data = data.get(size + 2..).ok_or("short chunk")?;
    }
}

/// chromedriver and one browser session; both end when dropped.
struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: PathBuf,
}

impl Browser {
    fn start(driver: &Path, chrome: &Path) -> Browser {
        let port = free_port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver.display()));
        let mut b = Browser {
            driver: child,
            port,
            session: String::new(),
            _profile: temp_dir(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = http_json(port, "GET", "/status", None) {
                if s["value"]["ready"] == json!(true) {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not get ready");
            thread::sleep(Duration::from_millis(100));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chrome.to_string_lossy(),
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1100", "--hide-scrollbars", "--force-device-scale-factor=1",
                    format!("--user-data-dir={}", b._profile.display()),
                ],
            },
        }}});
        let v = http_json(port, "POST", "/session", Some(&caps))
            .unwrap_or_else(|e| panic!("new WebDriver session: {e}"));
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id from chromedriver: {v}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, what: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{what}", self.session);
        let v = http_json(self.port, method, &path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {what}: {e}"));
        if let Some(err) = v["value"].get("error") {
            panic!(
                "WebDriver {method} {what}: {err}: {}",
                v["value"]["message"]
            );
        }
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", Some(&json!({ "url": url })));
    }

    /// Runs `script` (a function body) in the page; its return value.
    fn eval(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn resize(&self, width: u64, height: u64) {
        self.call(
            "POST",
            "/window/rect",
            Some(&json!({"width": width, "height": height})),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let v = self.call("GET", "/screenshot", None);
        base64_decode(v.as_str().unwrap_or_default()).expect("screenshot is base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = http_json(self.port, "DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\r' | b'\n' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

/// What the page shows, read from its DOM (ids and data attributes).
const READ_PAGE: &str = r#"
const q = s => document.querySelector(s);
const attr = (el, a) => el ? el.getAttribute(a) : null;
const api = q('#routes tr[data-route="api"]');
const none = q('#routes tr[data-route=""]');
const limited = q('#routes tr[data-route="limited"]');
const limit = q('#limits tr[data-limit="tiny"]');
const target = q('#upstreams tr[data-target]');
const mix = c => Number(attr(q('#status-mix [data-class="' + c + '"]'), 'data-total'));
return {
  sampled: Number(attr(q('#updated'), 'data-sampled')),
  api_rps: api ? Number(attr(api, 'data-rps')) : null,
  api_requests: api ? Number(attr(api, 'data-requests')) : null,
  api_p99: api ? api.querySelector('[data-col="p99"]').textContent : null,
  api_rate_text: api ? api.querySelector('[data-col="rps"]').textContent : null,
  none_4xx: none ? Number(attr(none, 'data-4xx')) : null,
  none_text: none ? none.textContent : null,
  limited_4xx: limited ? Number(attr(limited, 'data-4xx')) : null,
  mix_2xx: mix('2xx'), mix_4xx: mix('4xx'), mix_5xx: mix('5xx'),
  mix_text: q('#status-mix').textContent,
  rps_points: Number(attr(q('#chart-rps'), 'data-points')),
  latency_points: Number(attr(q('#chart-latency'), 'data-points')),
  limit_refused: limit ? Number(attr(limit, 'data-refused')) : null,
  target: attr(target, 'data-target'),
  target_health: target ? target.children[1].textContent : null,
  shards: document.querySelectorAll('#shards tr[data-shard]').length,
  shard_conns: Array.from(document.querySelectorAll('#shards tr[data-shard]')).map(r => Number(r.getAttribute('data-connections'))),
  kpi_rps: q('#kpi-rps').textContent,
  kpi_p99: q('#kpi-p99').textContent,
  metrics_off_hidden: q('#metrics-off').classList.contains('hidden'),
  resources: performance.getEntriesByType('resource').map(r => r.name),
  height: document.documentElement.scrollHeight,
  chrome_height: window.outerHeight - window.innerHeight,
};
"#;

#[derive(Default)]
struct Sent {
    ok: AtomicU64,
    not_found: AtomicU64,
    limited_ok: AtomicU64,
    refused: AtomicU64,
    other: AtomicU64,
}

fn gateway(backend: &Backend) -> Gateway {
    Gateway::start(&format!(
        "Gateway(\n\
         shards: Count(2),\n\
         listeners: [Listener(name: \"main\", bind: \"127.0.0.1:$PORT\")],\n\
         limits_http: {LIMITS},\n\
         upstreams: {{ \"app\": Upstream(targets: [\"{addr}\"]) }},\n\
         rate_limits: {{ \"tiny\": RateLimit(key: Route, algorithm: FixedWindow(limit: 3, window_s: 3600)) }},\n\
         routes: [\n\
           Route(name: \"api\", match: Match(path_prefix: \"/api\"), upstream: \"app\"),\n\
           Route(name: \"limited\", match: Match(path_prefix: \"/limited\"), upstream: \"app\", rate_limits: [\"tiny\"]),\n\
         ],\n\
         admin: Some(Admin(bind: \"127.0.0.1:$PORT2\")),\n\
         )\n",
        addr = backend.addr()
    ))
}

/// Sends traffic until `stop`: mostly 200s on `/api`, a 404 every fifth
/// request, and a few requests to the rate-limited route (3 admitted in
/// its hour, the rest refused).
fn traffic(port: u16, stop: Arc<AtomicBool>, sent: Arc<Sent>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut i = 0u64;
        let deadline = Instant::now() + Duration::from_secs(420);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            i += 1;
            let path = if i.is_multiple_of(5) {
                "/nothing-here"
            } else if i % 20 == 3 && i < 200 {
                "/limited"
            } else {
                "/api/items"
            };
            let status = get(port, path).status;
            let counter = match (path, status) {
                ("/api/items", 200) => &sent.ok,
                ("/nothing-here", 404) => &sent.not_found,
                ("/limited", 200) => &sent.limited_ok,
                ("/limited", 429) => &sent.refused,
                _ => &sent.other,
            };
            counter.fetch_add(1, Ordering::SeqCst);
            thread::sleep(Duration::from_millis(15));
        }
    })
}

/// Reads the page until `done` holds for what it shows (or panics after `wait`).
fn wait_for(b: &Browser, wait: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + wait;
    loop {
        let v = b.eval(READ_PAGE);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the status page did not show {what} within {wait:?}; it shows:\n{v:#}"
        );
        thread::sleep(Duration::from_millis(250));
    }
}

fn target_dir() -> PathBuf {
    // target/<profile>/shardgate → target
    Path::new(bin())
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"))
}

#[test]
fn status_page_shows_live_traffic_in_a_real_browser() {
    let Some((driver, chrome)) = browser() else {
        let required = std::env::var("SHARDGATE_BROWSER_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "chromium and chromedriver are required (SHARDGATE_BROWSER_REQUIRED=1) but not found"
        );
        eprintln!(
            "SKIPPED status_page: chromium and chromedriver not found \
             (Debian: apt-get install chromium chromium-driver; scripts/test.sh installs them)"
        );
        return;
    };
    let backend = Backend::echo("app");
    let gw = gateway(&backend);
    let admin = format!("http://127.0.0.1:{}/", gw.port2);
    let b = Browser::start(&driver, &chrome);
    b.go(&admin);

    // Before any traffic: the page loads and draws the empty tables.
    let first = wait_for(&b, Duration::from_secs(15), "its first sample", |v| {
        v["sampled"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(first["api_requests"], Value::Null, "{first:#}");
    assert_eq!(first["shards"], json!(2), "{first:#}");

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(Sent::default());
    let load = traffic(gw.port, stop.clone(), sent.clone());

    // While traffic runs: the route row shows a rate, the mix shows 4xx,
    // both charts have points, the limit shows refusals.
    let live = wait_for(&b, Duration::from_secs(60), "the traffic", |v| {
        v["api_rps"].as_f64().unwrap_or(0.0) > 0.0
            && v["mix_4xx"].as_u64().unwrap_or(0) > 0
            && v["none_4xx"].as_u64().unwrap_or(0) > 0
            && v["limit_refused"].as_u64().unwrap_or(0) > 0
            && v["rps_points"].as_u64().unwrap_or(0) >= 3
            && v["latency_points"].as_u64().unwrap_or(0) >= 3
    });
    assert!(
        live["api_rate_text"].as_str().unwrap_or("").ends_with("/s"),
        "rate with a unit: {live:#}"
    );
    let p99 = live["api_p99"].as_str().unwrap_or("");
    assert!(
        p99.ends_with(" ms") || p99.ends_with(" µs") || p99.ends_with(" s"),
        "p99 with a unit: {p99:?}"
    );
    assert!(
        live["none_text"]
            .as_str()
            .unwrap_or("")
            .contains("no route"),
        "{live:#}"
    );
    assert_eq!(live["target"], json!(backend.addr()), "{live:#}");
    assert_eq!(live["target_health"], json!("n/a"), "{live:#}");
    assert_eq!(live["shards"], json!(2), "{live:#}");
    assert_eq!(live["metrics_off_hidden"], json!(true), "{live:#}");
    // Self-contained: everything the page loaded came from the admin listener.
    let resources = live["resources"].as_array().cloned().unwrap_or_default();
    for r in &resources {
        let r = r.as_str().unwrap_or("");
        assert!(r.starts_with(&admin), "the page loaded {r} from elsewhere");
    }

    // The screenshot, at the page's full height, while the charts show
    // traffic (STATUS_PAGE_TRAFFIC_S: seconds of traffic before it, 2 by
    // default; longer makes a fuller picture for the README).
    let before_shot = std::env::var("STATUS_PAGE_TRAFFIC_S")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(2)
        .min(300);
    thread::sleep(Duration::from_secs(before_shot));
    let page = b.eval(READ_PAGE);
    let height =
        page["height"].as_u64().unwrap_or(1100) + page["chrome_height"].as_u64().unwrap_or(0);
    b.resize(1280, height.clamp(600, 3000));
    thread::sleep(Duration::from_millis(1500));
    let png = b.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "screenshot is a PNG");
    let shot = target_dir().join("status-page.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    eprintln!("status page screenshot: {}", shot.display());

    // Traffic stops: the page's totals come to exactly what the clients saw.
    stop.store(true, Ordering::SeqCst);
    load.join().expect("traffic thread");
    let ok = sent.ok.load(Ordering::SeqCst);
    let not_found = sent.not_found.load(Ordering::SeqCst);
    let limited_ok = sent.limited_ok.load(Ordering::SeqCst);
    let refused = sent.refused.load(Ordering::SeqCst);
    assert_eq!(sent.other.load(Ordering::SeqCst), 0, "unexpected statuses");
    assert!(
        refused > 0 && limited_ok > 0,
        "{limited_ok} admitted, {refused} refused"
    );
    eprintln!("sent: {ok} ok, {not_found} 404, {limited_ok} limited ok, {refused} 429");
    let settled = wait_for(&b, Duration::from_secs(15), "the final totals", |v| {
        v["api_requests"].as_u64() == Some(ok)
            && v["none_4xx"].as_u64() == Some(not_found)
            && v["mix_2xx"].as_u64() == Some(ok + limited_ok)
            && v["mix_4xx"].as_u64() == Some(not_found + refused)
            && v["limit_refused"].as_u64() == Some(refused)
            && v["limited_4xx"].as_u64() == Some(refused)
    });
    assert_eq!(settled["mix_5xx"], json!(0), "{settled:#}");

    // Ten quiet seconds later the route's rate falls to zero, its totals stay.
    let quiet = wait_for(&b, Duration::from_secs(30), "the rate falling", |v| {
        v["api_rps"].as_f64() == Some(0.0)
    });
    assert_eq!(quiet["api_requests"].as_u64(), Some(ok), "{quiet:#}");
    assert!(
        quiet["shard_conns"]
            .as_array()
            .is_some_and(|c| c.iter().all(|n| n.as_u64() == Some(0))),
        "no connections left: {quiet:#}"
    );
}

#[test]
fn with_metrics_off_the_page_still_shows_shard_load() {
    let Some((driver, chrome)) = browser() else {
        let required = std::env::var("SHARDGATE_BROWSER_REQUIRED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "chromium and chromedriver are required but not found"
        );
        eprintln!("SKIPPED status_page: chromium and chromedriver not found");
        return;
    };
    let backend = Backend::echo("app");
    let gw = Gateway::start(&format!(
        "Gateway(\n\
         shards: Count(2),\n\
         listeners: [Listener(name: \"main\", bind: \"127.0.0.1:$PORT\")],\n\
         limits_http: {LIMITS},\n\
         upstreams: {{ \"app\": Upstream(targets: [\"{addr}\"]) }},\n\
         routes: [Route(name: \"api\", match: Match(path_prefix: \"/\"), upstream: \"app\")],\n\
         admin: Some(Admin(bind: \"127.0.0.1:$PORT2\", metrics: false)),\n\
         )\n",
        addr = backend.addr()
    ));
    // A connection held open (used every 500 ms, within the idle timeout)
    // shows in the shard table.
    let mut held = Client::connect(gw.port);
    assert_eq!(held.get("/x").status, 200);
    let stop = Arc::new(AtomicBool::new(false));
    let keep = {
        let stop = stop.clone();
        thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(500));
                assert_eq!(held.get("/x").status, 200);
            }
        })
    };
    let b = Browser::start(&driver, &chrome);
    b.go(&format!("http://127.0.0.1:{}/", gw.port2));
    let v = wait_for(&b, Duration::from_secs(20), "shard load", |v| {
        v["sampled"].as_u64().unwrap_or(0) >= 2
            && v["shards"] == json!(2)
            && v["shard_conns"]
                .as_array()
                .is_some_and(|c| c.iter().filter_map(Value::as_u64).sum::<u64>() == 1)
    });
    assert_eq!(
        v["metrics_off_hidden"],
        json!(false),
        "the banner shows: {v:#}"
    );
    assert_eq!(v["kpi_rps"], json!("off"), "{v:#}");
    assert_eq!(v["api_requests"], Value::Null, "no route rows: {v:#}");
    assert_eq!(v["rps_points"], json!(0), "no rate points: {v:#}");

    // The JSON behind it: metrics off, history columns of one length.
    let api = get(gw.port2, "/api/status");
    assert_eq!(api.status, 200);
    let j: Value = serde_json::from_slice(&api.body).expect("JSON");
    assert_eq!(j["metrics"], json!(false));
    let h = &j["history"];
    let len = h["t"].as_array().map_or(0, Vec::len);
    assert!((2..=300).contains(&len), "{len} samples");
    for col in [
        "rps",
        "p50_ms",
        "p99_ms",
        "mix",
        "refused_ps",
        "connections",
    ] {
        assert_eq!(
            h[col].as_array().map_or(0, Vec::len),
            len,
            "history column {col}"
        );
    }
    assert!(h["rps"]
        .as_array()
        .is_some_and(|r| r.iter().all(Value::is_null)));
    stop.store(true, Ordering::SeqCst);
    keep.join().expect("the held connection kept working");
}
