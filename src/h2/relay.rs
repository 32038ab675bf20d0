//! HTTP/2 end to end: a downstream stream relayed to an upstream stream with
//! both directions flowing at once, so gRPC streaming works in all four
//! shapes (unary, server, client, bidirectional) with each side's flow
//! control pacing the other, and trailers pass through untouched.

use std::future::Future;
use std::time::{Duration, Instant};

use h2::Reason;
use http::{HeaderMap, HeaderValue, Response};

use super::pool::{Call, PoolError};
use super::{RecvBody, Responder, SendBody};

/// What a relay that answered the client did.
#[derive(Debug, Clone, Copy)]
pub struct Relayed {
    /// The status sent to the client.
    pub status: u16,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
}

/// Why a relay ended before the client got a response head: the responder
/// comes back so the gateway can answer with its own error.
pub enum Unanswered {
    /// The upstream stream failed (or was refused) before its head.
    Upstream(PoolError),
    /// No response head within the head timeout or the deadline.
    Timeout,
    /// The client went away (its stream was reset) before a response.
    ClientGone,
}

/// How a relay ended.
pub enum Outcome {
    /// The client got a response (complete, or cut short by a failure
    /// after the head: then the stream was reset or, for gRPC, ended with a
    /// gRPC status).
    Answered(Relayed),
    /// Nothing was sent to the client.
    Unanswered(Unanswered, Responder),
}

/// Limits of one relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// Longest wait for the response head.
    pub head_timeout: Duration,
    /// Longest wait between two response body reads (`None`: none, for
    /// long-lived streams bounded by their deadline).
    pub read_timeout: Option<Duration>,
    /// The whole exchange ends by then (a gRPC deadline).
    pub deadline: Option<Instant>,
    /// The client is a gRPC client: a failure after the head ends the
    /// stream with a gRPC status instead of a reset.
    pub grpc: bool,
}

/// Relays `call` (a request already started upstream) and the client's
/// `body` both ways until the response ends.
pub async fn relay(
    mut call: Call,
    body: Option<RecvBody>,
    responder: Responder,
    limits: RelayLimits,
    extra: HeaderMap,
) -> Outcome {
    let upload = upload(body, call.body.take());
    let mut upload = std::pin::pin!(upload);
    let mut uploaded = false;
    let head = within(limits.head_timeout, limits.deadline, call.response());
    let mut head = std::pin::pin!(head);
    // Until the response head: the body flows up meanwhile.
    let head = loop {
        monoio::select! {
            r = &mut head => break r,
            up = &mut upload, if !uploaded => {
                uploaded = true;
                if up.is_err() {
                    return Outcome::Unanswered(Unanswered::ClientGone, responder);
                }
            }
        }
    };
    let (parts, mut down) = match head {
        None => return Outcome::Unanswered(Unanswered::Timeout, responder),
        Some(Err(e)) => return Outcome::Unanswered(Unanswered::Upstream(e), responder),
        Some(Ok(pair)) => pair,
    };
    let status = parts.status.as_u16();
    let mut response = Response::from_parts(parts, ());
    strip_connection_fields(response.headers_mut());
    for name in extra.keys() {
        response.headers_mut().remove(name);
    }
    for (name, value) in &extra {
        response.headers_mut().append(name.clone(), value.clone());
    }
    let end = down.is_end_stream();
    let mut send = match responder.send_head_keep(response, end) {
        Ok(send) => send,
        Err(_) => {
            return Outcome::Answered(Relayed {
                status,
                bytes_out: 0,
            })
        }
    };
    let mut relayed = Relayed {
        status,
        bytes_out: 0,
    };
    if end {
        return Outcome::Answered(relayed);
    }
    let bytes_out = std::cell::Cell::new(0u64);
    let ended = {
        let download = download(&mut down, &mut send, &bytes_out, limits);
        let mut download = std::pin::pin!(download);
        loop {
            monoio::select! {
                r = &mut download => break r,
                up = &mut upload, if !uploaded => {
                    uploaded = true;
                    // The client reset its stream: nothing more to send it.
                    if up.is_err() {
                        break Ok(());
                    }
                }
            }
        }
    };
    relayed.bytes_out = bytes_out.get();
    if let Err(why) = ended {
        fail_after_head(&mut send, limits.grpc, why);
    }
    Outcome::Answered(relayed)
}

