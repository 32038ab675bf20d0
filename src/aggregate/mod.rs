//! Request aggregation: a composite route calls several upstreams and answers
//! with one JSON document (the Backend-for-Frontend pattern).
//!
//! - [`template`]: the parts' path/query/header/body templates (pure).
//! - [`shape`]: target, allow, deny, rename, and combining results (pure).
//! - [`fetch`]: one part's call over the shard's upstream pools.
//! - [`items`]: `for_each` parts: one call per element of an earlier
//!   part's array (bounded concurrency) or one batch call joined back by key.
//! - [`when`]: conditions of conditional parts.
//! - this file: the compiled [`AggregatePlan`] (parts in declaration order,
//!   their dependencies checked for cycles) and the executor, which runs on
//!   the shard that received the request. Every part is polled from one
//!   task: independent parts are in flight together, and a part that depends
//!   on others starts as soon as the last of them completes.
pub mod fetch;
pub mod items;
pub mod shape;
pub mod template;
pub mod when;

use crate::compiled::Limits;
use crate::config::{self, Collisions, MergeMode, OnItemError};
use crate::error::GatewayError;
use crate::http::body::{discard_body, CopyError, CopyLimits};
use crate::http::{Conn, RequestHead};
use crate::proxy::{Disposition, Exchange};
use crate::shard::{Shard, ShardConfig};
use fetch::{Answer, PartError, PartRequest};
use serde_json::{Map, Value};
use shape::Shape;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use template::{Context, Escape, Source, Template};
use when::Condition;

/// Most parts one composite route may have.
pub const MAX_PARTS: usize = 16;

/// The header naming the optional parts left out of a 200 answer.
pub const PARTIAL_HEADER: &str = "x-aggregate-partial";

/// Most items a `for_each` part may be configured for.
pub const MAX_ITEMS: usize = 10_000;

/// Most concurrent item calls a `for_each` part may be configured for.
pub const MAX_CONCURRENCY: usize = 256;

/// Header names a part may not set: the gateway frames the request itself.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-request-id",
];

/// One part, compiled.
#[derive(Debug, Clone)]
pub struct PartPlan {
    /// Name from the config.
    pub name: String,
    /// Key its result is placed under (its `group`, else its name).
    pub key: String,
    /// The part has a `group`.
    pub grouped: bool,
    /// Index into [`crate::compiled::Compiled::upstreams`].
    pub upstream: usize,
    /// Request method.
    pub method: String,
    /// Path (and query) template.
    pub path: Template,
    /// Extra query parameters: percent-encoded name, value template.
    pub query: Vec<(String, Template)>,
    /// Extra headers: lower-case name, value template.
    pub headers: Vec<(String, Template)>,
    /// Body template (JSON).
    pub body: Option<Template>,
    /// Time budget of this call.
    pub timeout: Duration,
    /// `timeout after N ms`, precomputed.
    pub timeout_reason: String,
    /// A failure fails the whole request.
    pub required: bool,
    /// Parts that must complete first (`after` and parts its templates read).
    pub deps: Vec<usize>,
    /// How its result is reshaped.
    pub shape: Shape,
    /// The method writes (anything but GET, HEAD, OPTIONS): never retried,
    /// and not sent once a required part has failed.
    pub write: bool,
    /// Run only when this holds; otherwise the part is absent.
    pub when: Option<Condition>,
    /// Per-item enrichment (`for_each`).
    pub each: Option<Each>,
}

/// A `for_each` part, compiled.
#[derive(Debug, Clone)]
pub struct Each {
    /// The part whose array is iterated.
    pub source: usize,
    /// Path of the array below that part's response.
    pub path: Vec<String>,
    /// Key of each element its answer is placed under.
    pub into: String,
    /// Most items; more fails the part.
    pub max_items: usize,
    /// Most item calls in flight at once.
    pub max_concurrency: usize,
    /// What a failed item does.
    pub on_error: OnItemError,
    /// One call for all items instead.
    pub batch: Option<BatchPlan>,
}

/// A batch call, compiled.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    /// Path template (reads the items through a wildcard).
    pub path: Template,
    /// Field of each answer element that identifies it.
    pub key: Vec<String>,
    /// Field of each item that is matched against `key`.
    pub item_key: Vec<String>,
    /// Where the answer's array is (empty: the root).
    pub target: Vec<String>,
    /// The part's allow/deny/rename, applied to each matched element.
    pub shape: Shape,
}

/// A composite route, compiled.
#[derive(Debug, Clone)]
pub struct AggregatePlan {
    /// Parts in declaration order (the merge order).
    pub parts: Vec<PartPlan>,
    /// How results are combined.
    pub merge: MergeMode,
    /// Bound on the whole composite.
    pub timeout: Duration,
    /// Reason given to parts cut off by `timeout`.
    pub timeout_reason: String,
    /// Largest body accepted from one part.
    pub max_part_bytes: u64,
    /// Largest composite body.
    pub max_body_bytes: u64,
    /// Field listing optional parts that failed.
    pub errors_field: String,
    /// What merging does when two results set the same field.
    pub collisions: Collisions,
    /// The part whose status becomes the composite's.
    pub status_from: Option<usize>,
    /// Lower-case names of headers copied from the parts' answers.
    pub forward_headers: Vec<String>,
    /// Some template reads the client's JSON body.
    pub reads_body: bool,
}

/// A problem with a composite route's config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    /// Index of the part, if the problem is one part's.
    pub part: Option<usize>,
    /// Field below `aggregate` (`parts[1].after`, `timeout_ms`).
    pub field: String,
    /// Text near the problem in the file (a value), to locate it.
    pub near: Option<String>,
    /// What is wrong.
    pub message: String,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
}

