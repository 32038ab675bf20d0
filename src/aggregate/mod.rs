//! Request aggregation: a composite route calls several upstreams and answers
//! with one JSON document (the Backend-for-Frontend pattern).
//!
//! - [`template`]: the parts' path/query/header/body templates (pure).
//! - [`shape`]: target, allow, deny, rename, and combining results (pure).
//! - [`fetch`]: one part's call over the shard's upstream pools.
//! - this file: the compiled [`AggregatePlan`] (parts in declaration order,
//!   their dependencies checked for cycles) and the executor, which runs on
//!   the shard that received the request. Every part is polled from one
//!   task: independent parts are in flight together, and a part that depends
//!   on others starts as soon as the last of them completes.
pub mod fetch;
pub mod shape;
pub mod template;

use crate::compiled::Limits;
use crate::config::{self, MergeMode};
use crate::error::GatewayError;
use crate::http::body::{discard_body, CopyError, CopyLimits};
use crate::http::{Conn, RequestHead};
use crate::proxy::{Disposition, Exchange};
use crate::shard::{Shard, ShardConfig};
use fetch::{PartError, PartRequest};
use serde_json::{Map, Value};
use shape::Shape;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};
use template::{Context, Escape, Template};

/// Most parts one composite route may have.
pub const MAX_PARTS: usize = 16;

/// The header naming the optional parts left out of a 200 answer.
pub const PARTIAL_HEADER: &str = "x-aggregate-partial";

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
        for (i, p) in a.parts.iter().enumerate() {
            let f = |name: &str| format!("parts[{i}].{name}");
            let here = Some(i);
            if !valid_name(&p.name) || template::RESERVED.contains(&p.name.as_str()) {
                problem(
                    here,
                    f("name"),
                    Some(&p.name),
                    "must be letters, digits, '_' or '-', and not `query` or `claims`".into(),
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
            if p.group.as_deref().is_some_and(|g| !valid_name(g)) {
                problem(
                    here,
                    f("group"),
                    p.group.as_deref(),
                    "must be letters, digits, '_' or '-'".into(),
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
            });
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
        })
    }
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

/// A part's outcome: `None` while it runs.
type Slot = Option<Result<Value, PartError>>;

