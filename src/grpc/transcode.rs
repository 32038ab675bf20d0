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
//! A route's `grpc: Some(Transcode(..))` builds the transcoder at config
//! time (errors become `check` errors with the field's position), and per
//! request [`crate::grpc::stage`] does: `find`, `request_frame` as the body
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
    /// Cap on one message, request or response, in protobuf bytes. A JSON
    /// request body over eight times the cap is refused before parsing.
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
        let bytes =
            std::fs::read(path).map_err(|e| format!("descriptor set `{}`: {e}", path.display()))?;
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
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        let mut bindings = Vec::new();
        for m in mappings {
            let method = svc
                .methods()
                .find(|x| x.name() == m.method)
                .ok_or_else(|| {
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
        bindings.sort_by_key(|b| std::cmp::Reverse(b.template.specificity()));
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
        self.bindings
            .iter()
            .any(|b| b.template.matches(path).is_some())
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
            return Err(bad(format!(
                "request body over {} bytes",
                self.json.max_message.saturating_mul(8)
            )));
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
    pub fn message_json(
        &self,
        b: &Binding,
        msg: &DynamicMessage,
    ) -> Result<Vec<u8>, TranscodeError> {
        let err =
            |e: serde_json::Error| TranscodeError::BadUpstream(format!("response to JSON: {e}"));
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
                    .serialize_with_options(
                        serde_json::value::Serializer,
                        &opts.skip_default_fields(false),
                    )
                    .map_err(err)?;
                let key = if self.json.proto_names {
                    field.name()
                } else {
                    field.json_name()
                };
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

fn from_json_slice(
    input: MessageDescriptor,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
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
                return Err(format!(
                    "`{}` is not repeated but is given more than once",
                    field.name()
                ));
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
            _ => {
                return Err(format!(
                    "`{}` is set to a non-object in the body",
                    field.name()
                ))
            }
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
        return Err(format!(
            "map field `{}` cannot be set from a parameter",
            field.name()
        ));
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
        out.push(binding(
            method,
            &verb,
            &path,
            &text("body"),
            &text("response_body"),
        )?);
    }
    if top {
        if let Some(PValue::List(extra)) = rule.get_field_by_name("additional_bindings").as_deref()
        {
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
        name => BodyRule::Field(input.get_field_by_name(name).ok_or_else(|| {
            at(format!(
                "body field `{name}` is not a field of {}",
                input.full_name()
            ))
        })?),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SERVICE: &str = "inventory.v1.Inventory";

    fn pb() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/protos/inventory.pb")).unwrap()
    }

    fn tc() -> Transcoder {
        Transcoder::from_bytes(&pb(), SERVICE, &[], JsonOptions::default()).unwrap()
    }

    /// Transcodes a request and reads the message back as JSON (proto
    /// names, defaults left out) for comparison.
    fn req(t: &Transcoder, method: &str, uri: &str, body: &str) -> Result<Value, TranscodeError> {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        let m = t.find(method, path).expect("no binding");
        let msg = t.request_message(&m, query, body.as_bytes())?;
        // Through the wire form, as the upstream would see it.
        let frame = t.request_frame(&m, query, body.as_bytes())?;
        let messages = frame::decode_all(&frame, 1 << 20).unwrap();
        assert_eq!(messages.len(), 1);
        let back = DynamicMessage::decode(m.binding.method.input(), messages[0]).unwrap();
        assert_eq!(back.encode_to_vec(), msg.encode_to_vec());
        Ok(back
            .serialize_with_options(
                serde_json::value::Serializer,
                &SerializeOptions::new().use_proto_field_name(true),
            )
            .unwrap())
    }

    #[test]
    fn loads_bindings_from_annotations() {
        let t = tc();
        let mut seen: Vec<(String, String, String)> = t
            .bindings()
            .iter()
            .map(|b| {
                (
                    b.http_method.clone(),
                    b.template.source().to_string(),
                    b.grpc_path.clone(),
                )
            })
            .collect();
        seen.sort();
        assert_eq!(
            seen,
            vec![
                (
                    "GET".into(),
                    "/v1/inventory".into(),
                    "/inventory.v1.Inventory/ListItems".into()
                ),
                (
                    "GET".into(),
                    "/v1/inventory/{sku}".into(),
                    "/inventory.v1.Inventory/GetItem".into()
                ),
                (
                    "PATCH".into(),
                    "/v1/inventory/{item.sku}".into(),
                    "/inventory.v1.Inventory/UpdateItem".into()
                ),
                (
                    "POST".into(),
                    "/v1/inventory".into(),
                    "/inventory.v1.Inventory/CreateItem".into()
                ),
            ]
        );
        let list = t.find("GET", "/v1/inventory").unwrap();
        assert!(list.binding.server_streaming());
        assert!(t.find("DELETE", "/v1/inventory/A1").is_none());
        assert!(t.path_known("/v1/inventory/A1"));
        assert!(t.find("GET", "/v2/inventory/A1").is_none());
    }

    #[test]
    fn load_errors_are_plain_messages() {
        let missing = Transcoder::load(
            Path::new("/nonexistent/x.pb"),
            SERVICE,
            &[],
            JsonOptions::default(),
        )
        .unwrap_err();
        assert!(missing.contains("/nonexistent/x.pb"), "{missing}");
        let e =
            Transcoder::from_bytes(b"\xff\xff", SERVICE, &[], JsonOptions::default()).unwrap_err();
        assert!(e.contains("FileDescriptorSet"), "{e}");
        let e = Transcoder::from_bytes(&pb(), "inventory.v1.Nope", &[], JsonOptions::default())
            .unwrap_err();
        assert!(
            e.contains("no service `inventory.v1.Nope`") && e.contains(SERVICE),
            "{e}"
        );
        let bad_method = MethodMapping {
            method: "Reserve".into(),
            http_method: "POST".into(),
            path: "/v1/x".into(),
            ..Default::default()
        };
        let e = Transcoder::from_bytes(&pb(), SERVICE, &[bad_method], JsonOptions::default())
            .unwrap_err();
        assert!(
            e.contains("no method `Reserve`") && e.contains("ReserveItem"),
            "{e}"
        );
        for (path, body, resp, want) in [
            ("/v1/{nope}", None, None, "no field `nope`"),
            ("/v1/{sku}", Some("nope"), None, "body field `nope`"),
            (
                "/v1/{sku}",
                None,
                Some("nope"),
                "response_body field `nope`",
            ),
            (
                "/v1/{quantity.x}",
                None,
                None,
                "not a singular message field",
            ),
            ("/v1/{sku}/{sku}", None, None, "bound twice"),
            ("v1/x", None, None, "must start with `/`"),
        ] {
            let m = MethodMapping {
                method: "ReserveItem".into(),
                http_method: "POST".into(),
                path: path.into(),
                body: body.map(String::from),
                response_body: resp.map(String::from),
            };
            let e =
                Transcoder::from_bytes(&pb(), SERVICE, &[m], JsonOptions::default()).unwrap_err();
            assert!(e.contains(want), "{path}: {e}");
        }
    }

    #[test]
    fn path_parameter_fills_the_request() {
        let t = tc();
        assert_eq!(
            req(&t, "GET", "/v1/inventory/A%2D1?view=full", "").unwrap(),
            json!({"sku": "A-1", "view": "full"})
        );
        // A path value wins over the same field in the query.
        assert_eq!(
            req(&t, "GET", "/v1/inventory/A1?sku=B2", "").unwrap(),
            json!({"sku": "A1"})
        );
    }

    #[test]
    fn query_parameters_nested_repeated_enums_and_wkts() {
        let t = tc();
        let v = req(
            &t,
            "GET",
            "/v1/inventory?page_size=10&filter.kind=KIND_TOOL&filter.include_discontinued=true\
             &tags=a&tags=b+c&kinds=KIND_PART&kinds=3&updated_after=2024-05-01T10:00:00Z\
             &in_stock=false&filter.warehouse=north%20hall",
            "",
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "page_size": 10,
                "filter": {"kind": "KIND_TOOL", "warehouse": "north hall", "include_discontinued": true},
                "tags": ["a", "b c"],
                "kinds": ["KIND_PART", "KIND_CONSUMABLE"],
                "updated_after": "2024-05-01T10:00:00Z",
                "in_stock": false
            })
        );
        // JSON names are accepted as query keys too.
        assert_eq!(
            req(&t, "GET", "/v1/inventory?pageSize=3", "").unwrap(),
            json!({"page_size": 3})
        );
    }

    #[test]
    fn query_parameter_errors() {
        let t = tc();
        for (uri, want) in [
            ("/v1/inventory?nope=1", "no field `nope`"),
            ("/v1/inventory?page_size=ten", "invalid request"),
            ("/v1/inventory?page_size=1&page_size=2", "more than once"),
            ("/v1/inventory?filter.kind=KIND_NOPE", "invalid request"),
            ("/v1/inventory?filter=x", "is a message"),
            (
                "/v1/inventory?filter.include_discontinued=yes",
                "not true or false",
            ),
            ("/v1/inventory?page_size.x=1", "not a message field"),
            ("/v1/inventory?tags=%zz", "percent-escape"),
        ] {
            let e = req(&t, "GET", uri, "").unwrap_err();
            assert_eq!(e.http_status(), 400, "{uri}");
            assert!(e.message().contains(want), "{uri}: {e}");
        }
    }

    fn create_body() -> Value {
        json!({
            "item": {
                "sku": "T-100",
                "name": "Torque wrench",
                "kind": "KIND_TOOL",
                "tags": ["hand", "metric"],
                "dimensions": {"widthMm": 40.5, "height_mm": 300, "depthMm": 25},
                "locations": [{"warehouse": "north", "shelf": "B4", "bin": 7}, {"warehouse": "south"}],
                "quantity": "12",
                "updatedAt": "2024-05-01T10:00:00.500Z",
                "restockLeadTime": "86400.250s",
                "reorderLevel": 5,
                "note": "fragile",
                "discontinued": false,
                "attributes": {"brand": "Acme"}
            },
            "requestId": "r-1"
        })
    }

    #[test]
    fn body_star_fills_the_whole_message() {
        let t = tc();
        let v = req(&t, "POST", "/v1/inventory", &create_body().to_string()).unwrap();
        assert_eq!(
            v,
            json!({
                "item": {
                    "sku": "T-100",
                    "name": "Torque wrench",
                    "kind": "KIND_TOOL",
                    "tags": ["hand", "metric"],
                    "dimensions": {"width_mm": 40.5, "height_mm": 300.0, "depth_mm": 25.0},
                    "locations": [{"warehouse": "north", "shelf": "B4", "bin": 7}, {"warehouse": "south"}],
                    "quantity": "12",
                    "updated_at": "2024-05-01T10:00:00.500Z",
                    "restock_lead_time": "86400.250s",
                    "reorder_level": 5,
                    "note": "fragile",
                    "attributes": {"brand": "Acme"}
                },
                "request_id": "r-1"
            })
        );
        // The enum by number is the same message; an empty body is an empty message.
        let mut by_number = create_body();
        by_number["item"]["kind"] = json!(1);
        assert_eq!(
            req(&t, "POST", "/v1/inventory", &by_number.to_string()).unwrap(),
            v
        );
        assert_eq!(req(&t, "POST", "/v1/inventory", "").unwrap(), json!({}));
    }

    #[test]
    fn wrappers_distinguish_zero_from_absent() {
        let t = tc();
        let v = req(
            &t,
            "POST",
            "/v1/inventory",
            r#"{"item":{"reorderLevel":0,"note":""}}"#,
        )
        .unwrap();
        assert_eq!(v, json!({"item": {"reorder_level": 0, "note": ""}}));
        let v = req(
            &t,
            "POST",
            "/v1/inventory",
            r#"{"item":{"reorderLevel":null}}"#,
        )
        .unwrap();
        assert_eq!(v, json!({"item": {}}));
    }

    #[test]
    fn body_errors_are_bad_requests() {
        let t = tc();
        for (body, want) in [
            (r#"{"item":{"sku":"A"},"bogus":1}"#, "bogus"),
            (r#"{"item":{"colour":"red"}}"#, "colour"),
            (r#"{"item":{"kind":"KIND_NOPE"}}"#, "KIND_NOPE"),
            (r#"{"item":{"updatedAt":"yesterday"}}"#, "invalid request"),
            (
                r#"{"item":{"restockLeadTime":"5 minutes"}}"#,
                "invalid request",
            ),
            (r#"{"item":{"tags":"one"}}"#, "invalid request"),
            (r#"{"item":"#, "invalid request"),
            (r#"{"item":{}} trailing"#, "invalid request"),
        ] {
            let e = req(&t, "POST", "/v1/inventory", body).unwrap_err();
            assert_eq!(e.http_status(), 400, "{body}");
            assert!(e.message().contains(want), "{body}: {e}");
        }
        // The slow path (body and query) refuses unknown fields as well.
        let m = t.find("PATCH", "/v1/inventory/A1").unwrap();
        let e = t.request_message(&m, None, br#"{"bogus":1}"#).unwrap_err();
        assert!(e.message().contains("bogus"), "{e}");
        // body "*" leaves no field to the query; GET takes no body.
        let m = t.find("POST", "/v1/inventory").unwrap();
        assert!(t.request_message(&m, Some("request_id=x"), b"{}").is_err());
        let m = t.find("GET", "/v1/inventory/A1").unwrap();
        let e = t.request_message(&m, None, b"{}").unwrap_err();
        assert!(e.message().contains("no request body"), "{e}");
    }

    #[test]
    fn body_field_with_nested_path_parameter() {
        let t = tc();
        let v = req(
            &t,
            "PATCH",
            "/v1/inventory/T-100?allow_missing=true",
            r#"{"sku":"ignored","name":"Wrench","kind":"KIND_PART","item_sku":null}"#
                .replace(",\"item_sku\":null", "")
                .as_str(),
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"item": {"sku": "T-100", "name": "Wrench", "kind": "KIND_PART"}, "allow_missing": true})
        );
        // Without a body, the path still sets item.sku.
        assert_eq!(
            req(&t, "PATCH", "/v1/inventory/X", "").unwrap(),
            json!({"item": {"sku": "X"}})
        );
        // A query key inside the body field is refused.
        let m = t.find("PATCH", "/v1/inventory/A1").unwrap();
        let e = t
            .request_message(&m, Some("item.name=x"), b"{}")
            .unwrap_err();
        assert!(e.message().contains("comes from the body"), "{e}");
    }

    #[test]
    fn explicit_mappings_bind_unannotated_methods_first() {
        let mappings = [
            MethodMapping {
                method: "ReserveItem".into(),
                http_method: "post".into(),
                path: "/v1/inventory/{sku}:reserve".into(),
                body: Some("*".into()),
                response_body: Some("expires_at".into()),
            },
            MethodMapping {
                method: "GetItem".into(),
                http_method: "GET".into(),
                path: "/v1/items/{sku}".into(),
                ..Default::default()
            },
        ];
        let t = Transcoder::from_bytes(&pb(), SERVICE, &mappings, JsonOptions::default()).unwrap();
        assert_eq!(t.bindings().len(), 6);
        let v = req(
            &t,
            "POST",
            "/v1/inventory/A1:reserve",
            r#"{"quantity":"2","holdFor":"90s"}"#,
        )
        .unwrap();
        assert_eq!(v, json!({"sku": "A1", "quantity": "2", "hold_for": "90s"}));
        let m = t.find("GET", "/v1/items/Z9").unwrap();
        assert_eq!(m.binding.grpc_path, "/inventory.v1.Inventory/GetItem");
        // response_body picks the field.
        let m = t.find("POST", "/v1/inventory/A1:reserve").unwrap();
        let out = DynamicMessage::deserialize(
            m.binding.method.output(),
            json!({"reservationId": "r", "expiresAt": "2030-01-01T00:00:00Z"}),
        )
        .unwrap();
        let body = t.message_json(m.binding, &out).unwrap();
        assert_eq!(body, br#""2030-01-01T00:00:00Z""#);
    }

    fn item_message(t: &Transcoder) -> DynamicMessage {
        let desc = t.pool().get_message_by_name("inventory.v1.Item").unwrap();
        DynamicMessage::deserialize(desc, create_body()["item"].clone()).unwrap()
    }

    #[test]
    fn response_frame_to_json_and_defaults() {
        let t = tc();
        let b = t.find("GET", "/v1/inventory/T-100").unwrap().binding;
        let mut body = Vec::new();
        frame::encode(&item_message(&t).encode_to_vec(), &mut body).unwrap();
        let json: Value = serde_json::from_slice(&t.unary_response(b, &body).unwrap()).unwrap();
        assert_eq!(json, create_body()["item"].as_object().map(|o| {
            let mut o = o.clone();
            o.remove("discontinued");
            o["dimensions"] = json!({"widthMm": 40.5, "heightMm": 300.0, "depthMm": 25.0});
            o["locations"] = json!([{"warehouse": "north", "shelf": "B4", "bin": 7}, {"warehouse": "south"}]);
            Value::Object(o)
        }).unwrap());

        // Defaults on, proto names on.
        let opts = JsonOptions {
            emit_defaults: true,
            proto_names: true,
            ..JsonOptions::default()
        };
        let t2 = Transcoder::from_bytes(&pb(), SERVICE, &[], opts).unwrap();
        let b2 = t2.find("GET", "/v1/inventory/x").unwrap().binding;
        let mut empty = Vec::new();
        frame::encode(&[], &mut empty).unwrap();
        let json: Value = serde_json::from_slice(&t2.unary_response(b2, &empty).unwrap()).unwrap();
        assert_eq!(json["sku"], "");
        assert_eq!(json["kind"], "KIND_UNSPECIFIED");
        assert_eq!(json["quantity"], "0");
        assert_eq!(json["tags"], json!([]));
        assert_eq!(json["discontinued"], false);
        let plain: Value = serde_json::from_slice(&t.unary_response(b, &empty).unwrap()).unwrap();
        assert_eq!(plain, json!({}));
    }

    #[test]
    fn bad_upstream_answers() {
        let t = tc();
        let b = t.find("GET", "/v1/inventory/T").unwrap().binding;
        let mut two = Vec::new();
        frame::encode(&[], &mut two).unwrap();
        frame::encode(&[], &mut two).unwrap();
        for body in [
            vec![1u8, 0, 0, 0, 0],
            vec![0, 0, 0, 0, 2, 0x0a],
            two,
            vec![],
            vec![0, 0, 0, 0, 2, 0x0a, 0x09],
        ] {
            let e = t.unary_response(b, &body).unwrap_err();
            assert_eq!(e.http_status(), 502, "{body:?}");
        }
        let e = t.unary_response(b, &[1, 0, 0, 0, 0]).unwrap_err();
        assert!(e.message().contains("compress"), "{e}");
    }

    #[test]
    fn server_stream_as_array_and_ndjson() {
        let t = tc();
        let b = t.find("GET", "/v1/inventory").unwrap().binding;
        let mut body = Vec::new();
        let desc = b.method.output();
        for sku in ["A", "B", "C"] {
            let m =
                DynamicMessage::deserialize(desc.clone(), json!({"sku": sku, "kind": "KIND_PART"}))
                    .unwrap();
            frame::encode(&m.encode_to_vec(), &mut body).unwrap();
        }
        for mode in [StreamMode::JsonArray, StreamMode::Ndjson] {
            let mut dec = frame::FrameDecoder::new(1024);
            let mut w = frame::StreamWriter::new(mode);
            let mut out = Vec::new();
            for chunk in body.chunks(4) {
                dec.push(chunk);
                while let Some(msg) = dec.next_message().unwrap() {
                    w.item(&t.response_json(b, &msg).unwrap(), &mut out);
                }
            }
            dec.finish().unwrap();
            w.finish(&mut out);
            let items: Vec<Value> = match mode {
                StreamMode::JsonArray => serde_json::from_slice(&out).unwrap(),
                StreamMode::Ndjson => out
                    .split(|&c| c == b'\n')
                    .filter(|l| !l.is_empty())
                    .map(|l| serde_json::from_slice(l).unwrap())
                    .collect(),
            };
            assert_eq!(
                items,
                vec![
                    json!({"sku": "A", "kind": "KIND_PART"}),
                    json!({"sku": "B", "kind": "KIND_PART"}),
                    json!({"sku": "C", "kind": "KIND_PART"})
                ],
                "{mode:?}"
            );
        }
    }

    #[test]
    fn message_cap_applies_to_requests() {
        let opts = JsonOptions {
            max_message: 16,
            ..JsonOptions::default()
        };
        let t = Transcoder::from_bytes(&pb(), SERVICE, &[], opts).unwrap();
        let m = t.find("GET", "/v1/inventory/A").unwrap();
        assert!(t.request_frame(&m, None, b"").is_ok());
        let long = "x".repeat(40);
        let m = t.find("GET", &format!("/v1/inventory/{long}")).unwrap();
        let e = t.request_frame(&m, None, b"").unwrap_err();
        assert!(e.message().contains("cap"), "{e}");
    }
}
