//! Request and response transformation on a route (`transform`), and the
//! route's body policies as one plan with compression ([`crate::compress`]).
//!
//! Request side (after the cache lookup, before forwarding): request
//! decompression, then header operations (remove → rename → set → add,
//! values templated from route params, claims and the request id), query
//! operations (remove → set → add) and JSON body operations (remove →
//! rename → move → add on dotted paths). The head is rebuilt and parsed
//! again, so forwarding reads it as if the client had sent it; a rewritten
//! body goes back in front of the client connection's unread bytes with its
//! new `Content-Length`.
//!
//! Response side (in the proxy, once the upstream's head is read):
//! header operations, then the JSON body operations on a body buffered up
//! to `max_body_bytes`, then compression. Templates of the response side are
//! expanded when the request is handled (params, claims and the request id
//! are request facts), so the response side needs nothing of the request.
//!
//! Limits and refusals:
//! - a request body on a body-transforming route is buffered up to
//!   `max_body_bytes`: a larger one is refused with 413 (a declared length
//!   before anything is read); one whose `Content-Type` is not JSON
//!   (`application/json`, `*/*+json`) with 415; invalid JSON with 400;
//! - a JSON response larger than `max_body_bytes`, encoded by the upstream,
//!   or not valid JSON is answered with 502 and not passed on untransformed
//!   (a transformation that removes fields must not leak them); responses
//!   of other types pass through with only their header operations.

pub mod head;
pub mod json;

use crate::aggregate::template::{self, Context, Escape, Piece, Source, Template};
use crate::compress::{self, CompressPlan};
use crate::error::GatewayError;
use crate::http::body::{
    copy_body, copy_body_tapped, read_request_body as read_body, BodyTap, CopyError, CopyLimits,
    OutFraming,
};
use crate::http::{Conn, Framing, RequestHead, ResponseHead};
use crate::proxy::{Disposition, Exchange};
use head::{HeaderEdit, NewFraming, RequestChanges};
use json::JsonPlan;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::Range;

/// A route's `transform` policy, as written in the config.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    /// Operations on the request before it goes upstream.
    #[serde(default)]
    pub request: Option<TransformOps>,
    /// Operations on the response before it goes to the client.
    #[serde(default)]
    pub response: Option<TransformOps>,
    /// Largest body buffered for a JSON body operation (413 for a larger
    /// request, 502 for a larger response).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

/// The operations of one direction.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TransformOps {
    /// Header field operations.
    #[serde(default)]
    pub headers: Option<HeaderOps>,
    /// JSON body field operations.
    #[serde(default)]
    pub body: Option<JsonOps>,
    /// Query parameter operations (request only).
    #[serde(default)]
    pub query: Option<QueryOps>,
}

/// Header field operations, applied remove → rename → set → add.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    /// Fields added as one more line (templates).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Fields replaced, or added when absent (templates).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Fields removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Fields renamed: old name → new name, the value kept.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
}

/// JSON body operations on dotted paths, applied remove → rename → move → add.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JsonOps {
    /// Path → value put there (objects on the way are created); a string
    /// value is a template.
    #[serde(default)]
    pub add: BTreeMap<String, Value>,
    /// Paths removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Path → new key for the value, in the same object.
    #[serde(default)]
    pub rename: BTreeMap<String, String>,
    /// Path → path the value moves to.
    #[serde(default, rename = "move")]
    pub moves: BTreeMap<String, String>,
}

/// Query parameter operations, applied remove → set → add.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct QueryOps {
    /// Parameters appended (templates).
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Parameters replaced, or appended when absent (templates).
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Parameters removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A templated text: aggregation templates (`{param}`, `{claims.x}`,
/// `{query.x}`) plus `{request_id}`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Text {
    segs: Vec<Seg>,
}

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Tpl(Template),
    RequestId,
}

/// The request facts templates are expanded with.
pub struct Vars<'a> {
    /// The request path the params point into.
    pub path: &'a str,
    /// The route's params.
    pub params: &'a [Range<usize>],
    /// The client's query.
    pub query: Option<&'a str>,
    /// The caller's claims.
    pub claims: &'a [(String, String)],
    /// The request id.
    pub request_id: &'a str,
}

