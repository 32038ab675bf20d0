//! JSON Schema validation of requests, before they go upstream.
//!
//! A route's `validate` names a schema for the body and/or one for the
//! query parameters. Schemas are files (relative to the config file),
//! compiled once when the config is loaded with the `jsonschema` crate (so
//! a missing or broken schema is a `check` error naming the file). For a
//! request on such a route:
//! - with a body schema, a request with a body must be JSON
//!   (`application/json` or a `+json` type), else 415; the body is read
//!   whole (bounded by the listener's `max_body_bytes`), validated, and
//!   then forwarded from memory; a `POST`, `PUT` or `PATCH` without a body
//!   is a violation;
//! - with a query schema, the query parameters are validated as a JSON
//!   object of strings (percent-decoded; a repeated name keeps its first value);
//! - a request that does not match gets 400 JSON listing every violation
//!   (where, instance path, keyword, message), at most [`MAX_VIOLATIONS`].
//!
//! Schemas must be self-contained: `$ref` within the document works,
//! references to other files or URLs are not fetched. `pattern` and
//! `patternProperties` use the linear-time `regex` engine (look-around and
//! backreferences are refused when the schema is loaded), so no request
//! can make a pattern backtrack.

use crate::error::{json_string, GatewayError};
use crate::http::body::read_request_body;
use crate::http::{Conn, Framing, RequestHead};
use crate::proxy::Exchange;
use serde_json::Value;
use std::path::Path;
use std::rc::Rc;

/// Most violations listed in one 400 answer.
pub const MAX_VIOLATIONS: usize = 20;
/// Longest violation message, in bytes (messages quote the offending value).
const MAX_MESSAGE: usize = 200;

/// A compiled schema and the file it came from.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The file, as resolved.
    pub path: String,
    validator: jsonschema::Validator,
}

/// A route's compiled validation.
#[derive(Debug, Clone)]
pub struct ValidatePlan {
    /// The body's schema.
    pub body: Option<Schema>,
    /// The query parameters' schema.
    pub query: Option<Schema>,
}

/// Makes relative schema paths relative to the config file's directory
/// (called once the file is parsed).
pub fn resolve_schema_paths(g: &mut crate::config::Gateway, config_file: &Path) {
    let dir = config_file.parent().unwrap_or(Path::new(""));
    for r in &mut g.routes {
        if let Some(v) = &mut r.validate {
            for p in [&mut v.schema, &mut v.query_schema].into_iter().flatten() {
                if Path::new(p.as_str()).is_relative() && !dir.as_os_str().is_empty() {
                    *p = dir.join(p.as_str()).display().to_string();
                }
            }
        }
    }
}

/// Reads and compiles the schema in `path`.
pub fn load_schema(path: &str) -> Result<Schema, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read schema {path:?}: {e}"))?;
    let value: Value =
        serde_json::from_slice(&text).map_err(|e| format!("schema {path:?} is not JSON: {e}"))?;
    // Patterns run on the linear-time `regex` engine: client input is never
    // matched by a backtracking engine (no look-around, no backreferences;
    // a schema using them is refused here).
    let validator = jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&value)
        .map_err(|e| format!("schema {path:?} is not a valid JSON Schema: {e}"))?;
    Ok(Schema {
        path: path.to_string(),
        validator,
    })
}

/// Problems in a `Validate` setting (field, message).
pub fn check(v: &crate::config::Validate) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if v.schema.is_none() && v.query_schema.is_none() {
        out.push((
            "schema",
            "give `schema` (the body's) or `query_schema`, or both".into(),
        ));
    }
    for (field, p) in [("schema", &v.schema), ("query_schema", &v.query_schema)] {
        if let Some(p) = p {
            if let Err(e) = load_schema(p) {
                out.push((field, e));
            }
        }
    }
    out
}

