//! Templates of a composite route's parts: `/users/{claims.sub}`,
//! `/orders/{id}?page={query.page}`, `/users/{orders.0.customer_id}`,
//! `/products?ids={order.items.*.product_id|join(",")}`, `{item.sku}`,
//! `{body.customer.id}`.
//!
//! Parsed once when the config is compiled; expansion is a pure function of
//! the request's values and the results of earlier parts. `{{` and `}}` stand
//! for literal braces (useful in JSON body templates).
//!
//! Paths below a part, the item or the body: object keys, array indexes
//! (`-1` is the last element) and `*` (every element of an array). A
//! reference with `*` yields every value found; they are written joined by
//! `,` unless a filter says otherwise: `|join("SEP")` joins them with `SEP`
//! (written as it is), `|first` takes the first.

use serde_json::Value;
use std::ops::Range;

/// Where a `{...}` reference takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The route's n-th path param: `{id}`.
    Param(usize),
    /// A parameter of the client's query string: `{query.page}`.
    Query(String),
    /// A claim of the established caller: `{claims.sub}`.
    Claim(String),
    /// A field of an earlier part's response: `{orders.0.customer_id}`.
    Part {
        /// Index of the part in the route's declaration order.
        part: usize,
        /// Object keys, array indexes or `*` below the response's root.
        path: Vec<String>,
    },
    /// A field of the current element of a `for_each` part: `{item.sku}`.
    Item(Vec<String>),
    /// A field of the client's JSON request body: `{body.customer.id}`.
    Body(Vec<String>),
}

/// What is done with the values of a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every value, joined by the separator.
    Join(String),
    /// The first value only.
    First,
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, written as it is.
    Lit(String),
    /// A value, escaped for where the template is used.
    Var(Source),
    /// Values passed through a filter.
    Filtered(Source, Filter),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    /// The pieces, in order.
    pub pieces: Vec<Piece>,
}

/// How values are escaped when they are inserted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// Percent-encoded except RFC 3986 unreserved characters; a value that
    /// is `.` or `..` has its dots encoded too (no dot segments).
    Url,
    /// As it is; a value with CR, LF or NUL is refused.
    Header,
    /// Escaped as the inside of a JSON string.
    Json,
}

/// Values a template is expanded with.
pub struct Context<'a> {
    /// The request path the params' ranges point into.
    pub path: &'a str,
    /// Byte ranges of the route's params in `path`.
    pub params: &'a [Range<usize>],
    /// The client's query string.
    pub query: Option<&'a str>,
    /// The caller's claims (name, value as text).
    pub claims: &'a [(String, String)],
    /// The response of a completed part, by index.
    pub part: &'a dyn Fn(usize) -> Option<&'a Value>,
    /// The current element of a `for_each` part.
    pub item: Option<&'a Value>,
    /// The client's JSON request body, when the route reads it.
    pub body: Option<&'a Value>,
}

/// Words a part may not be named: they start other kinds of references.
pub const RESERVED: [&str; 4] = ["query", "claims", "item", "body"];

/// The separator of a wildcard reference written without a filter.
const DEFAULT_SEPARATOR: &str = ",";

/// What a reference found.
#[derive(Debug, Clone, PartialEq)]
pub enum Found<'a> {
    /// Nothing: no such field, claim or parameter.
    Missing,
    /// Text from the request (param, query parameter, claim).
    Text(String),
    /// A JSON value (part result, item, body).
    Json(&'a Value),
}