impl Text {
    /// Parses `s` for a route whose path has `params`.
    pub fn parse(s: &str, params: &[String]) -> Result<Text, String> {
        let mut names = params.to_vec();
        names.push("request_id".into());
        let t = Template::parse(s, &names, &[]).map_err(|e| {
            // `request_id` is offered beside the params, not as one of them.
            e.replace("(params: request_id)", "(params: none; also {request_id})")
                .replace(", request_id)", "; also {request_id})")
        })?;
        let mut segs = Vec::new();
        let mut run = Vec::new();
        for p in t.pieces {
            if p == Piece::Var(Source::Param(params.len())) {
                if !run.is_empty() {
                    segs.push(Seg::Tpl(Template {
                        pieces: std::mem::take(&mut run),
                    }));
                }
                segs.push(Seg::RequestId);
            } else {
                run.push(p);
            }
        }
        if !run.is_empty() {
            segs.push(Seg::Tpl(Template { pieces: run }));
        }
        Ok(Text { segs })
    }

    /// The expansion, escaped as `esc`; `None` when a value is missing
    /// (an absent claim) or cannot be inserted.
    pub fn expand(&self, v: &Vars<'_>, esc: Escape) -> Option<String> {
        let none = |_: usize| -> Option<&Value> { None };
        let ctx = Context {
            path: v.path,
            params: v.params,
            query: v.query,
            claims: v.claims,
            part: &none,
            item: None,
            body: None,
        };
        let mut out = String::new();
        for s in &self.segs {
            match s {
                Seg::Tpl(t) => t.expand(&ctx, esc, &mut out).ok()?,
                Seg::RequestId => template::escape_into(v.request_id, esc, &mut out).ok()?,
            }
        }
        Some(out)
    }

    /// True for a text without references.
    pub fn is_literal(&self) -> bool {
        self.segs.iter().all(
            |s| matches!(s, Seg::Tpl(t) if t.pieces.iter().all(|p| matches!(p, Piece::Lit(_)))),
        )
    }
}

/// A value for a JSON `add`.
#[derive(Debug, Clone, PartialEq)]
pub enum AddValue {
    /// A JSON value as written.
    Json(Value),
    /// A string template.
    Text(Text),
}

impl AddValue {
    fn expand(&self, v: &Vars<'_>) -> Option<Value> {
        match self {
            AddValue::Json(j) => Some(j.clone()),
            AddValue::Text(t) => t.expand(v, Escape::Header).map(Value::String),
        }
    }
}

/// Compiled header operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeaderPlan {
    /// Lower-case names removed.
    pub remove: Vec<String>,
    /// Lower-case old name → new name.
    pub rename: Vec<(String, String)>,
    /// Name → value template, replacing.
    pub set: Vec<(String, Text)>,
    /// Name → value template, appended.
    pub add: Vec<(String, Text)>,
}

/// Compiled query operations (names percent-encoded already).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct QueryPlan {
    /// Names removed.
    pub remove: Vec<String>,
    /// Name → value template, replacing.
    pub set: Vec<(String, Text)>,
    /// Name → value template, appended.
    pub add: Vec<(String, Text)>,
}

/// Compiled operations of one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpsPlan {
    /// Header operations.
    pub headers: Option<HeaderPlan>,
    /// JSON body operations.
    pub body: Option<JsonPlan>,
    /// Query operations.
    pub query: Option<QueryPlan>,
}

/// A route's body policies: transformation and compression.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Request operations.
    pub request: Option<OpsPlan>,
    /// Response operations.
    pub response: Option<OpsPlan>,
    /// Largest body buffered for a JSON operation.
    pub max_body_bytes: u64,
    /// Response compression and request decompression.
    pub compression: Option<CompressPlan>,
}

/// Field names no operation may touch: the gateway frames messages itself.
const PROTECTED: [&str; 7] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// One problem: the field below the route, the message, and the text to
/// point at in the config (the offending name or template).
pub type Problem = (String, String, String);

fn header_name_ok(n: &str, at: &str, problems: &mut Vec<Problem>) -> bool {
    let why = if !is_token(n) {
        format!("{n:?} is not a header field name")
    } else if PROTECTED.iter().any(|p| p.eq_ignore_ascii_case(n)) {
        format!("{n:?} frames the message and is the gateway's to write")
    } else {
        return true;
    };
    problems.push((at.to_string(), why, n.to_string()));
    false
}