impl ValidatePlan {
    /// Loads and compiles the schemas.
    pub fn compile(v: &crate::config::Validate) -> Result<ValidatePlan, String> {
        let load = |p: &Option<String>| p.as_deref().map(load_schema).transpose();
        Ok(ValidatePlan {
            body: load(&v.schema).map_err(|e| format!("validate.schema: {e}"))?,
            query: load(&v.query_schema).map_err(|e| format!("validate.query_schema: {e}"))?,
        })
    }
}

/// Violations found so far, rendered as a JSON array's elements.
#[derive(Debug, Default)]
pub struct Violations {
    /// `{...},{...}` (without the brackets).
    pub json: String,
    /// How many are listed.
    pub listed: usize,
    /// More were found than listed.
    pub truncated: bool,
}

impl Violations {
    /// Adds one violation unless the list is full.
    pub fn push(&mut self, place: &str, instance_path: &str, keyword: &str, message: &str) {
        if self.listed >= MAX_VIOLATIONS {
            self.truncated = true;
            return;
        }
        if self.listed > 0 {
            self.json.push(',');
        }
        self.json.push_str("{\"in\":");
        json_string(&mut self.json, place);
        self.json.push_str(",\"instance_path\":");
        json_string(&mut self.json, instance_path);
        self.json.push_str(",\"keyword\":");
        json_string(&mut self.json, keyword);
        self.json.push_str(",\"message\":");
        let mut end = message.len().min(MAX_MESSAGE);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        json_string(&mut self.json, message.get(..end).unwrap_or_default());
        self.json.push('}');
        self.listed += 1;
    }

    /// Checks `instance` against `schema`, listing what does not match.
    pub fn check(&mut self, place: &str, schema: &Schema, instance: &Value) {
        if schema.validator.is_valid(instance) {
            return;
        }
        for e in schema.validator.iter_errors(instance) {
            if self.listed >= MAX_VIOLATIONS {
                self.truncated = true;
                break;
            }
            let path = e.instance_path().to_string();
            let keyword = e.kind().keyword().to_string();
            self.push(place, &path, &keyword, &e.to_string());
        }
    }

    /// Parses `data` as JSON and checks it against `schema` (the body check).
    pub fn check_body(&mut self, schema: &Schema, data: &[u8]) {
        match serde_json::from_slice::<Value>(data) {
            Ok(v) => self.check("body", schema, &v),
            Err(e) => self.push("body", "", "json", &format!("not valid JSON: {e}")),
        }
    }

    fn into_error(self) -> Result<(), GatewayError> {
        if self.listed == 0 {
            return Ok(());
        }
        Err(GatewayError::Invalid {
            violations: self.json,
            truncated: self.truncated,
        })
    }
}

/// True for `application/json` and `application/<x>+json` (parameters ignored).
pub fn is_json_type(content_type: Option<&[u8]>) -> bool {
    let Some(v) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let media = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media == "application/json" || (media.starts_with("application/") && media.ends_with("+json"))
}

