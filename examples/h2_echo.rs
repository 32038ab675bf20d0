//! A bare h2c (prior knowledge) echo server on one monoio thread, for
//! measuring the HTTP/2 layer alone (bench/RESULTS.md, "HTTP/2 on monoio"):
//! `cargo run --release --example h2_echo -- 127.0.0.1:8082`.
//! A request without a body is answered with a 13-byte body; one with a
//! body gets it back. Both end with a trailer. `H2_ECHO_IO=unsafe` uses
//! monoio-compat's unsafe `TcpStreamCompat` instead of the safe wrapper.

use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use shardgate::h2::{serve_h2, serve_h2c, H2Limits, RecvBody, Responder, Shutdown};

async fn echo(req: Request<RecvBody>, res: Responder) {
    let mut body = req.into_body();
    let Ok(head) = Response::builder().status(200).body(()) else {
        return;
    };
    let Ok(Some(mut send)) = res.send_head(head, false) else {
        return;
    };
    let mut any = false;
    while let Some(Ok(chunk)) = body.chunk().await {
        any = true;
        if send.send(chunk).await.is_err() {
            return;
        }
    }
    if !any
        && send
            .send(Bytes::from_static(b"hello, h2c!\n"))
            .await
            .is_err()
    {
        return;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo", HeaderValue::from_static("done"));
    let _ = send.trailers(trailers);
}

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8082".to_string());
    // H2_ECHO_IO=unsafe: monoio-compat's unsafe TcpStreamCompat instead of
    // the safe StreamWrapper, for comparing the two adapters.
    let unsafe_io = std::env::var("H2_ECHO_IO").is_ok_and(|v| v == "unsafe");
    let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("h2_echo: runtime: {err}");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match monoio::net::TcpListener::bind(addr.as_str()) {
            Ok(l) => l,
            Err(err) => {
                eprintln!("h2_echo: bind {addr}: {err}");
                return;
            }
        };
        println!("h2_echo: h2c on {addr}");
        let limits = Rc::new(H2Limits::default());
        let shutdown = Shutdown::new();
        let handler = Rc::new(echo);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (limits, shutdown, handler) = (limits.clone(), shutdown.clone(), handler.clone());
            monoio::spawn(async move {
                if unsafe_io {
                    // SAFETY (for this measurement only): the adapter needs
                    // the caller to pass the same buffer slice to every poll
                    // until it is ready. h2's codec does not promise that
                    // (its write buffer can grow between polls), so the
                    // gateway uses the safe wrapper; this path exists to
                    // measure what the copies of the safe one cost.
                    #[allow(unsafe_code)]
                    let io = unsafe { monoio_compat::TcpStreamCompatUnsafe::new(stream) };
                    let _ = serve_h2(io, &limits, shutdown, handler).await;
                } else {
                    let _ = serve_h2c(stream, Bytes::new(), &limits, shutdown, handler).await;
                }
            });
        }
    });
}