fn header_templates(
    map: &BTreeMap<String, String>,
    params: &[String],
    at: &str,
    problems: &mut Vec<Problem>,
) -> Vec<(String, Text)> {
    let mut out = Vec::new();
    for (n, v) in map {
        if !header_name_ok(n, at, problems) {
            continue;
        }
        if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            problems.push((
                format!("{at}.{n}"),
                "a header value cannot hold CR, LF or NUL".into(),
                n.clone(),
            ));
            continue;
        }
        match Text::parse(v, params) {
            Ok(t) => out.push((n.clone(), t)),
            Err(e) => problems.push((format!("{at}.{n}"), e, v.clone())),
        }
    }
    out
}

fn compile_headers(
    ops: &HeaderOps,
    params: &[String],
    at: &str,
    problems: &mut Vec<Problem>,
) -> HeaderPlan {
    let mut remove = Vec::new();
    for n in &ops.remove {
        if header_name_ok(n, &format!("{at}.remove"), problems) {
            remove.push(n.to_ascii_lowercase());
        }
    }
    let mut rename = Vec::new();
    for (f, t) in &ops.rename {
        let at = format!("{at}.rename");
        if header_name_ok(f, &at, problems) && header_name_ok(t, &at, problems) {
            rename.push((f.to_ascii_lowercase(), t.clone()));
        }
    }
    HeaderPlan {
        remove,
        rename,
        set: header_templates(&ops.set, params, &format!("{at}.set"), problems),
        add: header_templates(&ops.add, params, &format!("{at}.add"), problems),
    }
}

fn compile_query(
    ops: &QueryOps,
    params: &[String],
    at: &str,
    problems: &mut Vec<Problem>,
) -> QueryPlan {
    let enc = |n: &str| {
        let mut s = String::new();
        let _ = template::escape_into(n, Escape::Url, &mut s);
        s
    };
    let mut templates = |map: &BTreeMap<String, String>, what: &str| {
        let mut out = Vec::new();
        for (n, v) in map {
            if n.is_empty() {
                problems.push((
                    format!("{at}.{what}"),
                    "a query parameter needs a name".into(),
                    what.into(),
                ));
                continue;
            }
            match Text::parse(v, params) {
                Ok(t) => out.push((enc(n), t)),
                Err(e) => problems.push((format!("{at}.{what}.{n}"), e, v.clone())),
            }
        }
        out
    };
    QueryPlan {
        set: templates(&ops.set, "set"),
        add: templates(&ops.add, "add"),
        remove: ops.remove.iter().map(|n| enc(n)).collect(),
    }
}

fn json_path(p: &str, at: &str, problems: &mut Vec<Problem>) -> Option<json::Path> {
    let parsed = json::parse_path(p);
    if parsed.is_none() {
        problems.push((
            at.to_string(),
            format!("{p:?} is not a dotted path (keys joined by '.')"),
            p.to_string(),
        ));
    }
    parsed
}

fn compile_json(
    ops: &JsonOps,
    params: &[String],
    at: &str,
    problems: &mut Vec<Problem>,
) -> JsonPlan {
    let mut remove = Vec::new();
    for p in &ops.remove {
        remove.extend(json_path(p, &format!("{at}.remove"), problems));
    }
    let mut rename = Vec::new();
    for (from, to) in &ops.rename {
        let Some(f) = json_path(from, &format!("{at}.rename"), problems) else {
            continue;
        };
        if to.is_empty() || to.contains('.') {
            problems.push((
                format!("{at}.rename.{from}"),
                format!("{to:?}: rename gives the new key (no '.'); use `move` for another place"),
                to.clone(),
            ));
        } else {
            rename.push((f, to.clone()));
        }
    }
    let mut moves = Vec::new();
    for (from, to) in &ops.moves {
        let f = json_path(from, &format!("{at}.move"), problems);
        let t = json_path(to, &format!("{at}.move"), problems);
        if let (Some(f), Some(t)) = (f, t) {
            moves.push((f, t));
        }
    }
    let mut add = Vec::new();
    for (p, v) in &ops.add {
        let Some(parsed) = json_path(p, &format!("{at}.add"), problems) else {
            continue;
        };
        let value = match v {
            Value::String(s) => match Text::parse(s, params) {
                Ok(t) => AddValue::Text(t),
                Err(e) => {
                    problems.push((format!("{at}.add.{p}"), e, s.clone()));
                    continue;
                }
            },
            other => AddValue::Json(other.clone()),
        };
        add.push((parsed, value));
    }
    JsonPlan {
        remove,
        rename,
        moves,
        add,
    }
}

