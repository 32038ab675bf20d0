//! The compiled form of a composite route: its parts, their dependencies
//! (checked for cycles), templates, conditions and `for_each` settings.
//! Every problem is reported with the field it is in.

use super::shape::Shape;
use super::template::{self, Escape, Source, Template};
use super::when::Condition;
use crate::config::{self, Collisions, MergeMode, OnItemError};
use std::time::Duration;

/// Most parts one composite route may have.
pub const MAX_PARTS: usize = 16;

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
