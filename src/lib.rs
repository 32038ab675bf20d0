//! shardgate: a sharded thread-per-core API gateway on io_uring.
//!
//! Every shard is a pinned OS thread running its own monoio runtime, its own
//! SO_REUSEPORT listeners, its own compiled route table and its own upstream
//! connection pools. The request path never leaves the shard; shards hear
//! from the control thread (reload, shutdown) through channel messages.
// Five `unsafe` blocks exist: `http::conn::Conn::watcher` (adopting a
// freshly duplicated descriptor), `memory::give_back` (a call into the
// allocator that takes no arguments), `shard::background::lower_priority`
// (sched_setscheduler/setpriority for background threads), and two in
// `tls::stream` (copying decrypted bytes into, and viewing the bytes of,
// monoio's rent-style buffers, as its own socket reads and writes do);
// everything else is safe code.
#![deny(unsafe_code)]
// No panics reachable from requests, upstream answers or config: no unwrap,
// expect or panic, and no indexing or slicing that could go out of bounds.
// The few provably safe exceptions carry an `allow` with the reason.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        clippy::string_slice
    )
)]

pub mod admin;
pub mod aggregate;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod compiled;
pub mod compress;
pub mod config;
pub mod demo;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod h2;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod observe;
pub mod pace;
pub mod pipeline;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod resilience;
pub mod router;
pub mod server;
pub mod shard;
pub mod tls;
pub mod transform;
pub mod validate;

/// A future polled through a box and a vtable, so that its code stays out of
/// the caller's poll function and its state out of the caller's future.
///
/// The request path's async functions are inlined into one another: without
/// this, the poll function of `pipeline::handle` holds the code of every
/// stage a route may have, and a plain proxied request runs through a few
/// hot instructions scattered over about 100 KB of code. Stages a request
/// may skip go through here; they pay one allocation when they run.
pub(crate) fn out_of_line<'a, T>(
    f: impl std::future::Future<Output = T> + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>> {
    Box::pin(f)
}
