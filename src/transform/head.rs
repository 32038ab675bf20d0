//! Rebuilding a request or response head with edited fields: the edited
//! bytes are parsed again, so every later stage reads the edited head
//! exactly as it would read one received from the wire.

use super::HeaderPlan;
use crate::error::GatewayError;
use crate::http::{Parsed, RequestHead, ResponseHead};
use std::io::Write as _;

/// A direction's header operations with their values expanded for one
/// request (`None`: the template had no value; a `set` then only removes).
#[derive(Debug, Clone, Copy)]
pub struct HeaderEdit<'a> {
    /// The compiled operations.
    pub plan: &'a HeaderPlan,
    /// One value per [`HeaderPlan::set`] entry.
    pub set: &'a [Option<String>],
    /// One value per [`HeaderPlan::add`] entry.
    pub add: &'a [Option<String>],
}

impl HeaderEdit<'_> {
    /// True when the edit touches the field `name` (any case) as it comes in.
    fn drops(&self, name: &[u8]) -> bool {
        let is = |n: &String| name.eq_ignore_ascii_case(n.as_bytes());
        self.plan.remove.iter().any(is) || self.plan.set.iter().any(|(n, _)| is(n))
    }

    fn renamed(&self, name: &[u8]) -> Option<&str> {
        let to = self
            .plan
            .rename
            .iter()
            .find(|(from, _)| name.eq_ignore_ascii_case(from.as_bytes()))
            .map(|(_, to)| to.as_str())?;
        // A `set` of the new name replaces the renamed field too.
        let set = self
            .plan
            .set
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(to));
        Some(if set { "" } else { to })
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes `fields` with `edit` applied (remove → rename → set → add),
/// leaving out those `skip` names; `host` replaces the `Host` value.
fn write_fields<'f>(
    out: &mut Vec<u8>,
    fields: impl Iterator<Item = (&'f [u8], &'f [u8])>,
    edit: Option<&HeaderEdit<'_>>,
    skip: &dyn Fn(&[u8]) -> bool,
    host: Option<&[u8]>,
) {
    for (name, value) in fields {
        if skip(name) {
            continue;
        }
        let value = match host {
            Some(h) if name.eq_ignore_ascii_case(b"host") => h,
            _ => value,
        };
        match edit {
            Some(e) if e.drops(name) => {}
            Some(e) => match e.renamed(name) {
                Some("") => {}
                Some(to) => line(out, to.as_bytes(), value),
                None => line(out, name, value),
            },
            None => line(out, name, value),
        }
    }
    if let Some(e) = edit {
        let set = e.plan.set.iter().zip(e.set);
        let add = e.plan.add.iter().zip(e.add);
        for ((name, _), value) in set.chain(add) {
            if let Some(v) = value {
                line(out, name.as_bytes(), v.as_bytes());
            }
        }
    }
}

/// What changes in a request head besides its fields.
#[derive(Debug, Default)]
pub struct RequestChanges<'a> {
    /// Field operations.
    pub headers: Option<HeaderEdit<'a>>,
    /// The new query (`Some("")`: none).
    pub query: Option<String>,
    /// The body was replaced by one of this length (read, decoded or
    /// transformed): framing, `Expect` and, when `decoded`,
    /// `Content-Encoding` are written anew.
    pub body_len: Option<usize>,
    /// The body was inflated.
    pub decoded: bool,
    /// Ask the upstream for an unencoded response (the route transforms it).
    pub identity_response: bool,
}

