//! HTTP/JSON → gRPC transcoding: a descriptor set (a serialized
//! `google.protobuf.FileDescriptorSet`, as `protoc --include_imports
//! --descriptor_set_out` writes it) and a service name become a
//! [`Transcoder`].
//!
//! - Bindings come from explicit [`MethodMapping`]s first, then from each
//!   method's `google.api.http` annotation (with its
//!   `additional_bindings`). Client- and bidirectional-streaming methods
//!   cannot be transcoded: an explicit mapping to one is an error, an
//!   annotation on one is skipped.
//! - [`Transcoder::find`] matches (HTTP method, path) against the bindings,
//!   most specific template first.
//! - [`Transcoder::request_message`] fills the input message from the JSON
//!   body (`body: "*"` for the whole message, `body: "field"` for one
//!   field), the query parameters (fields not bound by the path or the
//!   body; `a.b=x` for nested fields, repeated keys for repeated fields)
//!   and the path parameters (which win), by the canonical proto3 JSON
//!   mapping. Unknown fields are an error ([`TranscodeError::BadRequest`],
//!   400).
//! - [`Transcoder::response_json`] turns one response message into JSON
//!   (`response_body` picks one field); server-streaming answers go
//!   through [`crate::grpc::StreamWriter`].
//!
//! The wiring step (a route's `grpc: Some(Transcode(..))`) builds the
//! transcoder at config time (errors become `check` errors with the
//! field's position), and per request: `find`, `request_frame` as the body
//! of an HTTP/2 POST to `grpc_path` with `content-type: application/grpc`
//! and `te: trailers`, then `response_json` on the answer's one message or
//! `StreamWriter` over its messages, and [`crate::grpc::status`] for a
//! non-OK `grpc-status`.

use std::fmt;
use std::path::Path;

use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor,
    MethodDescriptor, SerializeOptions, ServiceDescriptor, Value as PValue,
};
use serde_json::{Map, Value};

use super::frame::{self, StreamMode};
use super::template::{percent_decode, PathTemplate};