fn compile_ops(
    ops: &TransformOps,
    params: &[String],
    at: &str,
    problems: &mut Vec<Problem>,
) -> OpsPlan {
    OpsPlan {
        headers: ops
            .headers
            .as_ref()
            .map(|h| compile_headers(h, params, &format!("{at}.headers"), problems)),
        body: ops
            .body
            .as_ref()
            .map(|b| compile_json(b, params, &format!("{at}.body"), problems)),
        query: ops
            .query
            .as_ref()
            .map(|q| compile_query(q, params, &format!("{at}.query"), problems)),
    }
}

/// Compiles a route's `transform` and `compression` (`None` when it has
/// neither), with every problem found; `params` are the route's path params.
pub fn compile(
    transform: Option<&Transform>,
    compression: Option<&compress::Compression>,
    params: &[String],
    aggregate: bool,
) -> (Option<Plan>, Vec<Problem>) {
    let mut problems = Vec::new();
    if transform.is_none() && compression.is_none() {
        return (None, problems);
    }
    // A composite's answer is composed by the gateway: it can be
    // compressed, not transformed.
    if aggregate && transform.is_some() {
        problems.push((
            "transform".into(),
            "not available on a composite route (its answer is composed by the gateway)".into(),
            "transform".into(),
        ));
    }
    if let Some(c) = compression {
        for (field, message) in compress::check(c) {
            let near = field
                .rsplit('.')
                .next()
                .unwrap_or("compression")
                .to_string();
            problems.push((format!("compression.{field}"), message, near));
        }
    }
    let mut plan = Plan {
        request: None,
        response: None,
        max_body_bytes: default_max_body_bytes(),
        compression: compression.map(CompressPlan::compile),
    };
    if let Some(t) = transform {
        if t.max_body_bytes == 0 {
            problems.push((
                "transform.max_body_bytes".into(),
                "must be at least 1".into(),
                "max_body_bytes".into(),
            ));
        }
        plan.max_body_bytes = t.max_body_bytes;
        plan.request = t
            .request
            .as_ref()
            .map(|o| compile_ops(o, params, "transform.request", &mut problems));
        if let Some(r) = &t.response {
            if r.query.is_some() {
                problems.push((
                    "transform.response.query".into(),
                    "a response has no query".into(),
                    "query".into(),
                ));
            }
            plan.response = Some(compile_ops(r, params, "transform.response", &mut problems));
        }
    }
    (Some(plan), problems)
}

/// The compiled plan of a checked route (the first problem, if any).
pub fn compile_route(
    r: &crate::config::Route,
    params: &[String],
) -> Result<Option<Box<Plan>>, String> {
    let (plan, problems) = compile(
        r.transform.as_ref(),
        r.compression.as_ref(),
        params,
        r.aggregate.is_some(),
    );
    match problems.first() {
        Some((field, message, _)) => Err(format!("{field}: {message}")),
        None => Ok(plan.map(Box::new)),
    }
}

/// Every problem of a route's `transform` and `compression`: (field below
/// the route, message, text to point at).
pub fn check_route(r: &crate::config::Route, params: &[String]) -> Vec<Problem> {
    compile(
        r.transform.as_ref(),
        r.compression.as_ref(),
        params,
        r.aggregate.is_some(),
    )
    .1
}

/// True for a JSON media type (`application/json`, `application/x+json`).
pub fn is_json(content_type: Option<&[u8]>) -> bool {
    let Some(ct) = content_type.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return false;
    };
    ty.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5
                && sub
                    .get(sub.len() - 5..)
                    .is_some_and(|s| s.eq_ignore_ascii_case("+json")))
}