impl Template {
    /// Parses `text`; `params` are the route's path params and `parts` the
    /// names of the route's parts.
    pub fn parse(text: &str, params: &[String], parts: &[&str]) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some((before, brace, after)) = split_at_brace(rest) {
            lit.push_str(before);
            if let Some(tail) = after.strip_prefix(brace) {
                lit.push(brace);
                rest = tail;
                continue;
            }
            if brace == '}' {
                return Err("unmatched '}' (write '}}' for a literal brace)".into());
            }
            let (reference, tail) = after
                .split_once('}')
                .ok_or("unclosed '{' (write '{{' for a literal brace)")?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(match reference.split_once('|') {
                None => Piece::Var(parse_reference(reference, params, parts)?),
                Some((r, filter)) => Piece::Filtered(
                    parse_reference(r, params, parts)?,
                    parse_filter(filter).map_err(|e| format!("{{{reference}}}: {e}"))?,
                ),
            });
            rest = tail;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// The references of the template, with their filters.
    pub fn sources(&self) -> impl Iterator<Item = (&Source, Option<&Filter>)> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Lit(_) => None,
            Piece::Var(s) => Some((s, None)),
            Piece::Filtered(s, f) => Some((s, Some(f))),
        })
    }

    /// Indexes of the parts this template reads from.
    pub fn parts_used(&self) -> impl Iterator<Item = usize> + '_ {
        self.sources().filter_map(|(s, _)| match s {
            Source::Part { part, .. } => Some(*part),
            _ => None,
        })
    }

    /// True if the template reads a claim.
    pub fn uses_claims(&self) -> bool {
        self.sources().any(|(s, _)| matches!(s, Source::Claim(_)))
    }

    /// True if the template reads the current `for_each` element.
    pub fn uses_item(&self) -> bool {
        self.sources().any(|(s, _)| matches!(s, Source::Item(_)))
    }

    /// True if the template reads the client's body.
    pub fn uses_body(&self) -> bool {
        self.sources().any(|(s, _)| matches!(s, Source::Body(_)))
    }

    /// Appends the expansion to `out`; fails with a reason when a value is
    /// missing or cannot be inserted.
    pub fn expand(&self, ctx: &Context<'_>, esc: Escape, out: &mut String) -> Result<(), String> {
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(src) if !has_wildcard(src) => {
                    let value = lookup(ctx, src)?;
                    escape_into(&value, esc, out)?;
                }
                Piece::Var(src) => {
                    let sep = Filter::Join(DEFAULT_SEPARATOR.into());
                    expand_many(ctx, src, &sep, esc, out)?;
                }
                Piece::Filtered(src, filter) => expand_many(ctx, src, filter, esc, out)?,
            }
        }
        Ok(())
    }

    /// The expansion as a new string.
    pub fn expand_to_string(&self, ctx: &Context<'_>, esc: Escape) -> Result<String, String> {
        let mut out = String::new();
        self.expand(ctx, esc, &mut out)?;
        Ok(out)
    }
}

fn has_wildcard(src: &Source) -> bool {
    match src {
        Source::Part { path, .. } | Source::Item(path) | Source::Body(path) => {
            path.iter().any(|s| s == "*")
        }
        _ => false,
    }
}

fn expand_many(
    ctx: &Context<'_>,
    src: &Source,
    filter: &Filter,
    esc: Escape,
    out: &mut String,
) -> Result<(), String> {
    let mut values = Vec::new();
    match (find_root(ctx, src)?, json_path(src)) {
        (Found::Json(root), Some(path)) => select_all(root, path, &mut values),
        (Found::Text(t), _) => {
            return match filter {
                Filter::First | Filter::Join(_) => escape_into(&t, esc, out),
            }
        }
        _ => {}
    }
    let describe = || json_path(src).map(|p| p.join(".")).unwrap_or_default();
    let text = |v| {
        scalar_str(v).ok_or_else(|| {
            format!(
                "a value of {} is not a string, number or boolean",
                describe()
            )
        })
    };
    match filter {
        Filter::First => {
            let v = values
                .first()
                .ok_or_else(|| format!("no value at {}", describe()))?;
            escape_into(&text(v)?, esc, out)
        }
        Filter::Join(sep) => {
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                escape_into(&text(v)?, esc, out)?;
            }
            Ok(())
        }
    }
}

fn parse_filter(f: &str) -> Result<Filter, String> {
    let f = f.trim();
    if f == "first" {
        return Ok(Filter::First);
    }
    let sep = f
        .strip_prefix("join(")
        .and_then(|r| r.strip_suffix(')'))
        .map(str::trim)
        .and_then(|q| q.strip_prefix('"'))
        .and_then(|q| q.strip_suffix('"'))
        .ok_or_else(|| format!("unknown filter {f:?} (filters: first, join(\"SEP\"))"))?;
    if sep.contains(['"', '\r', '\n', '\0']) {
        return Err("the join separator cannot hold '\"', CR, LF or NUL".into());
    }
    Ok(Filter::Join(sep.to_string()))
}

/// True for a path segment: a name, an index (`-1` counts from the end) or `*`.
fn valid_segment(s: &str) -> bool {
    s == "*"
        || (!s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)))
}

