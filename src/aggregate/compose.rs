//! Composing the answer: `for_each` answers placed into their elements,
//! each part shaped and combined (under keys or merged, by the collision
//! rule), the errors field, the status and the forwarded headers.

use super::fetch::PartError;
use super::items;
use super::plan::AggregatePlan;
use super::run::Done;
use super::shape;
use super::PARTIAL_HEADER;
use crate::config::MergeMode;
use crate::error::GatewayError;
use crate::http::RequestHead;
use crate::proxy::Exchange;
use serde_json::{Map, Value};
use std::fmt::Write as _;

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
/// has it; else `private` if any is (`public` if all are), `no-cache` if
/// any says so, and the smallest `max-age` given. `None` when nothing is
/// left to say.
pub fn combine_cache_control<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let (mut no_store, mut private, mut no_cache, mut any) = (false, false, false, false);
    let mut all_public = true;
    let mut max_age: Option<u64> = None;
    for v in values {
        any = true;
        let mut public = false;
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
                None if d == "public" => public = true,
                _ => {}
            }
        }
        all_public &= public;
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
    } else if all_public {
        parts.push("public".to_string());
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
pub(super) fn response(
    c: &Composite,
    req: &RequestHead,
    ex: &Exchange<'_>,
    keep_alive: bool,
) -> Vec<u8> {
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
    use super::combine_cache_control as cc;

    #[test]
    fn cache_control_takes_the_most_restrictive() {
        assert_eq!(
            cc(["public, max-age=60", "max-age=30, private"]).as_deref(),
            Some("private, max-age=30")
        );
        assert_eq!(cc(["max-age=60", "no-store"]).as_deref(), Some("no-store"));
        assert_eq!(
            cc(["no-cache", "max-age=\"5\""]).as_deref(),
            Some("no-cache, max-age=5")
        );
        assert_eq!(
            cc(["public, max-age=60", "max-age=10, public"]).as_deref(),
            Some("public, max-age=10")
        );
        assert_eq!(
            cc(["public, max-age=60", "max-age=10"]).as_deref(),
            Some("max-age=10")
        );
        assert_eq!(cc(["must-revalidate"]), None);
        assert_eq!(cc(std::iter::empty()), None);
    }
}