/// The query with `plan` applied (remove → set → add).
pub fn edit_query(query: Option<&str>, plan: &QueryPlan, v: &Vars<'_>) -> String {
    let name_of = |pair: &str| pair.split('=').next().unwrap_or("").to_string();
    let mut pairs: Vec<String> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| {
            let n = name_of(p);
            !plan.remove.contains(&n) && !plan.set.iter().any(|(s, _)| *s == n)
        })
        .map(str::to_string)
        .collect();
    for (name, t) in plan.set.iter().chain(&plan.add) {
        if let Some(value) = t.expand(v, Escape::Url) {
            pairs.push(format!("{name}={value}"));
        }
    }
    pairs.join("&")
}

/// Expanded values of a direction's header operations.
#[derive(Debug, Default)]
struct HeaderValues {
    set: Vec<Option<String>>,
    add: Vec<Option<String>>,
}

fn header_values(plan: &HeaderPlan, v: &Vars<'_>) -> HeaderValues {
    HeaderValues {
        set: plan
            .set
            .iter()
            .map(|(_, t)| t.expand(v, Escape::Header))
            .collect(),
        add: plan
            .add
            .iter()
            .map(|(_, t)| t.expand(v, Escape::Header))
            .collect(),
    }
}

/// What the response side needs of one request: the route's plan, the
/// values of its templates, and the coding the client accepts.
#[derive(Debug)]
pub struct ResponseEdit<'c> {
    plan: &'c Plan,
    headers: HeaderValues,
    json_adds: Vec<Option<Value>>,
    /// The coding negotiated from the request's `Accept-Encoding`.
    pub encoding: Option<(compress::Algorithm, u32)>,
    head_request: bool,
    /// The client takes trailer fields (`TE: trailers`).
    trailers: bool,
}

impl ResponseEdit<'_> {
    fn header_edit(&self) -> Option<HeaderEdit<'_>> {
        let plan = self.plan.response.as_ref()?.headers.as_ref()?;
        Some(HeaderEdit {
            plan,
            set: &self.headers.set,
            add: &self.headers.add,
        })
    }
}

/// Reads a request body of at most `cap` bytes (413 beyond; a declared
/// length is refused before reading), answering `100 Continue` first when
/// the client waits for it.
async fn read_request_body(
    client: &mut Conn,
    req: &RequestHead,
    cap: u64,
    ex: &mut Exchange<'_>,
) -> Result<Vec<u8>, GatewayError> {
    // A body read whole by an earlier stage (validation) is read again from
    // memory, in the framing its head names (its 100 Continue was sent).
    let mut send_continue = req.expect_continue;
    if let Some(read) = ex.body.take() {
        let rest = client.buffered().to_vec();
        client.consume(rest.len());
        client.push_buffered(&read);
        client.push_buffered(&rest);
        ex.body_consumed = false;
        send_continue = false;
    }
    let b = read_body(client, req.framing, send_continue, cap, ex.limits).await?;
    ex.body_consumed = true;
    Ok(b)
}