/// Copies the client's body (then its trailers) to the upstream stream.
async fn upload(body: Option<RecvBody>, send: Option<SendBody>) -> Result<(), ()> {
    let (Some(mut body), Some(mut send)) = (body, send) else {
        return Ok(());
    };
    loop {
        match body.chunk().await {
            Some(Ok(data)) => {
                if send.send(data).await.is_err() {
                    return Ok(());
                }
            }
            Some(Err(_)) => {
                send.reset(Reason::CANCEL);
                return Err(());
            }
            None => {
                let trailers = match body.trailers().await {
                    Ok(t) => t,
                    Err(_) => {
                        send.reset(Reason::CANCEL);
                        return Err(());
                    }
                };
                let _ = send.end(trailers);
                // Dropping the sender now would be read as the request
                // abandoned: it lives until the response ends.
                std::future::pending::<()>().await;
                return Ok(());
            }
        }
    }
}

/// Why the response body failed after its head went out.
enum Cut {
    Timeout,
    Upstream,
    Client,
}

/// Copies the upstream's body and trailers to the client.
async fn download(
    down: &mut RecvBody,
    send: &mut SendBody,
    bytes_out: &std::cell::Cell<u64>,
    limits: RelayLimits,
) -> Result<(), Cut> {
    loop {
        let wait = limits
            .read_timeout
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        let next = within(wait, limits.deadline, down.chunk()).await;
        match next {
            None => return Err(Cut::Timeout),
            Some(Some(Ok(data))) => {
                bytes_out.set(bytes_out.get() + data.len() as u64);
                send.send(data).await.map_err(|_| Cut::Client)?;
            }
            Some(Some(Err(_))) => return Err(Cut::Upstream),
            Some(None) => {
                let trailers = down.trailers().await.map_err(|_| Cut::Upstream)?;
                return send.end(trailers).map_err(|_| Cut::Client);
            }
        }
    }
}

/// Ends a response whose body failed: a gRPC client gets a status in
/// trailers (DEADLINE_EXCEEDED, UNAVAILABLE); others a reset.
fn fail_after_head(send: &mut SendBody, grpc: bool, why: Cut) {
    let code = match why {
        Cut::Client => return send.reset_in_place(Reason::CANCEL),
        Cut::Timeout => crate::grpc::status::Code::DeadlineExceeded,
        Cut::Upstream => crate::grpc::status::Code::Unavailable,
    };
    if !grpc {
        return send.reset_in_place(Reason::CANCEL);
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code.as_i32()));
    trailers.insert(
        "grpc-message",
        HeaderValue::from_static(match why {
            Cut::Timeout => "deadline exceeded at the gateway",
            _ => "upstream stream failed",
        }),
    );
    if send.end(Some(trailers)).is_err() {
        send.reset_in_place(Reason::CANCEL);
    }
}

/// Fields of one HTTP/1.1 connection never sent on a stream.
fn strip_connection_fields(h: &mut HeaderMap) {
    for name in super::CONNECTION_SPECIFIC {
        h.remove(name);
    }
}

/// `fut` within `wait` and before `deadline`; `None` when either passed.
async fn within<T>(
    wait: Duration,
    deadline: Option<Instant>,
    fut: impl Future<Output = T>,
) -> Option<T> {
    let wait = match deadline {
        Some(d) => wait.min(d.saturating_duration_since(Instant::now())),
        None => wait,
    };
    monoio::time::timeout(wait, fut).await.ok()
}