impl AggregatePlan {
    /// Compiles and checks a route's `aggregate`. `params` are the route's
    /// path params, `upstream` maps an upstream name to its index and
    /// `authenticated` says whether the route establishes a caller (claims).
    /// Every problem is reported.
    pub fn compile(
        a: &config::Aggregate,
        params: &[String],
        upstream: &dyn Fn(&str) -> Option<usize>,
        authenticated: bool,
    ) -> Result<AggregatePlan, Vec<PlanProblem>> {
        let mut problems = Vec::new();
        let mut problem = |part: Option<usize>, field: String, near: Option<&str>, msg: String| {
            problems.push(PlanProblem {
                part,
                field,
                near: near.map(str::to_string),
                message: msg,
            })
        };
        if a.parts.is_empty() {
            problem(
                None,
                "parts".into(),
                None,
                "at least one part is needed".into(),
            );
        }
        if a.parts.len() > MAX_PARTS {
            problem(
                None,
                "parts".into(),
                None,
                format!("{} parts; at most {MAX_PARTS} are allowed", a.parts.len()),
            );
        }
        for (field, v) in [
            ("timeout_ms", a.timeout_ms),
            ("max_part_bytes", a.max_part_bytes),
            ("max_body_bytes", a.max_body_bytes),
        ] {
            if v == 0 {
                problem(None, field.into(), None, "must be at least 1".into());
            }
        }
        if !valid_name(&a.errors_field) {
            problem(
                None,
                "errors_field".into(),
                Some(&a.errors_field),
                "must be letters, digits, '_' or '-'".into(),
            );
        }
        let names: Vec<&str> = a.parts.iter().map(|p| p.name.as_str()).collect();
        if let Some(p) = a
            .parts
            .iter()
            .find(|p| p.group.as_ref().unwrap_or(&p.name) == &a.errors_field)
        {
            problem(
                None,
                "errors_field".into(),
                None,
                format!("{:?} is also the key of part {:?}", a.errors_field, p.name),
            );
        }
        let mut parts = Vec::with_capacity(a.parts.len());
        let mut reads_body = false;
        for (i, p) in a.parts.iter().enumerate() {
            let f = |name: &str| format!("parts[{i}].{name}");
            let here = Some(i);
            if !valid_name(&p.name) || template::RESERVED.contains(&p.name.as_str()) {
                problem(
                    here,
                    f("name"),
                    Some(&p.name),
                    "must be letters, digits, '_' or '-', and not `query`, `claims`, `item` or `body`"
                        .into(),
                );
            }
            if names.iter().take(i).any(|n| *n == p.name) {
                problem(here, f("name"), Some(&p.name), "duplicate part name".into());
            }
            let up = upstream(&p.upstream);
            if up.is_none() {
                problem(
                    here,
                    f("upstream"),
                    Some(&p.upstream),
                    format!("unknown upstream {:?}", p.upstream),
                );
            }
            if p.method.is_empty() || !p.method.bytes().all(|b| b.is_ascii_uppercase()) {
                problem(
                    here,
                    f("method"),
                    Some(&p.method),
                    "must be an upper-case method name".into(),
                );
            }
            if !p.path.starts_with('/') {
                problem(here, f("path"), Some(&p.path), "must start with '/'".into());
            }
            let mut parse = |field: String, text: &str| {
                Template::parse(text, params, &names)
                    .map_err(|e| problem(here, field, Some(text), e))
                    .ok()
            };
            let path = parse(f("path"), &p.path);
            let query: Vec<_> = p
                .query
                .iter()
                .map(|(k, v)| (k, parse(f("query"), v)))
                .collect();
            let headers: Vec<_> = p
                .headers
                .iter()
                .map(|(k, v)| (k, parse(f("headers"), v)))
                .collect();
            let body = p.body.as_deref().map(|b| parse(f("body"), b));
            for (k, _) in &headers {
                let lower = k.to_ascii_lowercase();
                if k.is_empty() || !k.bytes().all(config::is_token_byte) {
                    problem(
                        here,
                        f("headers"),
                        Some(k),
                        format!("{k:?} is not a valid header name"),
                    );
                } else if RESERVED_HEADERS.contains(&lower.as_str()) {
                    problem(
                        here,
                        f("headers"),
                        Some(k),
                        format!("{k:?} is set by the gateway"),
                    );
                }
            }
            for (k, _) in &query {
                if k.is_empty() {
                    problem(
                        here,
                        f("query"),
                        None,
                        "a query parameter needs a name".into(),
                    );
                }
            }
            if p.timeout_ms == Some(0) {
                problem(here, f("timeout_ms"), None, "must be at least 1".into());
            }
            if p.group
                .as_deref()
                .is_some_and(|g| !g.split('.').all(valid_name))
            {
                problem(
                    here,
                    f("group"),
                    p.group.as_deref(),
                    "must be names of letters, digits, '_' or '-' joined by '.'".into(),
                );
            }
            let mut deps = Vec::new();
            if let Some(after) = &p.after {
                match names.iter().position(|n| n == after) {
                    Some(d) => deps.push(d),
                    None => problem(
                        here,
                        f("after"),
                        Some(after),
                        format!("unknown part {after:?} (parts: {})", names.join(", ")),
                    ),
                }
            }
            let all: Vec<&Template> = path
                .iter()
                .chain(query.iter().filter_map(|(_, t)| t.as_ref()))
                .chain(headers.iter().filter_map(|(_, t)| t.as_ref()))
                .chain(body.iter().flatten())
                .collect();
            for t in &all {
                deps.extend(t.parts_used());
            }
            let when = p.when.as_deref().and_then(|text| {
                Condition::parse(text, params, &names)
                    .map_err(|e| problem(here, f("when"), Some(text), e.to_string()))
                    .ok()
            });
            if let Some(c) = &when {
                deps.extend(c.part_used());
                if !authenticated && matches!(c.source, Source::Claim(_)) {
                    problem(
                        here,
                        f("when"),
                        p.when.as_deref(),
                        "reads {claims...} but the route has no `auth: Required([...])`".into(),
                    );
                }
            }
            let each = compile_each(p, i, params, &names, &mut problem);
            if let Some(e) = &each {
                deps.push(e.source);
                if let Some(b) = &e.batch {
                    deps.extend(b.path.parts_used());
                }
            } else if all.iter().any(|t| t.uses_item()) {
                problem(
                    here,
                    f("path"),
                    Some(&p.path),
                    "{item...} needs `for_each` on the part".into(),
                );
            }
            reads_body |= all.iter().any(|t| t.uses_body())
                || when
                    .as_ref()
                    .is_some_and(|c| matches!(c.source, Source::Body(_)));
            deps.sort_unstable();
            deps.dedup();
            if !authenticated && all.iter().any(|t| t.uses_claims()) {
                problem(
                    here,
                    f("path"),
                    Some(&p.path),
                    "uses {claims...} but the route has no `auth: Required([...])`".into(),
                );
            }
            let key = p.group.clone().unwrap_or_else(|| p.name.clone());
            let timeout_ms = p.timeout_ms.unwrap_or(a.timeout_ms);
            let pick = |t: Option<Template>| t.unwrap_or_default();
            parts.push(PartPlan {
                name: p.name.clone(),
                grouped: p.group.is_some(),
                key,
                upstream: up.unwrap_or(0),
                method: p.method.clone(),
                path: pick(path),
                query: query
                    .into_iter()
                    .map(|(k, t)| {
                        let mut name = String::new();
                        let _ = template::escape_into(k, Escape::Url, &mut name);
                        (name, pick(t))
                    })
                    .collect(),
                headers: headers
                    .into_iter()
                    .map(|(k, t)| (k.to_ascii_lowercase(), pick(t)))
                    .collect(),
                body: body.map(pick),
                timeout: Duration::from_millis(timeout_ms),
                timeout_reason: format!("timeout after {timeout_ms} ms"),
                required: p.required,
                deps,
                shape: Shape::new(p.target.as_deref(), &p.allow, &p.deny, &p.rename),
                write: !matches!(p.method.as_str(), "GET" | "HEAD" | "OPTIONS"),
                when,
                each,
            });
        }
        let status_from = a.status_from.as_ref().and_then(|n| {
            let found = names.iter().position(|p| p == n);
            if found.is_none() {
                problem(
                    None,
                    "status_from".into(),
                    Some(n),
                    format!("unknown part {n:?} (parts: {})", names.join(", ")),
                );
            }
            found
        });
        let mut forward_headers = Vec::new();
        for h in &a.forward_headers {
            let lower = h.to_ascii_lowercase();
            if h.is_empty() || !h.bytes().all(config::is_token_byte) {
                problem(
                    None,
                    "forward_headers".into(),
                    Some(h),
                    format!("{h:?} is not a valid header name"),
                );
            } else if RESERVED_HEADERS.contains(&lower.as_str())
                || ["content-type", "keep-alive", "upgrade", "trailer"].contains(&lower.as_str())
            {
                problem(
                    None,
                    "forward_headers".into(),
                    Some(h),
                    format!("{h:?} is set by the gateway"),
                );
            } else if !forward_headers.contains(&lower) {
                forward_headers.push(lower);
            }
        }
        for (i, cycle) in find_cycles(&parts) {
            let Some(part) = a.parts.get(i) else {
                continue;
            };
            // At `after` when the part has one, else at the template that reads the other part.
            let (field, near) = match &part.after {
                Some(after) => ("after", after),
                None => ("path", &part.path),
            };
            problem(
                Some(i),
                format!("parts[{i}].{field}"),
                Some(near),
                format!("dependency cycle: {cycle}"),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(AggregatePlan {
            parts,
            merge: a.merge,
            timeout: Duration::from_millis(a.timeout_ms),
            timeout_reason: format!(
                "timeout: the composite's limit of {} ms passed",
                a.timeout_ms
            ),
            max_part_bytes: a.max_part_bytes,
            max_body_bytes: a.max_body_bytes,
            errors_field: a.errors_field.clone(),
            collisions: a.collisions,
            status_from,
            forward_headers,
            reads_body,
        })
    }

    /// True when some part writes (POST, PUT, PATCH, DELETE, ...).
    pub fn writes(&self) -> bool {
        self.parts.iter().any(|p| p.write)
    }
}

/// Reports a problem: part index, field, text near it, message.
type Reporter<'a> = dyn FnMut(Option<usize>, String, Option<&str>, String) + 'a;

/// Compiles a part's `for_each`, `into`, `max_items`, `max_concurrency`
/// and `batch`, reporting problems through `problem`.
fn compile_each(
    p: &config::Part,
    i: usize,
    params: &[String],
    names: &[&str],
    problem: &mut Reporter<'_>,
) -> Option<Each> {
    let f = |name: &str| format!("parts[{i}].{name}");
    let here = Some(i);
    let Some(for_each) = &p.for_each else {
        if p.batch.is_some() || p.into.is_some() {
            problem(
                here,
                f(if p.batch.is_some() { "batch" } else { "into" }),
                None,
                "needs `for_each` on the part".into(),
            );
        }
        return None;
    };
    let mut segs = for_each.split('.');
    let head = segs.next().unwrap_or_default();
    let path: Vec<String> = segs.map(str::to_string).collect();
    let source = names.iter().position(|n| *n == head);
    let mut ok = true;
    if source.is_none() || source == Some(i) {
        problem(
            here,
            f("for_each"),
            Some(for_each),
            format!(
                "must name another part and the path of its array, e.g. \"order.items\" (parts: {})",
                names.join(", ")
            ),
        );
        ok = false;
    }
    let valid_seg = |s: &String| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    };
    if !path.iter().all(valid_seg) {
        problem(
            here,
            f("for_each"),
            Some(for_each),
            "the path is names or indexes joined by '.' (no '*')".into(),
        );
        ok = false;
    }
    let into = p.into.clone().unwrap_or_else(|| p.name.clone());
    if !valid_name(&into) {
        problem(
            here,
            f("into"),
            Some(&into),
            "must be letters, digits, '_' or '-'".into(),
        );
        ok = false;
    }
    if p.max_items == 0 || p.max_items > MAX_ITEMS {
        problem(
            here,
            f("max_items"),
            None,
            format!("must be between 1 and {MAX_ITEMS}"),
        );
        ok = false;
    }
    if p.max_concurrency == 0 || p.max_concurrency > MAX_CONCURRENCY {
        problem(
            here,
            f("max_concurrency"),
            None,
            format!("must be between 1 and {MAX_CONCURRENCY}"),
        );
        ok = false;
    }
    let batch = match &p.batch {
        None => None,
        Some(b) => {
            let t = Template::parse(&b.path, params, names)
                .map_err(|e| problem(here, f("batch.path"), Some(&b.path), e))
                .ok();
            if !b.path.starts_with('/') {
                problem(
                    here,
                    f("batch.path"),
                    Some(&b.path),
                    "must start with '/'".into(),
                );
            }
            // The item's key: the part of `{SOURCE.PATH.*.KEY}` after the `*`.
            let item_key = t.as_ref().and_then(|t| {
                t.sources().find_map(|(s, _)| match s {
                    Source::Part { part, path: p } if Some(*part) == source => {
                        let rest = p
                            .strip_prefix(path.as_slice())?
                            .strip_prefix(&["*".to_string()])?;
                        (!rest.is_empty() && !rest.iter().any(|s| s == "*")).then(|| rest.to_vec())
                    }
                    _ => None,
                })
            });
            if t.as_ref().is_some_and(|t| t.uses_item()) {
                problem(
                    here,
                    f("batch.path"),
                    Some(&b.path),
                    "a batch call has no {item...}: read the items as {SOURCE.PATH.*.FIELD}".into(),
                );
            }
            if t.is_some() && item_key.is_none() {
                problem(
                    here,
                    f("batch.path"),
                    Some(&b.path),
                    format!("must read each item's key as {{{for_each}.*.FIELD}}"),
                );
            }
            if b.key.is_empty() || !b.key.split('.').all(|s| valid_seg(&s.to_string())) {
                problem(
                    here,
                    f("batch.key"),
                    Some(&b.key),
                    "must be a dotted field name".into(),
                );
            }
            match (t, item_key) {
                (Some(path), Some(item_key)) => Some(BatchPlan {
                    path,
                    key: b.key.split('.').map(str::to_string).collect(),
                    item_key,
                    target: b
                        .target
                        .as_deref()
                        .map(|t| t.split('.').map(str::to_string).collect())
                        .unwrap_or_default(),
                    shape: Shape::new(None, &p.allow, &p.deny, &p.rename),
                }),
                _ => {
                    ok = false;
                    None
                }
            }
        }
    };
    let source = source?;
    ok.then_some(Each {
        source,
        path,
        into,
        max_items: p.max_items,
        max_concurrency: p.max_concurrency,
        on_error: p.on_item_error,
        batch,
    })
}

/// Each cycle once, reported at its first part: (part index, `a → b → a`).
fn find_cycles(parts: &[PartPlan]) -> Vec<(usize, String)> {
    // 0 = not visited, 1 = on the current path, 2 = done.
    fn visit(
        i: usize,
        parts: &[PartPlan],
        state: &mut [u8],
        path: &mut Vec<usize>,
        out: &mut Vec<(usize, String)>,
    ) {
        let (Some(part), Some(s)) = (parts.get(i), state.get_mut(i)) else {
            return;
        };
        *s = 1;
        path.push(i);
        for &d in &part.deps {
            match state.get(d) {
                Some(0) => visit(d, parts, state, path, out),
                Some(1) => {
                    let start = path.iter().position(|&p| p == d).unwrap_or(0);
                    let on_cycle = || path.iter().skip(start).copied();
                    let names: Vec<&str> = on_cycle()
                        .chain([d])
                        .filter_map(|p| parts.get(p))
                        .map(|p| p.name.as_str())
                        .collect();
                    let first = on_cycle().min().unwrap_or(d);
                    out.push((first, names.join(" → ")));
                }
                _ => {}
            }
        }
        path.pop();
        if let Some(s) = state.get_mut(i) {
            *s = 2;
        }
    }
    let mut state = vec![0u8; parts.len()];
    let mut out = Vec::new();
    for i in 0..parts.len() {
        if state.get(i) == Some(&0) {
            visit(i, parts, &mut state, &mut Vec::new(), &mut out);
        }
    }
    out
}

/// What a completed part produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Done {
    /// Its answer (for a `for_each` part: the items' answers, `null` where
    /// an item failed).
    pub value: Value,
    /// The upstream's status (0 when no call was made).
    pub status: u16,
    /// Kept response headers: (index in `forward_headers`, value).
    pub headers: Vec<(usize, String)>,
    /// Its `when` did not hold (or a part it needs was skipped): absent.
    pub skipped: bool,
    /// Items of a `for_each` part that failed (reported, not fatal).
    pub item_errors: Vec<(usize, PartError)>,
}

