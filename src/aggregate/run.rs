//! The executor: runs a composite's parts on the shard that received the
//! request, all polled from its one task, and writes the composed answer.

use super::compose::{compose, response};
use super::fetch::{self, Answer, PartError, PartRequest};
use super::items;
use super::plan::{AggregatePlan, PartPlan};
use super::template::{Context, Escape, Template};
use crate::compiled::Limits;
use crate::error::GatewayError;
use crate::http::body::{discard_body, CopyError, CopyLimits};
use crate::http::{Conn, RequestHead};
use crate::proxy::{Disposition, Exchange};
use crate::shard::{Shard, ShardConfig};
use serde_json::Value;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

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
    pub(super) fn skipped() -> Done {
        Done {
            skipped: true,
            ..Done::default()
        }
    }
}

/// A part's outcome: `None` while it runs.
pub(super) type Slot = Option<Result<Done, PartError>>;

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
pub(super) struct Request<'a> {
    pub(super) inputs: &'a Inputs<'a>,
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
    let compression = ex
        .seen
        .route
        .and_then(|id| cfg.compiled.routes.get(id))
        .and_then(|r| r.body.as_ref())
        .and_then(|b| b.compression.as_ref());
    if let Some(c) = compression {
        return Ok(compressed(c, &composite, req, client, ex, keep_alive).await);
    }
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
    let max = limits.max_body_bytes;
    let body =
        crate::http::body::read_request_body(client, req.framing, req.expect_continue, max, limits)
            .await?;
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
pub(super) fn context<'a>(
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
pub(super) fn slot_value(slots: &[Slot], d: usize) -> Option<&Value> {
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
pub(super) struct Call<'a> {
    shard: &'a Shard,
    cfg: &'a ShardConfig,
    pub(super) plan: &'a AggregatePlan,
    pub(super) part: &'a PartPlan,
    pub(super) index: usize,
    pub(super) ex: &'a Exchange<'a>,
    deadline: Instant,
    reason: &'a str,
}

impl Call<'_> {
    /// Sends one request of the part (built by [`build_request`]).
    pub(super) async fn send(
        &self,
        head_and_body: Vec<u8>,
        host_at: usize,
    ) -> Result<Answer, PartError> {
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
pub(super) fn build_with_path(
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

/// Writes the composite through the route's compression, negotiated with
/// the client (`Vary: Accept-Encoding` included).
async fn compressed(
    plan: &crate::compress::CompressPlan,
    composite: &super::compose::Composite,
    req: &RequestHead,
    client: &mut Conn,
    ex: &mut Exchange<'_>,
    keep_alive: bool,
) -> Disposition {
    // The head as composed, without the lines the writer adds itself.
    let added = std::mem::take(&mut ex.response_headers);
    let bytes = response(composite, req, ex, true);
    ex.response_headers = added;
    match crate::http::ResponseHead::parse(&bytes, crate::proxy::MAX_RESPONSE_HEAD, false) {
        Ok(crate::http::Parsed::Complete(head, _)) => {
            crate::compress::write_response(
                Some(plan),
                req,
                &head,
                &composite.body,
                client,
                ex,
                keep_alive,
            )
            .await
        }
        _ => Disposition::Close,
    }
}