/// The query string as a JSON object of strings (first value of a repeated name).
pub fn query_object(query: Option<&str>) -> Value {
    let mut map = serde_json::Map::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k);
        if !map.contains_key(&k) {
            map.insert(k, Value::String(percent_decode(v)));
        }
    }
    Value::Object(map)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            _ => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The validation stage: checks the query and the body (read whole into
/// `ex.body`, from where it is forwarded).
pub async fn validate(
    plan: &ValidatePlan,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<(), GatewayError> {
    let mut found = Violations::default();
    if let Some(schema) = &plan.query {
        found.check("query", schema, &query_object(req.query()));
    }
    let Some(schema) = &plan.body else {
        return found.into_error();
    };
    let has_body = match req.framing {
        Framing::None | Framing::Length(0) => false,
        Framing::Length(_) | Framing::Chunked | Framing::UntilClose => true,
    };
    if !has_body {
        if matches!(req.method(), "POST" | "PUT" | "PATCH") {
            found.push("body", "", "required", "a JSON request body is required");
        }
        return found.into_error();
    }
    if !is_json_type(req.header("content-type")) {
        return Err(GatewayError::UnsupportedMediaType(
            "the request body must be application/json",
        ));
    }
    let (forward, data) = read_whole(req, client, ex).await?;
    ex.body = Some(forward);
    found.check_body(schema, &data);
    found.into_error()
}

/// Reads the request body whole: the bytes to forward (the body itself,
/// or a chunked body re-encoded as one chunk) and the body's data.
async fn read_whole(
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<(Rc<[u8]>, Rc<[u8]>), GatewayError> {
    let max = ex.limits.max_body_bytes;
    match req.framing {
        Framing::Length(n) => {
            if n > max {
                return Err(GatewayError::PayloadTooLarge);
            }
            let body = crate::resilience::fallback::read_body(client, req, n, ex).await?;
            Ok((body.clone(), body))
        }
        Framing::Chunked => {
            let data =
                read_request_body(client, req.framing, req.expect_continue, max, ex.limits).await?;
            ex.body_consumed = true;
            ex.seen.bytes_in = data.len() as u64;
            let mut forward = Vec::with_capacity(data.len() + 24);
            if !data.is_empty() {
                forward.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                forward.extend_from_slice(&data);
                forward.extend_from_slice(b"\r\n");
            }
            forward.extend_from_slice(b"0\r\n\r\n");
            Ok((forward.into(), data.into()))
        }
        // Requests are never close-delimited; nothing to read.
        Framing::None | Framing::UntilClose => Ok((Rc::from(&[][..]), Rc::from(&[][..]))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_types() {
        assert!(is_json_type(Some(b"application/json")));
        assert!(is_json_type(Some(b"Application/JSON; charset=utf-8")));
        assert!(is_json_type(Some(b"application/merge-patch+json")));
        assert!(!is_json_type(Some(b"text/plain")));
        assert!(!is_json_type(Some(b"application/jsonx")));
        assert!(!is_json_type(None));
    }

    #[test]
    fn query_as_an_object_of_strings() {
        let v = query_object(Some("a=1&b=x%20y+z&a=2&flag&c=%zz"));
        assert_eq!(
            v,
            serde_json::json!({"a": "1", "b": "x y z", "flag": "", "c": "%zz"})
        );
        assert_eq!(query_object(None), serde_json::json!({}));
    }

    #[test]
    fn violations_are_listed_and_capped() {
        let schema_text = serde_json::json!({
            "type": "object",
            "properties": {"qty": {"type": "integer", "minimum": 1}, "sku": {"type": "string"}},
            "required": ["sku"],
            "additionalProperties": {"type": "integer"}
        });
        let Ok(validator) = jsonschema::validator_for(&schema_text) else {
            panic!("schema compiles")
        };
        let schema = Schema {
            path: "t.json".into(),
            validator,
        };
        let mut v = Violations::default();
        v.check("body", &schema, &serde_json::json!({"qty": 0}));
        assert_eq!(v.listed, 2, "{}", v.json);
        assert!(v.json.contains("\"instance_path\":\"/qty\""), "{}", v.json);
        assert!(v.json.contains("\"keyword\":\"minimum\""), "{}", v.json);
        assert!(v.json.contains("\"keyword\":\"required\""), "{}", v.json);
        let mut many = serde_json::Map::new();
        for i in 0..30 {
            many.insert(format!("x{i}"), Value::String("no".into()));
        }
        many.insert("sku".into(), Value::String("a".into()));
        let mut v = Violations::default();
        v.check("body", &schema, &Value::Object(many));
        assert_eq!(v.listed, MAX_VIOLATIONS);
        assert!(v.truncated);
        let parsed: Value = match serde_json::from_str(&format!("[{}]", v.json)) {
            Ok(p) => p,
            Err(e) => panic!("{e}: {}", v.json),
        };
        assert_eq!(parsed.as_array().map(Vec::len), Some(MAX_VIOLATIONS));
    }
}