/// The request stage: applies the route's request operations (and request
/// decompression) and prepares its response side in `ex`. Returns the
/// edited head, if the head changed; a rewritten body is then the next
/// thing buffered in `client`, framed by the new head.
pub async fn request<'c>(
    plan: &'c Plan,
    req: &RequestHead,
    params: &[Range<usize>],
    claims: &[(String, String)],
    client: &mut Conn,
    ex: &mut Exchange<'c>,
) -> Result<Option<RequestHead>, GatewayError> {
    let vars = Vars {
        path: req.path(),
        params,
        query: req.query(),
        claims,
        request_id: ex.request_id,
    };
    let response = plan.response.as_ref();
    if response.is_some() || plan.compression.is_some() {
        let headers = response
            .and_then(|r| r.headers.as_ref())
            .map(|h| header_values(h, &vars))
            .unwrap_or_default();
        let json_adds = response
            .and_then(|r| r.body.as_ref())
            .map(|b| b.add.iter().map(|(_, a)| a.expand(&vars)).collect())
            .unwrap_or_default();
        let encoding = plan
            .compression
            .as_ref()
            .and_then(|c| compress::negotiate(&c.algorithms, req.header("accept-encoding")));
        ex.body_edit = Some(Box::new(ResponseEdit {
            plan,
            headers,
            json_adds,
            encoding,
            head_request: req.method() == "HEAD",
            trailers: crate::http::head::accepts_trailers(req.header("te")),
        }));
    }
    let has_body = req.framing != Framing::None;
    let coding = req
        .header("content-encoding")
        .filter(|c| !c.trim_ascii().eq_ignore_ascii_case(b"identity"));
    let decompress = plan
        .compression
        .as_ref()
        .and_then(|c| c.decompress)
        .filter(|_| has_body && coding.is_some());
    let ops = plan.request.as_ref();
    let body_ops = ops.and_then(|o| o.body.as_ref()).filter(|_| has_body);
    let identity_response = response.is_some_and(|r| r.body.is_some());
    if ops.is_none() && decompress.is_none() && !identity_response {
        return Ok(None);
    }
    let mut body = None;
    if decompress.is_some() || body_ops.is_some() {
        if body_ops.is_some() && !is_json(req.header("content-type")) {
            return Err(GatewayError::UnsupportedMediaType(
                "this route transforms JSON request bodies (Content-Type: application/json)",
            ));
        }
        if body_ops.is_some() && decompress.is_none() && coding.is_some() {
            return Err(GatewayError::UnsupportedMediaType(
                "an encoded request body cannot be transformed on this route",
            ));
        }
        let cap = match decompress {
            Some(_) => ex.limits.max_body_bytes,
            None => plan.max_body_bytes,
        };
        let mut b = read_request_body(client, req, cap, ex).await?;
        if let (Some(limit), Some(c)) = (decompress, coding) {
            b = compress::inflate(c, &b, limit)?;
        }
        if let Some(ops) = body_ops {
            if b.len() as u64 > plan.max_body_bytes {
                return Err(GatewayError::PayloadTooLarge);
            }
            if !b.is_empty() {
                let mut doc: Value = serde_json::from_slice(&b)
                    .map_err(|_| GatewayError::BadRequest("the request body is not valid JSON"))?;
                let values: Vec<Option<Value>> =
                    ops.add.iter().map(|(_, a)| a.expand(&vars)).collect();
                ops.apply(&mut doc, &values);
                b = serde_json::to_vec(&doc).map_err(|_| {
                    GatewayError::BadRequest("the transformed request body cannot be written")
                })?;
            }
        }
        body = Some(b);
    }
    let header_values = ops
        .and_then(|o| o.headers.as_ref())
        .map(|h| (h, header_values(h, &vars)));
    let changes = RequestChanges {
        headers: header_values.as_ref().map(|(plan, v)| HeaderEdit {
            plan,
            set: &v.set,
            add: &v.add,
        }),
        query: ops
            .and_then(|o| o.query.as_ref())
            .map(|q| edit_query(req.query(), q, &vars)),
        body_len: body.as_ref().map(Vec::len),
        decoded: decompress.is_some(),
        identity_response,
    };
    let edited = head::request(req, &changes)?;
    if let Some(b) = body {
        // The new body goes in front of whatever the client sent after it.
        let rest = client.buffered().to_vec();
        client.consume(rest.len());
        client.push_buffered(&b);
        client.push_buffered(&rest);
        // Unread again, framed by the edited head.
        ex.body_consumed = b.is_empty();
    }
    Ok(Some(edited))
}

/// How the response side ended.
pub struct Finished {
    /// How the client connection continues.
    pub disposition: Disposition,
    /// The upstream's body was read to its end (the connection may be pooled).
    pub upstream_done: bool,
}

/// The response side: writes `resp` (whose body is in `upc`) to the client
/// with the route's response operations and compression. An error means
/// nothing was sent.
///
/// A response cache's tap in `ex` sees the answer as it leaves the
/// transformation and before compression: the transformed head, and the
/// body uncompressed.
#[allow(clippy::too_many_arguments)]
pub async fn respond(
    edit: &ResponseEdit<'_>,
    resp: &ResponseHead,
    upc: &mut Conn,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    req: &RequestHead,
    timeout: std::time::Duration,
    keep_alive: bool,
    upstream: &str,
) -> Result<Finished, GatewayError> {
    let mut tap = ex.cache.take();
    let done = respond_tapped(
        edit,
        resp,
        upc,
        client,
        ex,
        req,
        timeout,
        keep_alive,
        upstream,
        tap.as_deref_mut(),
    )
    .await;
    ex.cache = tap;
    done
}