impl From<Value> for Done {
    fn from(value: Value) -> Done {
        Done {
            value,
            status: 200,
            ..Done::default()
        }
    }
}

impl From<Answer> for Done {
    fn from(a: Answer) -> Done {
        Done {
            value: a.value,
            status: a.status,
            headers: a.headers,
            ..Done::default()
        }
    }
}

impl Done {
    fn skipped() -> Done {
        Done {
            skipped: true,
            ..Done::default()
        }
    }
}

/// A part's outcome: `None` while it runs.
type Slot = Option<Result<Done, PartError>>;

/// The request-side values templates are expanded with.
pub struct Inputs<'a> {
    /// The matched request.
    pub req: &'a RequestHead,
    /// Byte ranges of the route's params in the path.
    pub params: &'a [Range<usize>],
    /// The caller's claims.
    pub claims: &'a [(String, String)],
}

/// Everything a part's templates and conditions read.
struct Request<'a> {
    inputs: &'a Inputs<'a>,
    /// The client's JSON body, when the route reads it.
    body: Option<Value>,
}

/// Answers a request on a composite route: runs the parts, composes the
/// result and writes it to the client.
pub async fn serve(
    shard: &Shard,
    cfg: &ShardConfig,
    plan: &AggregatePlan,
    inputs: Inputs<'_>,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
) -> Result<Disposition, GatewayError> {
    let req = inputs.req;
    let mut body = None;
    if !ex.body_consumed {
        if plan.reads_body {
            body = Some(read_client_body(client, req, ex.limits).await?);
            ex.body_consumed = true;
        } else if req.expect_continue {
            // The client waits for 100 Continue before sending a body nobody
            // needs: answer without it and close the connection instead.
            ex.keep_alive = false;
        } else {
            // Parts carry their own bodies; the client's is read and dropped
            // so the connection stays usable.
            discard_client_body(client, req, ex.limits).await?;
            ex.body_consumed = true;
        }
    }
    let request = Request {
        inputs: &inputs,
        body,
    };
    let results = run(shard, cfg, plan, &request, ex).await;
    if let Some(route) = ex.seen.route {
        count_parts(shard, route, &results);
    }
    let composite = compose(plan, results)?;
    let keep_alive = ex.keep_alive && !shard.shutdown.is_fired();
    let bytes = response(&composite, req, ex, keep_alive);
    ex.seen.status = composite.status;
    ex.seen.bytes_out = bytes.len() as u64;
    let (r, _) = client.write(bytes, ex.limits.send_timeout).await;
    ex.response_started = true;
    Ok(if r.is_ok() && keep_alive {
        Disposition::KeepAlive
    } else {
        Disposition::Close
    })
}

