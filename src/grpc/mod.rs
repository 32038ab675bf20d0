//! gRPC support: the transcoding core (HTTP/JSON ⇄ gRPC) and the pieces of
//! the gRPC wire protocol the gateway needs on its own.
//!
//! - [`transcode`]: a descriptor set and a service become a [`Transcoder`]:
//!   a matcher from (HTTP method, path) to a method (by the methods'
//!   `google.api.http` annotations or explicit [`MethodMapping`]s), the
//!   request message built from path parameters, query parameters and the
//!   JSON body, and the response message written back as JSON, both by the
//!   canonical proto3 JSON mapping (prost-reflect's dynamic messages).
//! - [`template`]: `google.api.http` path templates (`/v1/{name=shelves/*}`,
//!   `{item.sku}`, `*`, `**`, `:verb`).
//! - [`frame`]: the 5-byte length-prefixed message framing, an incremental
//!   decoder with a size cap, and the JSON array / NDJSON writer for
//!   server-streaming answers.
//! - [`status`]: gRPC status codes, their HTTP statuses (google.rpc's
//!   published mapping) and back for gateway errors, the JSON error body
//!   with the decoded `grpc-status-details-bin` details.
//! - [`timeout`]: the `grpc-timeout` header to and from a `Duration`.
//!
//! - [`stage`]: the request stage of a route with `grpc: Some(Transcode(..))`
//!   (config checks, the call over the shard's HTTP/2 pool, the JSON answer).
//!
//! Everything but [`stage`] is free of I/O.

pub mod frame;
pub mod stage;
pub mod status;
pub mod template;
pub mod timeout;
pub mod transcode;

pub use frame::{FrameDecoder, FrameError, StreamMode, StreamWriter};
pub use status::Code;
pub use template::PathTemplate;
pub use transcode::{Binding, JsonOptions, Match, MethodMapping, TranscodeError, Transcoder};