fn parse_reference(r: &str, params: &[String], parts: &[&str]) -> Result<Source, String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    };
    let mut segs = r.split('.');
    let head = segs.next().unwrap_or("");
    let rest: Vec<String> = segs.map(str::to_string).collect();
    if !valid(head) || rest.iter().any(|s| !valid_segment(s)) {
        return Err(format!(
            "{{{r}}} is not a valid reference (names, indexes or '*' joined by '.')"
        ));
    }
    match (head, rest.as_slice()) {
        ("query", [name]) | ("claims", [name]) if name == "*" => {
            Err(format!("{{{r}}}: write {{{head}.NAME}}"))
        }
        ("query", [name]) => Ok(Source::Query(name.clone())),
        ("claims", [name]) => Ok(Source::Claim(name.clone())),
        ("query" | "claims", _) => Err(format!("{{{r}}}: write {{{head}.NAME}}")),
        (name, []) if params.iter().any(|p| p == name) => Ok(Source::Param(
            params.iter().position(|p| p == name).unwrap_or_default(),
        )),
        ("item", path) => Ok(Source::Item(path.to_vec())),
        ("body", path) => Ok(Source::Body(path.to_vec())),
        (name, []) => {
            if parts.contains(&name) {
                Err(format!(
                    "{{{name}}}: name a field of part {name:?}, e.g. {{{name}.id}}"
                ))
            } else {
                Err(format!(
                    "{{{name}}} is not a param of the route's path (params: {})",
                    if params.is_empty() {
                        "none".to_string()
                    } else {
                        params.join(", ")
                    }
                ))
            }
        }
        (name, path) => match parts.iter().position(|p| *p == name) {
            Some(part) => Ok(Source::Part {
                part,
                path: path.to_vec(),
            }),
            None => Err(format!(
                "{{{r}}} refers to unknown part {name:?} (parts: {})",
                parts.join(", ")
            )),
        },
    }
}

/// The JSON path of a reference into a part, the item or the body.
fn json_path(src: &Source) -> Option<&[String]> {
    match src {
        Source::Part { path, .. } | Source::Item(path) | Source::Body(path) => Some(path),
        _ => None,
    }
}

/// The root a reference starts from: the request's text, or the JSON
/// document its path is looked up in.
fn find_root<'a>(ctx: &Context<'a>, src: &Source) -> Result<Found<'a>, String> {
    Ok(match src {
        Source::Param(i) => {
            let raw = ctx
                .params
                .get(*i)
                .and_then(|r| ctx.path.get(r.clone()))
                .unwrap_or("");
            Found::Text(percent_decode(raw, false))
        }
        // A parameter the client left out is empty: optional paging and
        // filters are common, and the part's backend decides what empty means.
        Source::Query(name) => Found::Text(
            ctx.query
                .and_then(|q| query_value(q, name))
                .map(|v| percent_decode(v, true))
                .unwrap_or_default(),
        ),
        Source::Claim(name) => ctx
            .claims
            .iter()
            .find(|(k, _)| k == name)
            .map_or(Found::Missing, |(_, v)| Found::Text(v.clone())),
        Source::Part { part, .. } => {
            Found::Json((ctx.part)(*part).ok_or("an earlier part has no result")?)
        }
        Source::Item(_) => Found::Json(ctx.item.ok_or("no current item")?),
        Source::Body(_) => Found::Json(ctx.body.ok_or("the request has no JSON body")?),
    })
}

/// What a reference without wildcards points at (for conditions).
pub fn find<'a>(ctx: &Context<'a>, src: &Source) -> Result<Found<'a>, String> {
    Ok(match (find_root(ctx, src)?, json_path(src)) {
        (Found::Json(root), Some(path)) => select(root, path).map_or(Found::Missing, Found::Json),
        (found, _) => found,
    })
}

fn lookup(ctx: &Context<'_>, src: &Source) -> Result<String, String> {
    match find(ctx, src)? {
        Found::Text(t) => Ok(t),
        Found::Missing => match src {
            Source::Claim(name) => Err(format!("the caller has no claim {name:?}")),
            _ => Err(format!(
                "no field {}",
                json_path(src).map(|p| p.join(".")).unwrap_or_default()
            )),
        },
        Found::Json(value) => scalar_text(value).ok_or_else(|| {
            format!(
                "field {} is not a string, number or boolean",
                json_path(src).map(|p| p.join(".")).unwrap_or_default()
            )
        }),
    }
}

/// The element of `a` at `seg`: an index, negative counting from the end.
fn index<'v>(a: &'v [Value], seg: &str) -> Option<&'v Value> {
    match seg.strip_prefix('-') {
        Some(back) => {
            let back = back.parse::<usize>().ok().filter(|b| *b > 0)?;
            a.get(a.len().checked_sub(back)?)
        }
        None => a.get(seg.parse::<usize>().ok()?),
    }
}