/// Counts each part's outcome in the shard's metrics.
fn count_parts(shard: &Shard, route: usize, results: &[Result<Done, PartError>]) {
    use crate::metrics::PartOutcome;
    let mut m = shard.metrics.borrow_mut();
    if !m.enabled {
        return;
    }
    for (i, r) in results.iter().enumerate() {
        let outcome = match r {
            Ok(d) if d.skipped => PartOutcome::Skipped,
            Ok(_) => PartOutcome::Ok,
            Err(e) if e.timeout => PartOutcome::Timeout,
            Err(e) if e.skipped() => PartOutcome::Skipped,
            Err(_) => PartOutcome::Failed,
        };
        m.part(route, i, outcome);
    }
}

async fn discard_client_body(
    client: &mut Conn,
    req: &RequestHead,
    limits: &Limits,
) -> Result<(), GatewayError> {
    let lim = CopyLimits {
        read_timeout: limits.body_read_timeout,
        write_timeout: limits.send_timeout,
        max_bytes: limits.max_body_bytes,
        trailers: false,
    };
    discard_body(client, req.framing, lim)
        .await
        .map_err(|e| match e {
            CopyError::TooLarge => GatewayError::PayloadTooLarge,
            CopyError::ReadTimeout | CopyError::SourceClosed => GatewayError::RequestTimeout,
            CopyError::BadChunk(_) | CopyError::Write(_) | CopyError::Interrupted => {
                GatewayError::BadRequest("malformed request body")
            }
        })
}