#[allow(clippy::too_many_arguments)]
async fn respond_tapped(
    edit: &ResponseEdit<'_>,
    resp: &ResponseHead,
    upc: &mut Conn,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    req: &RequestHead,
    timeout: std::time::Duration,
    keep_alive: bool,
    upstream: &str,
    mut tap: Option<&mut crate::cache::Tap>,
) -> Result<Finished, GatewayError> {
    let client_version = req.version;
    let bad = |reason: &str| GatewayError::BadGateway {
        upstream: upstream.to_string(),
        reason: reason.to_string(),
    };
    let headers = edit.header_edit();
    let body_ops = edit.plan.response.as_ref().and_then(|r| r.body.as_ref());
    // JSON body operations: buffered, transformed, then written whole.
    if let Some(ops) =
        body_ops.filter(|_| resp.framing != Framing::None && is_json(resp.header("content-type")))
    {
        if resp
            .header("content-encoding")
            .is_some_and(|c| !c.trim_ascii().eq_ignore_ascii_case(b"identity"))
        {
            return Err(bad("an encoded JSON response cannot be transformed"));
        }
        let body =
            match compress::read_all(upc, resp.framing, edit.plan.max_body_bytes, timeout).await {
                Ok(b) => b,
                Err(CopyError::TooLarge) => {
                    return Err(bad(
                        "the response is larger than the route's transform.max_body_bytes",
                    ))
                }
                Err(CopyError::ReadTimeout) => {
                    return Err(GatewayError::GatewayTimeout {
                        upstream: upstream.to_string(),
                    })
                }
                Err(_) => return Err(bad("the response body ended early")),
            };
        let body = if body.is_empty() {
            body
        } else {
            let mut doc: Value =
                serde_json::from_slice(&body).map_err(|_| bad("the response is not valid JSON"))?;
            ops.apply(&mut doc, &edit.json_adds);
            serde_json::to_vec(&doc)
                .map_err(|_| bad("the transformed response cannot be written"))?
        };
        let edited = head::response(
            resp,
            headers.as_ref(),
            &[],
            &[],
            NewFraming::Length(body.len()),
            edit.head_request,
        )
        .ok_or_else(|| bad("the transformed response head is not valid"))?;
        if let Some(t) = tap {
            t.on_head(&edited, req);
            t.feed(&body);
            t.complete();
        }
        let disposition = compress::write_buffered(
            edit.plan.compression.as_ref(),
            edit.encoding,
            &edited,
            &body,
            client,
            ex,
            keep_alive,
            client_version == 0,
            edit.head_request,
        )
        .await;
        return Ok(Finished {
            disposition,
            upstream_done: true,
        });
    }
    // Streamed. The head's transformation first: `base` is the response as
    // it goes to a client that takes no compression.
    let transformed = match &headers {
        Some(h) => Some(
            head::response(resp, Some(h), &[], &[], NewFraming::Keep, edit.head_request)
                .ok_or_else(|| bad("the transformed response head is not valid"))?,
        ),
        None => None,
    };
    let base = transformed.as_ref().unwrap_or(resp);
    if let Some(t) = tap.as_deref_mut() {
        t.on_head(base, req);
    }
    let mut tap = tap.filter(|t| t.capturing());
    // Then compression, as the body passes.
    let length = match base.framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let decision = match &edit.plan.compression {
        Some(c) => compress::decide(c, edit.encoding, base, length, edit.head_request),
        None => compress::Decision::default(),
    };
    let (drop, extra) = compress::head_changes(decision, base);
    let framing = if decision.encode.is_some() {
        NewFraming::Chunked
    } else {
        NewFraming::Keep
    };
    let compressed;
    let out_resp = if extra.is_empty() {
        base
    } else {
        compressed = head::response(base, None, &drop, &extra, framing, edit.head_request)
            .ok_or_else(|| bad("the compressed response head is not valid"))?;
        &compressed
    };
    let client_http11 = client_version == 1;
    let out_framing = match out_resp.framing {
        Framing::None => None,
        Framing::Length(_) => Some(OutFraming::Raw),
        Framing::Chunked | Framing::UntilClose if client_http11 => Some(OutFraming::Chunked),
        Framing::Chunked | Framing::UntilClose => Some(OutFraming::Raw),
    };
    let close_delimited =
        out_framing == Some(OutFraming::Raw) && !matches!(out_resp.framing, Framing::Length(_));
    let keep_alive = keep_alive && !close_delimited;
    let bytes =
        crate::proxy::client_head(out_resp, out_framing, ex, keep_alive, client_version == 0);
    ex.seen.status = resp.status;
    ex.seen.bytes_out = bytes.len() as u64;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    ex.response_started = true;
    let closed = Finished {
        disposition: Disposition::Close,
        upstream_done: false,
    };
    if r.is_err() {
        return Ok(closed);
    }
    let lim = CopyLimits {
        read_timeout: timeout,
        write_timeout: ex.limits.send_timeout,
        max_bytes: u64::MAX,
        // Passed on when the body passes as it is (dropped when compressed).
        trailers: edit.trailers,
    };
    let result = match (out_framing, decision.encode) {
        (None, _) => Ok(0),
        (Some(out), Some((alg, level))) => match compress::Encoder::new(alg, level) {
            Ok(enc) => {
                let mut feed = |d: &[u8]| {
                    if let Some(t) = tap.as_deref_mut() {
                        t.feed(d);
                    }
                };
                compress::copy_compressed(
                    upc,
                    resp.framing,
                    &mut client.stream,
                    out,
                    enc,
                    lim,
                    Some(&mut feed),
                )
                .await
            }
            Err(_) => return Ok(closed),
        },
        (Some(out), None) => match tap.as_deref_mut() {
            Some(t) => copy_body_tapped(upc, resp.framing, &mut client.stream, out, lim, t).await,
            None => copy_body(upc, resp.framing, &mut client.stream, out, lim).await,
        },
    };
    match result {
        Ok(n) => {
            if let Some(t) = tap {
                t.complete();
            }
            ex.seen.bytes_out += n;
            Ok(Finished {
                disposition: if keep_alive {
                    Disposition::KeepAlive
                } else {
                    Disposition::Close
                },
                upstream_done: true,
            })
        }
        Err(_) => Ok(closed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(
        path: &'a str,
        params: &'a [Range<usize>],
        claims: &'a [(String, String)],
    ) -> Vars<'a> {
        Vars {
            path,
            params,
            query: Some("page=2&x=1"),
            claims,
            request_id: "rid-1",
        }
    }

    #[test]
    fn text_expands_params_claims_and_request_id() {
        let t = Text::parse("{id}/{claims.tenant}/{request_id}/{{lit}}", &["id".into()]).unwrap();
        let claims = vec![("tenant".to_string(), "acme".to_string())];
        let params = [Range { start: 6, end: 8 }];
        let v = vars("/users42", &params, &claims);
        assert_eq!(
            t.expand(&v, Escape::Header).as_deref(),
            Some("42/acme/rid-1/{lit}")
        );
        let missing = Text::parse("{claims.nope}", &[]).unwrap();
        assert_eq!(missing.expand(&v, Escape::Header), None);
        assert!(Text::parse("{nope}", &[]).is_err());
        assert!(Text::parse("{unclosed", &[]).is_err());
        assert!(Text::parse("plain", &[]).unwrap().is_literal());
    }

    #[test]
    fn query_remove_set_add() {
        let plan = QueryPlan {
            remove: vec!["x".into()],
            set: vec![("page".into(), Text::parse("9", &[]).unwrap())],
            add: vec![("rid".into(), Text::parse("{request_id}", &[]).unwrap())],
        };
        let v = vars("/", &[], &[]);
        assert_eq!(edit_query(v.query, &plan, &v), "page=9&rid=rid-1");
    }

    #[test]
    fn json_media_types() {
        assert!(is_json(Some(b"application/json; charset=utf-8")));
        assert!(is_json(Some(b"application/problem+json")));
        assert!(!is_json(Some(b"text/plain")));
        assert!(!is_json(None));
    }
}