/// The position in an array of length `len` that `seg` names.
pub fn index_of(len: usize, seg: &str) -> Option<usize> {
    let i = match seg.strip_prefix('-') {
        Some(back) => len.checked_sub(back.parse::<usize>().ok().filter(|b| *b > 0)?)?,
        None => seg.parse::<usize>().ok()?,
    };
    (i < len).then_some(i)
}

/// The value at `path` below `root` (object keys, array indexes, `-1` for
/// the last element); `None` when missing or when the path has a `*`.
pub fn select<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => index(a, seg),
        _ => None,
    })
}

/// Every value at `path` below `root`, `*` standing for each element of an
/// array, in document order; missing fields are skipped.
pub fn select_all<'v>(root: &'v Value, path: &[String], out: &mut Vec<&'v Value>) {
    let Some((seg, rest)) = path.split_first() else {
        out.push(root);
        return;
    };
    match root {
        Value::Array(a) if seg == "*" => a.iter().for_each(|e| select_all(e, rest, out)),
        Value::Object(m) => {
            if let Some(v) = m.get(seg) {
                select_all(v, rest, out);
            }
        }
        Value::Array(a) => {
            if let Some(v) = index(a, seg) {
                select_all(v, rest, out);
            }
        }
        _ => {}
    }
}

/// The text of a string, number or boolean.
pub fn scalar_text(v: &Value) -> Option<String> {
    scalar_str(v).map(std::borrow::Cow::into_owned)
}