/// Reads the client's body (at most the listener's `max_body_bytes`) and
/// parses it as JSON; an empty body is `null`.
async fn read_client_body(
    client: &mut Conn,
    req: &RequestHead,
    limits: &Limits,
) -> Result<Value, GatewayError> {
    use crate::http::chunked::ChunkedDecoder;
    use crate::http::Framing;
    if req.expect_continue {
        let (r, _) = client
            .write(
                b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
                limits.send_timeout,
            )
            .await;
        r.map_err(|_| GatewayError::RequestTimeout)?;
    }
    let max = limits.max_body_bytes;
    let mut body = Vec::new();
    match req.framing {
        Framing::None => {}
        Framing::Length(n) => {
            if n > max {
                return Err(GatewayError::PayloadTooLarge);
            }
            let mut left = n;
            while left > 0 {
                if client.buffered().is_empty() {
                    match client.fill(limits.body_read_timeout).await {
                        Ok(0) | Err(_) => return Err(GatewayError::RequestTimeout),
                        Ok(_) => {}
                    }
                }
                let take = (client.buffered().len() as u64).min(left) as usize;
                body.extend_from_slice(client.buffered().get(..take).unwrap_or_default());
                client.consume(take);
                left -= take as u64;
            }
        }
        Framing::Chunked => {
            let mut dec = ChunkedDecoder::default();
            loop {
                let step = dec
                    .step(client.buffered())
                    .map_err(|_| GatewayError::BadRequest("malformed request body"))?;
                if let Some(r) = step.data {
                    if (body.len() + r.len()) as u64 > max {
                        return Err(GatewayError::PayloadTooLarge);
                    }
                    body.extend_from_slice(client.buffered().get(r).unwrap_or_default());
                }
                client.consume(step.consumed);
                if dec.is_done() {
                    break;
                }
                if client.buffered().is_empty() {
                    match client.fill(limits.body_read_timeout).await {
                        Ok(0) | Err(_) => return Err(GatewayError::RequestTimeout),
                        Ok(_) => {}
                    }
                }
            }
        }
        Framing::UntilClose => return Err(GatewayError::BadRequest("malformed request body")),
    }
    fetch::parse_json(&body)
        .map_err(|_| GatewayError::BadRequest("the request body is not valid JSON"))
}

