//! A route's gRPC settings: HTTP/JSON → gRPC transcoding.

use serde::Deserialize;

/// What a route does with gRPC.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
pub enum Grpc {
    /// Answer REST/JSON calls by calling the methods of one gRPC service
    /// on the route's upstream (which must be `protocol: Http2`).
    Transcode(Transcode),
}

/// HTTP/JSON → gRPC transcoding of one service.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Transcode {
    /// A serialized `FileDescriptorSet` (`protoc --include_imports
    /// --descriptor_set_out`), relative to the config file; read when the
    /// config is loaded.
    pub descriptor_set: String,
    /// The service's full name (`inventory.v1.Inventory`).
    pub service: String,
    /// Explicit bindings, tried before the methods' `google.api.http`
    /// annotations (and the only way to reach a method without one).
    #[serde(default)]
    pub methods: Vec<GrpcMethod>,
    /// Write fields holding their default value (`0`, `""`, `[]`).
    #[serde(default)]
    pub emit_defaults: bool,
    /// Use the proto field names (`page_size`) in answers instead of
    /// lowerCamelCase (`pageSize`); requests accept both.
    #[serde(default)]
    pub proto_field_names: bool,
    /// How a server-streaming method's messages are answered.
    #[serde(default)]
    pub stream: GrpcStream,
    /// Cap on one message, request or response, in protobuf bytes; a JSON
    /// request body over eight times the cap is refused unread (413).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_message_bytes() -> usize {
    4 << 20
}

/// One explicit binding of an HTTP route to a method.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrpcMethod {
    /// The method's simple name (`ReserveItem`).
    pub method: String,
    /// `GET`, `POST`, `PUT`, `PATCH` or `DELETE`.
    pub http_method: String,
    /// A `google.api.http` path template (`/v1/inventory/{sku}:reserve`),
    /// matched against the path as the route forwards it (after
    /// `strip_prefix` or `rewrite`).
    pub path: String,
    /// `None`: no body; `Some("*")`: the body is the whole request
    /// message; `Some("field")`: the body is that field.
    #[serde(default)]
    pub body: Option<String>,
    /// Answer with this field of the response instead of the whole message.
    #[serde(default)]
    pub response_body: Option<String>,
}

/// Server-streaming answers: one JSON array, or one JSON object per line.
#[derive(Debug, Clone, Copy, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum GrpcStream {
    /// `[{..},{..}]`, `application/json`.
    #[default]
    Array,
    /// `{..}\n{..}\n`, `application/x-ndjson`.
    Ndjson,
}