/// The request-side values templates are expanded with.
pub struct Inputs<'a> {
    /// The matched request.
    pub req: &'a RequestHead,
    /// Byte ranges of the route's params in the path.
    pub params: &'a [Range<usize>],
    /// The caller's claims.
    pub claims: &'a [(String, String)],
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
    if !ex.body_consumed {
        if req.expect_continue {
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
    let results = run(shard, cfg, plan, &inputs, ex).await;
    if let Some(route) = ex.seen.route {
        count_parts(shard, route, &results);
    }
    let composite = compose(plan, results)?;
    let keep_alive = ex.keep_alive && !shard.shutdown.is_fired();
    let bytes = response(&composite, req, ex, keep_alive);
    ex.seen.status = 200;
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
fn count_parts(shard: &Shard, route: usize, results: &[Result<Value, PartError>]) {
    use crate::metrics::PartOutcome;
    let mut m = shard.metrics.borrow_mut();
    if !m.enabled {
        return;
    }
    for (i, r) in results.iter().enumerate() {
        let outcome = match r {
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

/// Runs every part and returns their outcomes in declaration order.
async fn run(
    shard: &Shard,
    cfg: &ShardConfig,
    plan: &AggregatePlan,
    inputs: &Inputs<'_>,
    ex: &Exchange<'_>,
) -> Vec<Result<Value, PartError>> {
    let n = plan.parts.len();
    let results: RefCell<Vec<Slot>> = RefCell::new(vec![None; n]);
    let deadline = Instant::now() + plan.timeout;
    let mut futs: Vec<Pin<Box<_>>> = (0..n)
        .map(|i| {
            Box::pin(run_part(
                shard, cfg, plan, i, inputs, ex, &results, deadline,
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

#[allow(clippy::too_many_arguments)]
async fn run_part(
    shard: &Shard,
    cfg: &ShardConfig,
    plan: &AggregatePlan,
    i: usize,
    inputs: &Inputs<'_>,
    ex: &Exchange<'_>,
    results: &RefCell<Vec<Slot>>,
    deadline: Instant,
) -> Result<Value, PartError> {
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
    if let Some(&d) = part
        .deps
        .iter()
        .find(|&&d| matches!(results.borrow().get(d), Some(Some(Err(_)))))
    {
        return Err(PartError::new(format!(
            "depends on {:?}, which failed",
            plan.parts.get(d).map_or("", |p| p.name.as_str())
        )));
    }
    let now = Instant::now();
    let (part_deadline, reason) = if now + part.timeout <= deadline {
        (now + part.timeout, part.timeout_reason.as_str())
    } else {
        (deadline, plan.timeout_reason.as_str())
    };
    if part_deadline <= now {
        return Err(PartError {
            reason: reason.to_string(),
            timeout: true,
        });
    }
    let (head_and_body, host_at) = {
        let slots = results.borrow();
        let lookup = |d: usize| {
            slots
                .get(d)
                .and_then(|s| s.as_ref())
                .and_then(|r| r.as_ref().ok())
        };
        let ctx = Context {
            path: inputs.req.path(),
            params: inputs.params,
            query: inputs.req.query(),
            claims: inputs.claims,
            part: &lookup,
        };
        build_request(part, i, &ctx, inputs.req, ex)?
    };
    let (Some(up), Some(cursor)) = (
        cfg.compiled.upstreams.get(part.upstream),
        cfg.cursors.get(part.upstream),
    ) else {
        return Err(PartError::new("unknown upstream"));
    };
    let request = PartRequest {
        up,
        cursor,
        head_and_body,
        host_at,
        head_method: part.method == "HEAD",
        retryable: part.body.is_none()
            && matches!(
                part.method.as_str(),
                "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS"
            ),
        max_bytes: plan.max_part_bytes,
        deadline: part_deadline,
        timeout_reason: reason,
        status: Default::default(),
    };
    let Some(trace) = &ex.trace else {
        return fetch::fetch(shard, request).await;
    };
    let started = Instant::now();
    let (result, target, status) = fetch::fetch_seen(shard, request).await;
    let error = result
        .as_ref()
        .err()
        .map(|e| (e.reason.as_str(), e.timeout));
    trace.part_call(i, part.upstream, target, status, started.elapsed(), error);
    result
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
    let fail = |e: String| PartError::new(format!("template: {e}"));
    let mut out = String::with_capacity(512);
    out.push_str(&part.method);
    out.push(' ');
    let target_start = out.len();
    part.path.expand(ctx, Escape::Url, &mut out).map_err(fail)?;
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
    /// Optional parts left out, in declaration order.
    pub partial: Vec<String>,
}

/// Shapes and combines the parts' outcomes (in declaration order). A failed
/// required part fails the whole: the first one that failed on its own
/// (not because a dependency failed) is named, else the first one.
pub fn compose(
    plan: &AggregatePlan,
    results: Vec<Result<Value, PartError>>,
) -> Result<Composite, GatewayError> {
    let merged = plan.merge == MergeMode::Merge;
    let mut root = Map::new();
    let mut errors = Map::new();
    let mut partial = Vec::new();
    let mut required_failure: Option<(&str, PartError)> = None;
    for (part, result) in plan.parts.iter().zip(results) {
        let shaped = result.and_then(|v| {
            if part.shape.is_identity() {
                Ok(v)
            } else {
                part.shape.apply(v).map_err(PartError::new)
            }
        });
        match shaped {
            Ok(v) => shape::place(&mut root, merged, part.grouped, &part.key, v),
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
    Ok(Composite { body, partial })
}

/// The complete HTTP response for a composite.
fn response(c: &Composite, req: &RequestHead, ex: &Exchange<'_>, keep_alive: bool) -> Vec<u8> {
    let request_id = ex.request_id;
    let mut head = String::with_capacity(192);
    let _ = write!(
        head,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {request_id}\r\n",
        c.body.len()
    );
    if !c.partial.is_empty() {
        let _ = write!(head, "{PARTIAL_HEADER}: {}\r\n", c.partial.join(","));
    }
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
        let ok = |v: Value| Ok(v);
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
                Err(PartError {
                    reason: "timeout after 5 ms".into(),
                    timeout: true,
                }),
                ok(Value::Null),
                ok(Value::Null),
            ],
        )
        .unwrap_err();
        assert_eq!(e.status(), 504);
        assert!(e.message().contains("\"x\""));
    }
}