/// Runs every part and returns their outcomes in declaration order.
async fn run(
    shard: &Shard,
    cfg: &ShardConfig,
    plan: &AggregatePlan,
    request: &Request<'_>,
    ex: &Exchange<'_>,
) -> Vec<Result<Done, PartError>> {
    let n = plan.parts.len();
    let results: RefCell<Vec<Slot>> = RefCell::new(vec![None; n]);
    let deadline = Instant::now() + plan.timeout;
    let mut futs: Vec<Pin<Box<_>>> = (0..n)
        .map(|i| {
            Box::pin(run_part(
                shard, cfg, plan, i, request, ex, &results, deadline,
            ))
        })
        .collect();
    let mut done = vec![false; n];
    std::future::poll_fn(|cx| loop {
        // Re-poll everyone after any completion: that is what starts a part
        // whose dependencies just finished (it waits without a waker).
        let mut progressed = false;
        for (i, (f, done)) in futs.iter_mut().zip(done.iter_mut()).enumerate() {
            if *done {
                continue;
            }
            if let Poll::Ready(r) = f.as_mut().poll(cx) {
                if let Some(slot) = results.borrow_mut().get_mut(i) {
                    *slot = Some(r);
                }
                *done = true;
                progressed = true;
            }
        }
        if done.iter().all(|d| *d) {
            return Poll::Ready(());
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await;
    drop(futs);
    results
        .into_inner()
        .into_iter()
        .map(|s| s.unwrap_or_else(|| Err(PartError::new("did not run"))))
        .collect()
}

/// The template context of a request, reading completed parts from `slots`.
fn context<'a>(
    request: &'a Request<'a>,
    lookup: &'a dyn Fn(usize) -> Option<&'a Value>,
    item: Option<&'a Value>,
) -> Context<'a> {
    let inputs = request.inputs;
    Context {
        path: inputs.req.path(),
        params: inputs.params,
        query: inputs.req.query(),
        claims: inputs.claims,
        part: lookup,
        item,
        body: request.body.as_ref(),
    }
}

/// The value of a completed, not skipped part.
fn slot_value(slots: &[Slot], d: usize) -> Option<&Value> {
    match slots.get(d) {
        Some(Some(Ok(done))) if !done.skipped => Some(&done.value),
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_part(
    shard: &Shard,
    cfg: &ShardConfig,
    plan: &AggregatePlan,
    i: usize,
    request: &Request<'_>,
    ex: &Exchange<'_>,
    results: &RefCell<Vec<Slot>>,
    deadline: Instant,
) -> Result<Done, PartError> {
    let Some(part) = plan.parts.get(i) else {
        return Err(PartError::new("did not run"));
    };
    std::future::poll_fn(|_| {
        let r = results.borrow();
        // Dependencies are indices of parts, checked when the plan was compiled.
        if part
            .deps
            .iter()
            .all(|&d| r.get(d).is_none_or(Option::is_some))
        {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    {
        let slots = results.borrow();
        if let Some(&d) = part
            .deps
            .iter()
            .find(|&&d| matches!(slots.get(d), Some(Some(Err(_)))))
        {
            return Err(PartError::new(format!(
                "depends on {:?}, which failed",
                plan.parts.get(d).map_or("", |p| p.name.as_str())
            )));
        }
        // A part that needs a skipped part is skipped too.
        if part
            .deps
            .iter()
            .any(|&d| matches!(slots.get(d), Some(Some(Ok(done))) if done.skipped))
        {
            return Ok(Done::skipped());
        }
        if let Some(when) = &part.when {
            let lookup = |d: usize| slot_value(&slots, d);
            if !when.holds(&context(request, &lookup, None)) {
                return Ok(Done::skipped());
            }
        }
        if part.write {
            let failed = plan
                .parts
                .iter()
                .zip(slots.iter())
                .find(|(p, s)| p.required && matches!(s, Some(Err(_))));
            if let Some((p, _)) = failed {
                return Err(PartError::new(format!(
                    "not sent: part {:?} failed",
                    p.name
                )));
            }
        }
    }
    let now = Instant::now();
    let (part_deadline, reason) = if now + part.timeout <= deadline {
        (now + part.timeout, part.timeout_reason.as_str())
    } else {
        (deadline, plan.timeout_reason.as_str())
    };
    if part_deadline <= now {
        return Err(PartError::timed_out(reason));
    }
    let call = Call {
        shard,
        cfg,
        plan,
        part,
        index: i,
        ex,
        deadline: part_deadline,
        reason,
    };
    if let Some(each) = &part.each {
        return items::run(&call, each, request, results).await;
    }
    let (head_and_body, host_at) = {
        let slots = results.borrow();
        let lookup = |d: usize| slot_value(&slots, d);
        let ctx = context(request, &lookup, None);
        build_request(part, i, &ctx, request.inputs.req, ex)?
    };
    call.send(head_and_body, host_at).await.map(Done::from)
}

/// One part's calls: where they go and until when.
pub(crate) struct Call<'a> {
    shard: &'a Shard,
    cfg: &'a ShardConfig,
    plan: &'a AggregatePlan,
    part: &'a PartPlan,
    index: usize,
    ex: &'a Exchange<'a>,
    deadline: Instant,
    reason: &'a str,
}

impl Call<'_> {
    /// Sends one request of the part (built by [`build_request`]).
    async fn send(&self, head_and_body: Vec<u8>, host_at: usize) -> Result<Answer, PartError> {
        let part = self.part;
        let (Some(up), Some(cursor)) = (
            self.cfg.compiled.upstreams.get(part.upstream),
            self.cfg.cursors.get(part.upstream),
        ) else {
            return Err(PartError::new("unknown upstream"));
        };
        let request = PartRequest {
            up,
            cursor,
            head_and_body,
            host_at,
            head_method: part.method == "HEAD",
            // A write is never sent twice.
            retryable: !part.write && part.body.is_none(),
            max_bytes: self.plan.max_part_bytes,
            deadline: self.deadline,
            timeout_reason: self.reason,
            status: Default::default(),
            keep_headers: &self.plan.forward_headers,
        };
        let Some(trace) = &self.ex.trace else {
            return fetch::fetch(self.shard, request).await;
        };
        let started = Instant::now();
        let (result, target, status) = fetch::fetch_seen(self.shard, request).await;
        let error = result
            .as_ref()
            .err()
            .map(|e| (e.reason.as_str(), e.timeout));
        trace.part_call(
            self.index,
            part.upstream,
            target,
            status,
            started.elapsed(),
            error,
        );
        result
    }
}

/// Builds the request head (without `host`) and body of `part`, the
/// composite's part number `index`; returns the bytes and where `host` goes.
pub fn build_request(
    part: &PartPlan,
    index: usize,
    ctx: &Context<'_>,
    req: &RequestHead,
    ex: &Exchange<'_>,
) -> Result<(Vec<u8>, usize), PartError> {
    build_with_path(part, &part.path, index, ctx, req, ex)
}

/// [`build_request`] with another path template (a batch call's).
fn build_with_path(
    part: &PartPlan,
    path: &Template,
    index: usize,
    ctx: &Context<'_>,
    req: &RequestHead,
    ex: &Exchange<'_>,
) -> Result<(Vec<u8>, usize), PartError> {
    let fail = |e: String| PartError::new(format!("template: {e}"));
    let mut out = String::with_capacity(512);
    out.push_str(&part.method);
    out.push(' ');
    let target_start = out.len();
    path.expand(ctx, Escape::Url, &mut out).map_err(fail)?;
    for (name, t) in &part.query {
        let sep = if out.get(target_start..).is_some_and(|t| t.contains('?')) {
            '&'
        } else {
            '?'
        };
        out.push(sep);
        out.push_str(name);
        out.push('=');
        t.expand(ctx, Escape::Url, &mut out).map_err(fail)?;
    }
    out.push_str(" HTTP/1.1\r\n");
    let host_at = out.len();
    out.push_str("accept: application/json\r\nx-forwarded-for: ");
    if let Some(prev) = req
        .header("x-forwarded-for")
        .and_then(|v| std::str::from_utf8(v).ok())
    {
        out.push_str(prev);
        out.push_str(", ");
    }
    let _ = write!(
        out,
        "{}\r\nx-forwarded-proto: http\r\nx-request-id: {}\r\n",
        ex.client_ip, ex.request_id
    );
    if !ex.drop_authorization {
        if let Some(auth) = req
            .header("authorization")
            .and_then(|v| std::str::from_utf8(v).ok())
        {
            out.push_str("authorization: ");
            out.push_str(auth);
            out.push_str("\r\n");
        }
    }
    for (name, value) in &ex.add_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if let Some(t) = &ex.trace {
        // Part i is the request's call 1 + i.
        t.push_part_fields(index as u64 + 1, req, &mut out);
    }
    for (name, t) in &part.headers {
        out.push_str(name);
        out.push_str(": ");
        t.expand(ctx, Escape::Header, &mut out).map_err(fail)?;
        out.push_str("\r\n");
    }
    match &part.body {
        Some(t) => {
            let body = t.expand_to_string(ctx, Escape::Json).map_err(fail)?;
            let _ = write!(
                out,
                "content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        None => out.push_str("\r\n"),
    }
    Ok((out.into_bytes(), host_at))
}

/// The composed answer.
#[derive(Debug)]
pub struct Composite {
    /// The JSON body.
    pub body: Vec<u8>,
    /// Optional parts (and items, as `part[index]`) left out, in declaration order.
    pub partial: Vec<String>,
    /// The response status (200 unless `status_from` says otherwise).
    pub status: u16,
    /// Header lines copied from the parts (`forward_headers`), each ending in CRLF.
    pub headers: String,
}

/// Shapes and combines the parts' outcomes (in declaration order). A failed
/// required part fails the whole: the first one that failed on its own
/// (not because a dependency failed) is named, else the first one.
/// `for_each` answers are placed into their source part's elements first.
pub fn compose(
    plan: &AggregatePlan,
    mut results: Vec<Result<Done, PartError>>,
) -> Result<Composite, GatewayError> {
    let merged = plan.merge == MergeMode::Merge;
    let mut root = Map::new();
    let mut errors = Map::new();
    let mut partial = Vec::new();
    let mut required_failure: Option<(&str, PartError)> = None;
    let status = status_of(plan, &results)?;
    let headers = forwarded_headers(plan, &results);
    for (j, part) in plan.parts.iter().enumerate() {
        let Some(each) = &part.each else {
            continue;
        };
        let Some(Ok(done)) = results.get_mut(j) else {
            continue;
        };
        if done.skipped {
            continue;
        }
        let answers = std::mem::take(&mut done.value);
        let mut failed = Vec::new();
        for (item, e) in std::mem::take(&mut done.item_errors) {
            let key = format!("{}[{item}]", part.name);
            errors.insert(key.clone(), Value::String(e.reason));
            partial.push(key);
            failed.push(item);
        }
        if let Some(Ok(source)) = results.get_mut(each.source) {
            items::place(&mut source.value, each, answers, &failed);
        }
    }
    for (part, result) in plan.parts.iter().zip(results) {
        if part.each.is_some() && result.is_ok() {
            continue;
        }
        let shaped = result.and_then(|d| {
            if d.skipped {
                Ok(None)
            } else if part.shape.is_identity() {
                Ok(Some(d.value))
            } else {
                part.shape.apply(d.value).map(Some).map_err(PartError::new)
            }
        });
        match shaped {
            Ok(None) => {}
            Ok(Some(v)) => shape::place(
                &mut root,
                merged,
                part.grouped,
                &part.key,
                v,
                plan.collisions,
            )
            .map_err(|reason| GatewayError::PartFailed {
                part: part.name.clone(),
                reason,
                timeout: false,
            })?,
            Err(e) if part.required => {
                let own = !e.reason.starts_with("depends on ");
                let better = match &required_failure {
                    None => true,
                    Some((_, prev)) => own && prev.reason.starts_with("depends on "),
                };
                if better {
                    required_failure = Some((&part.name, e));
                }
            }
            Err(e) => {
                errors.insert(part.name.clone(), Value::String(e.reason));
                partial.push(part.name.clone());
            }
        }
    }
    if let Some((name, e)) = required_failure {
        return Err(GatewayError::PartFailed {
            part: name.to_string(),
            reason: e.reason,
            timeout: e.timeout,
        });
    }
    if !errors.is_empty() {
        root.insert(plan.errors_field.clone(), Value::Object(errors));
    }
    let body = serde_json::to_vec(&Value::Object(root)).map_err(|_| GatewayError::PartFailed {
        part: String::new(),
        reason: "the composite could not be serialized".into(),
        timeout: false,
    })?;
    if body.len() as u64 > plan.max_body_bytes {
        return Err(GatewayError::PartFailed {
            part: String::new(),
            reason: format!("the composite is larger than {} bytes", plan.max_body_bytes),
            timeout: false,
        });
    }
    Ok(Composite {
        body,
        partial,
        status,
        headers,
    })
}

/// The composite's status: the `status_from` part's 2xx (204 and 205 become
/// 200: the composite has a body), or its 4xx when it is required and failed
/// with one; 200 otherwise.
fn status_of(
    plan: &AggregatePlan,
    results: &[Result<Done, PartError>],
) -> Result<u16, GatewayError> {
    let Some(i) = plan.status_from else {
        return Ok(200);
    };
    let part = plan.parts.get(i);
    match results.get(i) {
        Some(Ok(d)) if (200..300).contains(&d.status) && !matches!(d.status, 204 | 205) => {
            Ok(d.status)
        }
        Some(Err(e)) if (400..500).contains(&e.status) && part.is_some_and(|p| p.required) => {
            Err(GatewayError::UpstreamStatus {
                upstream: part.map(|p| p.name.clone()).unwrap_or_default(),
                status: e.status,
            })
        }
        _ => Ok(200),
    }
}

/// The `forward_headers` lines: `Cache-Control` combined across the parts
/// (the most restrictive), other headers from the first part having them.
fn forwarded_headers(plan: &AggregatePlan, results: &[Result<Done, PartError>]) -> String {
    let mut out = String::new();
    for (h, name) in plan.forward_headers.iter().enumerate() {
        let values = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .filter(|d| !d.skipped)
            .flat_map(|d| d.headers.iter())
            .filter(|(i, _)| *i == h)
            .map(|(_, v)| v.as_str());
        let value = if name == "cache-control" {
            combine_cache_control(values)
        } else {
            values.into_iter().next().map(str::to_string)
        };
        if let Some(v) = value {
            let _ = write!(out, "{name}: {v}\r\n");
        }
    }
    out
}

/// Combines `Cache-Control` values of several answers: `no-store` if any
/// has it; else `private` if any is, `no-cache` if any says so, and the
/// smallest `max-age` given. `None` when nothing is left to say.
pub fn combine_cache_control<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let (mut no_store, mut private, mut no_cache, mut any) = (false, false, false, false);
    let mut max_age: Option<u64> = None;
    for v in values {
        any = true;
        for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            match d.split_once('=') {
                Some(("max-age", n)) => {
                    if let Ok(n) = n.trim().trim_matches('"').parse::<u64>() {
                        max_age = Some(max_age.map_or(n, |m| m.min(n)));
                    }
                }
                None if d == "no-store" => no_store = true,
                None if d == "private" => private = true,
                None if d == "no-cache" => no_cache = true,
                _ => {}
            }
        }
    }
    if !any {
        return None;
    }
    if no_store {
        return Some("no-store".into());
    }
    let mut parts = Vec::new();
    if private {
        parts.push("private".to_string());
    }
    if no_cache {
        parts.push("no-cache".to_string());
    }
    if let Some(n) = max_age {
        parts.push(format!("max-age={n}"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The complete HTTP response for a composite.
fn response(c: &Composite, req: &RequestHead, ex: &Exchange<'_>, keep_alive: bool) -> Vec<u8> {
    let request_id = ex.request_id;
    let mut head = String::with_capacity(192);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n",
        c.status,
        crate::error::reason_phrase(c.status),
        c.body.len()
    );
    if !c.partial.is_empty() {
        let _ = write!(head, "{PARTIAL_HEADER}: {}\r\n", c.partial.join(","));
    }
    head.push_str(&c.headers);
    // The route's rate-limit state, like a proxied response.
    head.push_str(&ex.response_headers);
    if !keep_alive {
        head.push_str("connection: close\r\n");
    } else if req.version == 0 {
        head.push_str("connection: keep-alive\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if req.method() != "HEAD" {
        out.extend_from_slice(&c.body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway(routes: &str) -> config::Gateway {
        let text = format!(
            "Gateway(listeners: [Listener(name: \"l\", bind: \"127.0.0.1:1\")],
              upstreams: {{ \"a\": Upstream(targets: [\"127.0.0.1:2\"]), \"b\": Upstream(targets: [\"127.0.0.1:3\"]) }},
              routes: [{routes}])"
        );
        let options = ron::Options::default().with_default_extension(
            ron::extensions::Extensions::IMPLICIT_SOME
                | ron::extensions::Extensions::UNWRAP_VARIANT_NEWTYPES,
        );
        options.from_str(&text).unwrap()
    }

    fn plan(parts: &str, merge: &str) -> Result<AggregatePlan, Vec<PlanProblem>> {
        let g = gateway(&format!(
            "Route(name: \"r\", match: Match(path: \"/d/{{id}}\"), aggregate: Aggregate(parts: [{parts}], merge: {merge}))"
        ));
        let a = g.routes[0].aggregate.clone().unwrap();
        let names: Vec<String> = g.upstreams.keys().cloned().collect();
        AggregatePlan::compile(
            &a,
            &["id".into()],
            &|n| names.iter().position(|k| k == n),
            false,
        )
    }

    #[test]
    fn dependencies_from_after_and_templates() {
        let p = plan(
            r#"Part(name: "x", upstream: "a", path: "/x/{id}"),
               Part(name: "y", upstream: "b", path: "/y/{x.0.id}"),
               Part(name: "z", upstream: "a", path: "/z", after: "y")"#,
            "UnderKeys",
        )
        .unwrap();
        assert_eq!(p.parts[0].deps, Vec::<usize>::new());
        assert_eq!(p.parts[1].deps, vec![0]);
        assert_eq!(p.parts[2].deps, vec![1]);
        assert_eq!(p.parts[1].upstream, 1);
    }

    #[test]
    fn cycles_and_unknown_references_are_reported() {
        let e = plan(
            r#"Part(name: "x", upstream: "a", path: "/x/{y.id}"),
               Part(name: "y", upstream: "a", path: "/y", after: "x"),
               Part(name: "w", upstream: "nope", path: "/w", after: "ghost"),
               Part(name: "v", upstream: "a", path: "/v/{ghost.id}/{claims.sub}")"#,
            "UnderKeys",
        )
        .unwrap_err();
        let msgs: Vec<String> = e
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        let has = |s: &str| msgs.iter().any(|m| m.contains(s));
        assert!(
            has("parts[0].path: dependency cycle: x → y → x"),
            "{msgs:?}"
        );
        assert!(
            has("parts[2].upstream: unknown upstream \"nope\""),
            "{msgs:?}"
        );
        assert!(has("parts[2].after: unknown part \"ghost\""), "{msgs:?}");
        assert!(
            has("parts[3].path: {ghost.id} refers to unknown part"),
            "{msgs:?}"
        );
        let self_ref = plan(
            r#"Part(name: "x", upstream: "a", path: "/x", after: "x")"#,
            "Merge",
        )
        .unwrap_err();
        assert!(self_ref[0].message.contains("x → x"));
    }

    #[test]
    fn claims_need_an_authenticated_route() {
        let e = plan(
            r#"Part(name: "x", upstream: "a", path: "/x/{claims.sub}")"#,
            "Merge",
        )
        .unwrap_err();
        assert!(e[0].message.contains("auth"));
    }

    #[test]
    fn errors_field_cannot_be_a_part_key() {
        let e = plan(
            r#"Part(name: "x", upstream: "a", path: "/x", group: "_errors")"#,
            "UnderKeys",
        )
        .unwrap_err();
        assert_eq!(e[0].field, "errors_field");
    }

    #[test]
    fn too_many_parts() {
        let parts: Vec<String> = (0..=MAX_PARTS)
            .map(|i| format!("Part(name: \"p{i}\", upstream: \"a\", path: \"/\")"))
            .collect();
        let e = plan(&parts.join(","), "UnderKeys").unwrap_err();
        assert!(e[0].message.contains("at most"));
    }

    #[test]
    fn compose_partial_and_required_failures() {
        let p = plan(
            r#"Part(name: "x", upstream: "a", path: "/x", allow: ["id"]),
               Part(name: "y", upstream: "b", path: "/y", required: false),
               Part(name: "z", upstream: "b", path: "/z", required: false, group: "x")"#,
            "UnderKeys",
        )
        .unwrap();
        let ok = |v: Value| Ok(Done::from(v));
        let c = compose(
            &p,
            vec![
                ok(serde_json::json!({"id": 1, "secret": 2})),
                Err(PartError::new("status 500")),
                ok(serde_json::json!({"more": true})),
            ],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&c.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"x": {"id": 1, "more": true}, "_errors": {"y": "status 500"}})
        );
        assert_eq!(c.partial, vec!["y"]);
        let e = compose(
            &p,
            vec![
                Err(PartError::timed_out("timeout after 5 ms")),
                ok(Value::Null),
                ok(Value::Null),
            ],
        )
        .unwrap_err();
        assert_eq!(e.status(), 504);
        assert!(e.message().contains("\"x\""));
    }
}