/// An explicit binding of an HTTP route to a method, as a config gives it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MethodMapping {
    /// The method's simple name (`GetItem`).
    pub method: String,
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE` (or another token).
    pub http_method: String,
    /// A path template (`/v1/inventory/{sku}`).
    pub path: String,
    /// `None`: no body; `Some("*")`: the body is the whole request
    /// message; `Some("item")`: the body is that field.
    pub body: Option<String>,
    /// The response field to answer with instead of the whole message.
    pub response_body: Option<String>,
}

/// How response messages become JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonOptions {
    /// Write fields holding their default value (`0`, `""`, `[]`).
    pub emit_defaults: bool,
    /// Use the proto field names (`page_size`) instead of lowerCamelCase.
    pub proto_names: bool,
    /// Server-streaming answers: a JSON array or NDJSON.
    pub stream: StreamMode,
    /// Cap on one message, request or response, in bytes.
    pub max_message: usize,
}

impl Default for JsonOptions {
    fn default() -> Self {
        JsonOptions {
            emit_defaults: false,
            proto_names: false,
            stream: StreamMode::JsonArray,
            max_message: 4 << 20,
        }
    }
}

/// Where the request body goes.
#[derive(Debug, Clone)]
pub enum BodyRule {
    None,
    /// `body: "*"`.
    Whole,
    /// `body: "field"`.
    Field(FieldDescriptor),
}

/// One HTTP route bound to one method.
#[derive(Debug, Clone)]
pub struct Binding {
    pub http_method: String,
    pub template: PathTemplate,
    pub method: MethodDescriptor,
    pub body: BodyRule,
    pub response_body: Option<FieldDescriptor>,
    /// The HTTP/2 `:path` of the call, `/inventory.v1.Inventory/GetItem`.
    pub grpc_path: String,
}

impl Binding {
    /// Whether the method answers with a stream of messages.
    pub fn server_streaming(&self) -> bool {
        self.method.is_server_streaming()
    }
}

/// A matched request: the binding and the path's bound fields.
#[derive(Debug)]
pub struct Match<'a> {
    pub binding: &'a Binding,
    pub params: Vec<(String, String)>,
}

/// A transcoding failure on one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TranscodeError {
    /// The client's request does not fit the method (400).
    BadRequest(String),
    /// The upstream's answer is not a valid message (502).
    BadUpstream(String),
}

impl TranscodeError {
    pub fn http_status(&self) -> u16 {
        match self {
            TranscodeError::BadRequest(_) => 400,
            TranscodeError::BadUpstream(_) => 502,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            TranscodeError::BadRequest(m) | TranscodeError::BadUpstream(m) => m,
        }
    }
}

impl fmt::Display for TranscodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// The compiled transcoding of one service.
#[derive(Debug, Clone)]
pub struct Transcoder {
    pool: DescriptorPool,
    service: ServiceDescriptor,
    bindings: Vec<Binding>,
    json: JsonOptions,
}

impl Transcoder {
    /// Loads a descriptor set file and compiles the bindings of `service`.
    pub fn load(
        path: &Path,
        service: &str,
        mappings: &[MethodMapping],
        json: JsonOptions,
    ) -> Result<Transcoder, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("descriptor set `{}`: {e}", path.display()))?;
        Transcoder::from_bytes(&bytes, service, mappings, json)
            .map_err(|e| format!("descriptor set `{}`: {e}", path.display()))
    }

    /// As [`Transcoder::load`], from the file's bytes.
    pub fn from_bytes(
        bytes: &[u8],
        service: &str,
        mappings: &[MethodMapping],
        json: JsonOptions,
    ) -> Result<Transcoder, String> {
        let pool = DescriptorPool::decode(bytes)
            .map_err(|e| format!("not a valid FileDescriptorSet: {e}"))?;
        let svc = pool.get_service_by_name(service).ok_or_else(|| {
            let known: Vec<String> = pool.services().map(|s| s.full_name().to_string()).collect();
            format!(
                "no service `{service}` (the set has: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )
        })?;
        let mut bindings = Vec::new();
        for m in mappings {
            let method = svc.methods().find(|x| x.name() == m.method).ok_or_else(|| {
                let names: Vec<String> = svc.methods().map(|x| x.name().to_string()).collect();
                format!(
                    "service `{service}` has no method `{}` (it has: {})",
                    m.method,
                    names.join(", ")
                )
            })?;
            if method.is_client_streaming() {
                return Err(format!(
                    "method `{}` is client-streaming; only unary and server-streaming methods can be transcoded",
                    method.full_name()
                ));
            }
            bindings.push(binding(
                &method,
                &m.http_method,
                &m.path,
                m.body.as_deref().unwrap_or(""),
                m.response_body.as_deref().unwrap_or(""),
            )?);
        }
        if let Some(http) = pool.get_extension_by_name("google.api.http") {
            for method in svc.methods() {
                if method.is_client_streaming() {
                    continue;
                }
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                if let PValue::Message(rule) = options.get_extension(&http).as_ref() {
                    rule_bindings(&method, rule, true, &mut bindings)?;
                }
            }
        }
        if bindings.is_empty() {
            return Err(format!(
                "service `{service}` has no method with a google.api.http annotation and no mapping is given"
            ));
        }
        // Most specific first; equal ones keep their order (mappings first).
        bindings.sort_by(|a, b| b.template.specificity().cmp(&a.template.specificity()));
        Ok(Transcoder {
            pool,
            service: svc,
            bindings,
            json,
        })
    }

    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    pub fn service(&self) -> &ServiceDescriptor {
        &self.service
    }

    pub fn bindings(&self) -> &[Binding] {
        &self.bindings
    }

    pub fn json_options(&self) -> JsonOptions {
        self.json
    }

    /// The binding for a request, by method and path (without the query).
    pub fn find(&self, http_method: &str, path: &str) -> Option<Match<'_>> {
        self.bindings.iter().find_map(|b| {
            if !b.http_method.eq_ignore_ascii_case(http_method) {
                return None;
            }
            b.template
                .matches(path)
                .map(|params| Match { binding: b, params })
        })
    }

    /// Whether some binding has this path under another method (for a 405
    /// rather than a 404).
    pub fn path_known(&self, path: &str) -> bool {
        self.bindings.iter().any(|b| b.template.matches(path).is_some())
    }

    /// Builds the request message of a matched call.
    pub fn request_message(
        &self,
        m: &Match<'_>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<DynamicMessage, TranscodeError> {
        let input = m.binding.method.input();
        let bad = TranscodeError::BadRequest;
        if body.len() > self.json.max_message.saturating_mul(8) {
            return Err(bad(format!("request body over {} bytes", self.json.max_message.saturating_mul(8))));
        }
        let body_empty = body.iter().all(u8::is_ascii_whitespace);
        let query = query.filter(|q| !q.is_empty());
        // Fast path: the whole body is the message and nothing else binds.
        if matches!(m.binding.body, BodyRule::Whole) && m.params.is_empty() && query.is_none() {
            if body_empty {
                return Ok(DynamicMessage::new(input));
            }
            return from_json_slice(input, body);
        }
        let mut root = Map::new();
        match &m.binding.body {
            BodyRule::None => {
                if !body_empty {
                    return Err(bad("this method takes no request body".into()));
                }
            }
            BodyRule::Whole => {
                if !body_empty {
                    match serde_json::from_slice::<Value>(body) {
                        Ok(Value::Object(obj)) => root = obj,
                        Ok(_) => return Err(bad("the request body must be a JSON object".into())),
                        Err(e) => return Err(bad(format!("request body is not JSON: {e}"))),
                    }
                }
            }
            BodyRule::Field(f) => {
                if !body_empty {
                    let v: Value = serde_json::from_slice(body)
                        .map_err(|e| bad(format!("request body is not JSON: {e}")))?;
                    root.insert(f.json_name().to_string(), v);
                }
            }
        }
        if let Some(q) = query {
            let mut seen: Vec<String> = Vec::new();
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                let k = percent_decode(k, true).map_err(bad)?;
                let v = percent_decode(v, true).map_err(bad)?;
                if matches!(m.binding.body, BodyRule::Whole) {
                    return Err(bad(format!(
                        "query parameter `{k}`: the body carries the whole request message"
                    )));
                }
                // Fields bound by the path or the body are not query fields.
                if m.params.iter().any(|(p, _)| covers(p, &k) || covers(&k, p)) {
                    continue;
                }
                if let BodyRule::Field(f) = &m.binding.body {
                    let head = k.split('.').next().unwrap_or_default();
                    if head == f.name() || head == f.json_name() {
                        return Err(bad(format!(
                            "query parameter `{k}`: field `{}` comes from the body",
                            f.name()
                        )));
                    }
                }
                let repeat = seen.contains(&k);
                if !repeat {
                    seen.push(k.clone());
                }
                set_path(&mut root, &input, &k, &v, repeat)
                    .map_err(|e| bad(format!("query parameter `{k}`: {e}")))?;
            }
        }
        for (field, value) in &m.params {
            set_path(&mut root, &input, field, value, false)
                .map_err(|e| bad(format!("path parameter `{field}`: {e}")))?;
        }
        DynamicMessage::deserialize_with_options(
            input,
            Value::Object(root),
            &DeserializeOptions::new().deny_unknown_fields(true),
        )
        .map_err(|e| bad(format!("invalid request: {e}")))
    }

    /// The request message of a matched call as one gRPC frame.
    pub fn request_frame(
        &self,
        m: &Match<'_>,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<u8>, TranscodeError> {
        let msg = self.request_message(m, query, body)?;
        let bytes = msg.encode_to_vec();
        if bytes.len() > self.json.max_message {
            return Err(TranscodeError::BadRequest(format!(
                "request message of {} bytes is over the {}-byte cap",
                bytes.len(),
                self.json.max_message
            )));
        }
        let mut out = Vec::with_capacity(frame::HEADER_LEN + bytes.len());
        frame::encode(&bytes, &mut out).map_err(|e| TranscodeError::BadRequest(e.to_string()))?;
        Ok(out)
    }

    /// One response message (the bytes inside a frame) as JSON.
    pub fn response_json(&self, b: &Binding, message: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        let msg = DynamicMessage::decode(b.method.output(), message)
            .map_err(|e| TranscodeError::BadUpstream(format!("bad response message: {e}")))?;
        self.message_json(b, &msg)
    }

    /// A response message as JSON (`response_body` applied).
    pub fn message_json(&self, b: &Binding, msg: &DynamicMessage) -> Result<Vec<u8>, TranscodeError> {
        let err = |e: serde_json::Error| TranscodeError::BadUpstream(format!("response to JSON: {e}"));
        let opts = SerializeOptions::new()
            .skip_default_fields(!self.json.emit_defaults)
            .use_proto_field_name(self.json.proto_names);
        match &b.response_body {
            None => {
                let mut ser = serde_json::Serializer::new(Vec::with_capacity(256));
                msg.serialize_with_options(&mut ser, &opts).map_err(err)?;
                Ok(ser.into_inner())
            }
            Some(field) => {
                let whole = msg
                    .serialize_with_options(serde_json::value::Serializer, &opts.skip_default_fields(false))
                    .map_err(err)?;
                let key = if self.json.proto_names { field.name() } else { field.json_name() };
                let part = match whole {
                    Value::Object(mut obj) => obj.remove(key).unwrap_or(Value::Null),
                    _ => Value::Null,
                };
                serde_json::to_vec(&part).map_err(err)
            }
        }
    }

    /// A whole unary response body (one frame) as JSON.
    pub fn unary_response(&self, b: &Binding, body: &[u8]) -> Result<Vec<u8>, TranscodeError> {
        let up = |e: frame::FrameError| TranscodeError::BadUpstream(e.to_string());
        let messages = frame::decode_all(body, self.json.max_message).map_err(up)?;
        match messages.as_slice() {
            [one] => self.response_json(b, one),
            other => Err(TranscodeError::BadUpstream(format!(
                "a unary answer must hold one message, it holds {}",
                other.len()
            ))),
        }
    }
}

/// Whether field path `outer` is `inner` or one of its parents.
fn covers(outer: &str, inner: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('.'))
}

fn from_json_slice(input: MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, TranscodeError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let msg = DynamicMessage::deserialize_with_options(
        input,
        &mut de,
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| TranscodeError::BadRequest(format!("invalid request: {e}")))?;
    de.end()
        .map_err(|e| TranscodeError::BadRequest(format!("invalid request: {e}")))?;
    Ok(msg)
}

/// Finds a field by proto name or JSON name.
fn field_of(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_name(name)
        .or_else(|| desc.get_field_by_json_name(name))
}

/// Sets the field at dotted path `path` in the JSON tree `root` (a message
/// of type `desc`) from the text `raw`; `append` adds to a repeated field.
fn set_path(
    root: &mut Map<String, Value>,
    desc: &MessageDescriptor,
    path: &str,
    raw: &str,
    append: bool,
) -> Result<(), String> {
    let mut obj = root;
    let mut desc = desc.clone();
    let mut segs = path.split('.').peekable();
    while let Some(seg) = segs.next() {
        let field = field_of(&desc, seg)
            .ok_or_else(|| format!("no field `{seg}` in {}", desc.full_name()))?;
        // One key per field: drop the proto-name spelling if the body used it.
        if field.name() != field.json_name() {
            if let Some(v) = obj.remove(field.name()) {
                obj.insert(field.json_name().to_string(), v);
            }
        }
        let key = field.json_name().to_string();
        if segs.peek().is_none() {
            let value = scalar_json(&field, raw)?;
            if field.is_list() {
                match obj.entry(key).or_insert_with(|| Value::Array(Vec::new())) {
                    Value::Array(items) => items.push(value),
                    _ => return Err("the body already sets this field".into()),
                }
            } else if append {
                return Err(format!("`{}` is not repeated but is given more than once", field.name()));
            } else {
                obj.insert(key, value);
            }
            return Ok(());
        }
        let next = match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => m,
            _ => return Err(format!("`{}` is not a message field", field.name())),
        };
        let slot = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        obj = match slot {
            Value::Object(o) => o,
            _ => return Err(format!("`{}` is set to a non-object in the body", field.name())),
        };
        desc = next;
    }
    Err("empty field path".into())
}

/// The JSON value of a path or query parameter for a field, so that the
/// canonical mapping accepts it: booleans as JSON booleans, enum numbers as
/// numbers, everything else (numbers included, which the mapping accepts
/// quoted) as a string.
fn scalar_json(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    if field.is_map() {
        return Err(format!("map field `{}` cannot be set from a parameter", field.name()));
    }
    let as_bool = || match raw {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        _ => Err(format!("`{raw}` is not true or false")),
    };
    match field.kind() {
        Kind::Bool => as_bool(),
        Kind::Enum(_) => Ok(raw
            .parse::<i32>()
            .map_or_else(|_| Value::String(raw.to_string()), Value::from)),
        Kind::Message(m) => match m.full_name() {
            "google.protobuf.BoolValue" => as_bool(),
            "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue" => Ok(Value::String(raw.to_string())),
            other => Err(format!(
                "`{}` is a message ({other}); set its fields (`{}.x=..`) instead",
                field.name(),
                field.name()
            )),
        },
        _ => Ok(Value::String(raw.to_string())),
    }
}

/// The bindings of one `HttpRule` (and its additional bindings).
fn rule_bindings(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    top: bool,
    out: &mut Vec<Binding>,
) -> Result<(), String> {
    let text = |name: &str| -> String {
        match rule.get_field_by_name(name).as_deref() {
            Some(PValue::String(s)) => s.clone(),
            _ => String::new(),
        }
    };
    let mut pattern = None;
    for verb in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(verb) {
            pattern = Some((verb.to_ascii_uppercase(), text(verb)));
        }
    }
    if rule.has_field_by_name("custom") {
        if let Some(PValue::Message(c)) = rule.get_field_by_name("custom").as_deref() {
            let get = |n: &str| match c.get_field_by_name(n).as_deref() {
                Some(PValue::String(s)) => s.clone(),
                _ => String::new(),
            };
            pattern = Some((get("kind"), get("path")));
        }
    }
    if let Some((verb, path)) = pattern {
        out.push(binding(method, &verb, &path, &text("body"), &text("response_body"))?);
    }
    if top {
        if let Some(PValue::List(extra)) = rule.get_field_by_name("additional_bindings").as_deref() {
            for r in extra {
                if let PValue::Message(r) = r {
                    rule_bindings(method, r, false, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Compiles one binding, checking every field it names.
fn binding(
    method: &MethodDescriptor,
    http_method: &str,
    path: &str,
    body: &str,
    response_body: &str,
) -> Result<Binding, String> {
    let at = |e: String| format!("method `{}`: {e}", method.full_name());
    if http_method.is_empty() || !http_method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(at(format!("bad HTTP method `{http_method}`")));
    }
    let template = PathTemplate::parse(path).map_err(at)?;
    let input = method.input();
    for var in template.variables() {
        let field = resolve(&input, var).map_err(|e| at(format!("path variable `{var}`: {e}")))?;
        if field.is_list() || field.is_map() {
            return Err(at(format!("path variable `{var}` names a repeated field")));
        }
        if let Kind::Message(m) = field.kind() {
            if !m.full_name().starts_with("google.protobuf.") {
                return Err(at(format!("path variable `{var}` names a message field")));
            }
        }
    }
    let body = match body {
        "" => BodyRule::None,
        "*" => BodyRule::Whole,
        name => BodyRule::Field(
            input
                .get_field_by_name(name)
                .ok_or_else(|| at(format!("body field `{name}` is not a field of {}", input.full_name())))?,
        ),
    };
    let response_body = match response_body {
        "" => None,
        name => Some(method.output().get_field_by_name(name).ok_or_else(|| {
            at(format!(
                "response_body field `{name}` is not a field of {}",
                method.output().full_name()
            ))
        })?),
    };
    Ok(Binding {
        http_method: http_method.to_ascii_uppercase(),
        template,
        method: method.clone(),
        body,
        response_body,
        grpc_path: format!("/{}/{}", method.parent_service().full_name(), method.name()),
    })
}

/// The field at a dotted path (proto names), through singular messages.
fn resolve(desc: &MessageDescriptor, path: &str) -> Result<FieldDescriptor, String> {
    let mut desc = desc.clone();
    let mut segs = path.split('.').peekable();
    while let Some(seg) = segs.next() {
        let field = desc
            .get_field_by_name(seg)
            .ok_or_else(|| format!("no field `{seg}` in {}", desc.full_name()))?;
        if segs.peek().is_none() {
            return Ok(field);
        }
        desc = match field.kind() {
            Kind::Message(m) if !field.is_list() && !field.is_map() => m,
            _ => return Err(format!("`{seg}` is not a singular message field")),
        };
    }
    Err("empty field path".into())
}