/// The text of a string, number or boolean, borrowed when it is a string.
pub fn scalar_str(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    use std::borrow::Cow;
    match v {
        Value::String(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(true) => Some(Cow::Borrowed("true")),
        Value::Bool(false) => Some(Cow::Borrowed("false")),
        _ => None,
    }
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

/// The text before the first `{` or `}` of `s`, that brace, and the text after it.
fn split_at_brace(s: &str) -> Option<(&str, char, &str)> {
    let (before, from) = s.split_at_checked(s.find(['{', '}'])?)?;
    let mut chars = from.chars();
    let brace = chars.next()?;
    Some((before, brace, chars.as_str()))
}

/// Decodes `%XX` (and `+` as a space in a query); invalid escapes stay as they are.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        match c {
            b'%' => match tail {
                [h, l, after @ ..] => match (hex(*h), hex(*l)) {
                    (Some(h), Some(l)) => {
                        // Two hex digits: at most 255.
                        out.push((h * 16 + l) as u8);
                        rest = after;
                    }
                    _ => out.push(b'%'),
                },
                _ => out.push(b'%'),
            },
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The upper-case hex digit of the low four bits of `n`.
#[allow(clippy::indexing_slicing)] // `n & 15` is below 16, the table's length
fn hex_digit(n: u8) -> char {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    char::from(HEX[usize::from(n & 15)])
}

/// Appends `value` to `out`, escaped as `esc` says.
pub fn escape_into(value: &str, esc: Escape, out: &mut String) -> Result<(), String> {
    match esc {
        Escape::Url => {
            let dots = value == "." || value == "..";
            for &b in value.as_bytes() {
                if (b.is_ascii_alphanumeric() || b"-_~".contains(&b) || b == b'.' && !dots)
                    && b != 0
                {
                    out.push(b as char);
                } else {
                    out.push('%');
                    out.push(hex_digit(b >> 4));
                    out.push(hex_digit(b));
                }
            }
        }
        Escape::Header => {
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err("a header value would contain CR, LF or NUL".into());
            }
            out.push_str(value);
        }
        Escape::Json => {
            let mut quoted = String::with_capacity(value.len() + 2);
            crate::error::json_string(&mut quoted, value);
            let inner = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"'));
            out.push_str(inner.unwrap_or_default());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx_with<'a>(
        path: &'a str,
        params: &'a [Range<usize>],
        query: Option<&'a str>,
        claims: &'a [(String, String)],
        part: &'a dyn Fn(usize) -> Option<&'a Value>,
    ) -> Context<'a> {
        Context {
            path,
            params,
            query,
            claims,
            part,
            item: None,
            body: None,
        }
    }

    #[test]
    fn parses_every_kind_of_reference() {
        let t = Template::parse(
            "/u/{id}?p={query.page}&s={claims.sub}&c={orders.0.customer_id}",
            &["id".into()],
            &["orders", "profile"],
        )
        .unwrap();
        assert_eq!(
            t.pieces,
            vec![
                Piece::Lit("/u/".into()),
                Piece::Var(Source::Param(0)),
                Piece::Lit("?p=".into()),
                Piece::Var(Source::Query("page".into())),
                Piece::Lit("&s=".into()),
                Piece::Var(Source::Claim("sub".into())),
                Piece::Lit("&c=".into()),
                Piece::Var(Source::Part {
                    part: 0,
                    path: vec!["0".into(), "customer_id".into()]
                }),
            ]
        );
        assert_eq!(t.parts_used().collect::<Vec<_>>(), vec![0]);
        assert!(t.uses_claims());
    }

    #[test]
    fn refuses_bad_references() {
        let p = |t: &str| Template::parse(t, &["id".into()], &["orders"]);
        assert!(p("/x/{nope}").unwrap_err().contains("not a param"));
        assert!(p("/x/{users.id}").unwrap_err().contains("unknown part"));
        assert!(p("/x/{orders}").unwrap_err().contains("name a field"));
        assert!(p("/x/{query}").unwrap_err().contains("query.NAME"));
        assert!(p("/x/{id").unwrap_err().contains("unclosed"));
        assert!(p("/x/id}").unwrap_err().contains("unmatched"));
        assert!(p("/x/{a..b}").unwrap_err().contains("not a valid"));
        assert!(p("/x/{}").is_err());
    }

    #[test]
    fn doubled_braces_are_literal() {
        let t = Template::parse("{{\"user\": \"{claims.sub}\"}}", &[], &[]).unwrap();
        let claims = vec![("sub".to_string(), "a\"b".to_string())];
        let none = |_| None;
        let ctx = ctx_with("/", &[], None, &claims, &none);
        assert_eq!(
            t.expand_to_string(&ctx, Escape::Json).unwrap(),
            "{\"user\": \"a\\\"b\"}"
        );
    }

    #[test]
    fn expands_and_percent_encodes() {
        let t = Template::parse(
            "/users/{id}/x?q={query.q}&sub={claims.sub}&c={orders.0.customer_id}&n={orders.0.n}",
            &["id".into()],
            &["orders"],
        )
        .unwrap();
        let orders = json!([{"customer_id": "a/b c", "n": 7}]);
        let part = |i: usize| (i == 0).then_some(&orders);
        let claims = vec![("sub".to_string(), "ü&=?".to_string())];
        let path = "/api/u%2042";
        let params = std::iter::once(5..11).collect::<Vec<_>>();
        let ctx = ctx_with(path, &params, Some("x=1&q=a+b%2Fc"), &claims, &part);
        assert_eq!(
            t.expand_to_string(&ctx, Escape::Url).unwrap(),
            "/users/u%2042/x?q=a%20b%2Fc&sub=%C3%BC%26%3D%3F&c=a%2Fb%20c&n=7"
        );
    }

    #[test]
    fn dot_segments_cannot_be_injected() {
        let t = Template::parse("/users/{claims.sub}", &[], &[]).unwrap();
        for (sub, want) in [
            ("..", "/users/%2E%2E"),
            (".", "/users/%2E"),
            ("a.b", "/users/a.b"),
        ] {
            let claims = vec![("sub".to_string(), sub.to_string())];
            let none = |_| None;
            let ctx = ctx_with("/", &[], None, &claims, &none);
            assert_eq!(t.expand_to_string(&ctx, Escape::Url).unwrap(), want);
        }
    }

    #[test]
    fn missing_values_fail_with_a_reason() {
        let t = Template::parse("/u/{orders.3.id}", &[], &["orders"]).unwrap();
        let orders = json!([{"id": 1}]);
        let part = |_| Some(&orders);
        let ctx = ctx_with("/", &[], None, &[], &part);
        assert_eq!(
            t.expand_to_string(&ctx, Escape::Url).unwrap_err(),
            "no field 3.id"
        );
        let t = Template::parse("/u/{orders.0}", &[], &["orders"]).unwrap();
        assert!(t
            .expand_to_string(&ctx, Escape::Url)
            .unwrap_err()
            .contains("not a string"));
        let t = Template::parse("/u/{claims.sub}", &[], &[]).unwrap();
        assert!(t
            .expand_to_string(&ctx, Escape::Url)
            .unwrap_err()
            .contains("no claim"));
        let t = Template::parse("/u?p={query.page}", &[], &[]).unwrap();
        assert_eq!(t.expand_to_string(&ctx, Escape::Url).unwrap(), "/u?p=");
    }

    #[test]
    fn header_values_cannot_split_the_head() {
        let t = Template::parse("{claims.sub}", &[], &[]).unwrap();
        let claims = vec![("sub".to_string(), "a\r\nx: y".to_string())];
        let none = |_| None;
        let ctx = ctx_with("/", &[], None, &claims, &none);
        assert!(t.expand_to_string(&ctx, Escape::Header).is_err());
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c%zz%4", true), "a b c%zz%4");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%", false), "%");
    }

    #[test]
    fn wildcards_filters_and_negative_indexes() {
        let parts = ["orders"];
        let orders =
            json!({"items": [{"pid": "a b", "n": 1}, {"n": 2}, {"pid": 7}], "list": [1, 2, 3]});
        let part = |i: usize| (i == 0).then_some(&orders);
        let ctx = ctx_with("/", &[], None, &[], &part);
        let x = |t: &str, esc| {
            Template::parse(t, &[], &parts)
                .unwrap()
                .expand_to_string(&ctx, esc)
        };
        assert_eq!(
            x("/p?ids={orders.items.*.pid}", Escape::Url).unwrap(),
            "/p?ids=a%20b,7"
        );
        assert_eq!(
            x("/p?ids={orders.items.*.pid|join(\";\")}", Escape::Url).unwrap(),
            "/p?ids=a%20b;7"
        );
        assert_eq!(x("{orders.items.*.n|first}", Escape::Url).unwrap(), "1");
        assert_eq!(x("{orders.list.-1}", Escape::Url).unwrap(), "3");
        assert_eq!(x("{orders.items.-3.n}", Escape::Url).unwrap(), "1");
        assert!(x("{orders.items.-4.n}", Escape::Url)
            .unwrap_err()
            .contains("no field"));
        assert_eq!(
            x("{orders.list.*|join(\", \")}", Escape::Json).unwrap(),
            "1, 2, 3"
        );
        assert_eq!(x("[{orders.nothing.*}]", Escape::Url).unwrap(), "[]");
        assert!(x("{orders.nothing.*|first}", Escape::Url).is_err());
        assert!(x("{orders.items.*}", Escape::Url)
            .unwrap_err()
            .contains("not a string"));
        let p = |t: &str| Template::parse(t, &[], &parts);
        assert!(p("{orders.items.*.pid|last}")
            .unwrap_err()
            .contains("unknown filter"));
        assert!(p("{orders.items.*.pid|join(,)}").is_err());
        assert!(p("{query.*}").is_err());
    }

    #[test]
    fn item_and_body_references() {
        let t = Template::parse(
            "{{\"o\": \"{item.id}\", \"c\": \"{body.customer.id}\"}}",
            &[],
            &[],
        )
        .unwrap();
        assert!(t.uses_item() && t.uses_body());
        let item = json!({"id": 5});
        let body = json!({"customer": {"id": "c\"1"}});
        let none = |_| None;
        let mut ctx = ctx_with("/", &[], None, &[], &none);
        ctx.item = Some(&item);
        ctx.body = Some(&body);
        assert_eq!(
            t.expand_to_string(&ctx, Escape::Json).unwrap(),
            "{\"o\": \"5\", \"c\": \"c\\\"1\"}"
        );
        ctx.body = None;
        assert!(t
            .expand_to_string(&ctx, Escape::Json)
            .unwrap_err()
            .contains("no JSON body"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A wildcard join writes every element's value, escaped, in
            /// order, and decodes back to the values; `|first` is the first
            /// and `-1` the last.
            #[test]
            fn wildcard_join_is_every_value_in_order(
                values in proptest::collection::vec("[a-zA-Z0-9 ,;/%.-]{0,8}", 1..20),
            ) {
                let items: Vec<Value> = values.iter().map(|v| json!({"v": v})).collect();
                let doc = json!({"items": items});
                let part = |i: usize| (i == 0).then_some(&doc);
                let ctx = ctx_with("/", &[], None, &[], &part);
                let parts = ["o"];
                let x = |t: &str| Template::parse(t, &[], &parts).unwrap().expand_to_string(&ctx, Escape::Url).unwrap();
                let joined = x("{o.items.*.v|join(\"|\")}");
                let back: Vec<String> = joined.split('|').map(|p| percent_decode(p, false)).collect();
                prop_assert_eq!(&back, &values);
                prop_assert_eq!(percent_decode(&x("{o.items.*.v|first}"), false), values[0].clone());
                prop_assert_eq!(percent_decode(&x("{o.items.-1.v}"), false), values[values.len() - 1].clone());
            }
        }
    }
}