/// The request head with `c` applied, parsed again.
pub fn request(req: &RequestHead, c: &RequestChanges<'_>) -> Result<RequestHead, GatewayError> {
    let mut out = Vec::with_capacity(req.raw().len() + 128);
    out.extend_from_slice(req.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(req.path().as_bytes());
    match (&c.query, req.query()) {
        (Some(q), _) if !q.is_empty() => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (Some(_), _) => {}
        (None, Some(q)) => {
            out.push(b'?');
            out.extend_from_slice(q.as_bytes());
        }
        (None, None) => {}
    }
    let _ = write!(out, " HTTP/1.{}\r\n", req.version);
    let replaced = c.body_len.is_some();
    let skip = |name: &[u8]| {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        (replaced && (is("content-length") || is("transfer-encoding") || is("expect")))
            || (c.decoded && is("content-encoding"))
            || (c.identity_response && is("accept-encoding"))
    };
    write_fields(
        &mut out,
        req.headers(),
        c.headers.as_ref(),
        &skip,
        req.host(),
    );
    if let Some(n) = c.body_len {
        let _ = write!(out, "content-length: {n}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    match RequestHead::parse(&out, out.len() + 1, usize::MAX) {
        Ok(Parsed::Complete(h, _)) => Ok(h),
        Ok(Parsed::Partial) | Err(_) => Err(GatewayError::BadRequest(
            "the request's transformed head is not valid",
        )),
    }
}

/// How a rebuilt response is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewFraming {
    /// As the upstream framed it.
    Keep,
    /// `Content-Length: n`.
    Length(usize),
    /// Chunked (re-framed for the client by the proxy as usual).
    Chunked,
}

/// The response head with field operations, extra fields and a new framing.
/// `drop` names fields removed first (e.g. a `Vary` being replaced).
pub fn response(
    resp: &ResponseHead,
    edit: Option<&HeaderEdit<'_>>,
    drop: &[&str],
    extra: &[(&str, String)],
    framing: NewFraming,
    head_request: bool,
) -> Option<ResponseHead> {
    let mut out = Vec::with_capacity(512);
    crate::proxy::status_line(resp, &mut out);
    let reframed = framing != NewFraming::Keep;
    let skip = |name: &[u8]| {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        (reframed && (is("content-length") || is("transfer-encoding")))
            || drop.iter().any(|d| is(d))
    };
    write_fields(&mut out, resp.headers(), edit, &skip, None);
    for (name, value) in extra {
        line(&mut out, name.as_bytes(), value.as_bytes());
    }
    match framing {
        NewFraming::Keep => {}
        NewFraming::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        NewFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    match ResponseHead::parse(&out, out.len() + 1, head_request) {
        Ok(Parsed::Complete(h, _)) => Some(h),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transform::{HeaderPlan, Text};

    fn req(raw: &str) -> RequestHead {
        match RequestHead::parse(raw.as_bytes(), 8192, 64) {
            Ok(Parsed::Complete(h, _)) => h,
            _ => panic!("bad request head"),
        }
    }

    #[test]
    fn request_fields_are_edited_in_order_and_the_body_reframed() {
        let r = req("POST /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Drop: 1\r\nX-Old: v\r\nX-Set: client\r\nX-Set: again\r\nExpect: 100-continue\r\nContent-Encoding: gzip\r\nAccept-Encoding: br\r\nTransfer-Encoding: chunked\r\n\r\n");
        let plan = HeaderPlan {
            remove: vec!["x-drop".into()],
            rename: vec![("x-old".into(), "X-New".into())],
            set: vec![("X-Set".into(), Text::default())],
            add: vec![("X-Add".into(), Text::default())],
        };
        let set = [Some("gw".to_string())];
        let add = [Some("one".to_string())];
        let c = RequestChanges {
            headers: Some(HeaderEdit {
                plan: &plan,
                set: &set,
                add: &add,
            }),
            query: Some("y=2".into()),
            body_len: Some(5),
            decoded: true,
            identity_response: true,
        };
        let h = request(&r, &c).unwrap();
        assert_eq!(h.target(), "/a?y=2");
        assert_eq!(h.framing, crate::http::Framing::Length(5));
        assert!(!h.expect_continue);
        let fields: Vec<(String, String)> = h
            .headers()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["Host", "X-New", "X-Set", "X-Add", "content-length"],
            "{fields:?}"
        );
        assert_eq!(h.header("x-set"), Some(&b"gw"[..]));
        assert_eq!(h.header("x-new"), Some(&b"v"[..]));
    }

    #[test]
    fn response_framing_is_replaced_and_fields_added() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\nVary: Origin\r\n\r\n";
        let resp = match ResponseHead::parse(raw.as_bytes(), 4096, false) {
            Ok(Parsed::Complete(h, _)) => h,
            _ => panic!("bad response head"),
        };
        let extra = [("vary", "Origin, Accept-Encoding".to_string())];
        let out = response(&resp, None, &["vary"], &extra, NewFraming::Chunked, false).unwrap();
        assert_eq!(out.framing, crate::http::Framing::Chunked);
        assert_eq!(out.header("content-length"), None);
        assert_eq!(out.header("vary"), Some(&b"Origin, Accept-Encoding"[..]));
        let kept = response(&resp, None, &[], &[], NewFraming::Keep, false).unwrap();
        assert_eq!(kept.framing, crate::http::Framing::Length(10));
        let head = response(&resp, None, &[], &[], NewFraming::Length(3), true).unwrap();
        assert_eq!(head.framing, crate::http::Framing::None);
    }
}
