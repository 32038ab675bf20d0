//! HTTP/2 client to HTTP/2 upstream: once the stages before the upstream
//! have run, the client's stream and the upstream stream are relayed
//! directly ([`crate::h2::relay`]), so gRPC streaming works in all four
//! shapes and trailers pass untouched. The answer carries the same added
//! fields as every other answer (`x-request-id`, the listener's and the
//! stages' lines such as CORS and rate-limit headers).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::{Disposition, Early, Exchange};
use crate::compiled::UpstreamPlan;
use crate::error::GatewayError;
use crate::h2::pool::Call;
use crate::h2::relay::{self, Outcome, RelayLimits, Unanswered};
use crate::h2::{RecvBody, Responder};
use crate::http::Conn;

/// Relays `call` and the client's stream halves; a failure before any
/// answer gives the responder back to the stream and returns the error for
/// the pipeline to answer (a gRPC status to a gRPC client).
#[allow(clippy::too_many_arguments)]
pub async fn relay(
    up: &UpstreamPlan,
    addr: SocketAddr,
    call: Call,
    native: (Option<RecvBody>, Responder),
    deadline: Option<Instant>,
    timeout: Duration,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Disposition, (GatewayError, Early)> {
    let (body, responder) = native;
    let grpc = client.stream.h2().is_some_and(|s| s.is_grpc());
    let limits = RelayLimits {
        // A gRPC call with a deadline is bounded by it alone (its first
        // message, which carries the head, may come late).
        head_timeout: match (grpc, deadline) {
            (true, Some(_)) => Duration::from_secs(365 * 24 * 3600),
            _ => timeout,
        },
        // A gRPC stream may be quiet for long: its deadline bounds it.
        read_timeout: (!grpc).then_some(timeout),
        deadline,
        grpc,
    };
    let extra = added_fields(ex);
    match relay::relay(call, body, responder, limits, extra).await {
        Outcome::Answered(r) => {
            ex.seen.status = r.status;
            ex.seen.bytes_out = r.bytes_out;
            ex.response_started = true;
            Ok(Disposition::Close)
        }
        Outcome::Unanswered(why, responder) => {
            if let Some(s) = client.stream.h2() {
                s.restore(responder);
            }
            Err(match why {
                Unanswered::Timeout => (
                    GatewayError::GatewayTimeout {
                        upstream: up.name.clone(),
                    },
                    Early::Timeout,
                ),
                Unanswered::Upstream(e) => super::h2up::pool_error(up, addr, e),
                Unanswered::ClientGone => (
                    GatewayError::BadRequest("the client reset its stream"),
                    Early::No,
                ),
            })
        }
    }
}

/// `x-request-id` and the lines the listener and the stages add to every
/// answer (`name: value\r\n` each).
fn added_fields(ex: &Exchange<'_>) -> HeaderMap {
    let mut map = HeaderMap::new();
    if let Ok(mut v) = HeaderValue::from_str(ex.request_id) {
        // New on every answer: not indexed (no HPACK table churn).
        v.set_sensitive(true);
        map.insert("x-request-id", v);
    }
    for line in ex.response_headers.split("\r\n") {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) {
            map.append(n, v);
        }
    }
    map
}
