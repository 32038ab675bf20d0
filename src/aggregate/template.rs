//! Templates of a composite route's parts: `/users/{claims.sub}`,
//! `/orders/{id}?page={query.page}`, `/users/{orders.0.customer_id}`.
//!
//! Parsed once when the config is compiled; expansion is a pure function of
//! the request's values and the results of earlier parts. `{{` and `}}` stand
//! for literal braces (useful in JSON body templates).

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
        /// Object keys or array indexes below the response's root.
        path: Vec<String>,
    },
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text, written as it is.
    Lit(String),
    /// A value, escaped for where the template is used.
    Var(Source),
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
}

/// Words a part may not be named: they start other kinds of references.
pub const RESERVED: [&str; 2] = ["query", "claims"];

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
            pieces.push(Piece::Var(parse_reference(reference, params, parts)?));
            rest = tail;
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Ok(Template { pieces })
    }

    /// Indexes of the parts this template reads from.
    pub fn parts_used(&self) -> impl Iterator<Item = usize> + '_ {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Var(Source::Part { part, .. }) => Some(*part),
            _ => None,
        })
    }

    /// True if the template reads a claim.
    pub fn uses_claims(&self) -> bool {
        self.pieces
            .iter()
            .any(|p| matches!(p, Piece::Var(Source::Claim(_))))
    }

    /// Appends the expansion to `out`; fails with a reason when a value is
    /// missing or cannot be inserted.
    pub fn expand(&self, ctx: &Context<'_>, esc: Escape, out: &mut String) -> Result<(), String> {
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => out.push_str(s),
                Piece::Var(src) => {
                    let value = lookup(ctx, src)?;
                    escape_into(&value, esc, out)?;
                }
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

fn parse_reference(r: &str, params: &[String], parts: &[&str]) -> Result<Source, String> {
    let valid = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
    };
    let mut segs = r.split('.');
    let head = segs.next().unwrap_or("");
    let rest: Vec<String> = segs.map(str::to_string).collect();
    if !valid(head) || rest.iter().any(|s| !valid(s)) {
        return Err(format!(
            "{{{r}}} is not a valid reference (names of letters, digits, '_' and '-' joined by '.')"
        ));
    }
    match (head, rest.as_slice()) {
        ("query", [name]) => Ok(Source::Query(name.clone())),
        ("claims", [name]) => Ok(Source::Claim(name.clone())),
        ("query" | "claims", _) => Err(format!("{{{r}}}: write {{{head}.NAME}}")),
        (name, []) => match params.iter().position(|p| p == name) {
            Some(i) => Ok(Source::Param(i)),
            None if parts.contains(&name) => Err(format!(
                "{{{name}}}: name a field of part {name:?}, e.g. {{{name}.id}}"
            )),
            None => Err(format!(
                "{{{name}}} is not a param of the route's path (params: {})",
                if params.is_empty() {
                    "none".to_string()
                } else {
                    params.join(", ")
                }
            )),
        },
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

fn lookup(ctx: &Context<'_>, src: &Source) -> Result<String, String> {
    match src {
        Source::Param(i) => {
            let raw = ctx
                .params
                .get(*i)
                .and_then(|r| ctx.path.get(r.clone()))
                .unwrap_or("");
            Ok(percent_decode(raw, false))
        }
        // A parameter the client left out is empty: optional paging and
        // filters are common, and the part's backend decides what empty means.
        Source::Query(name) => Ok(ctx
            .query
            .and_then(|q| query_value(q, name))
            .map(|v| percent_decode(v, true))
            .unwrap_or_default()),
        Source::Claim(name) => ctx
            .claims
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("the caller has no claim {name:?}")),
        Source::Part { part, path } => {
            let root = (ctx.part)(*part).ok_or("an earlier part has no result")?;
            let value = select(root, path).ok_or_else(|| format!("no field {}", path.join(".")))?;
            scalar_text(value).ok_or_else(|| {
                format!(
                    "field {} is not a string, number or boolean",
                    path.join(".")
                )
            })
        }
    }
}

/// The value at `path` below `root` (object keys, array indexes).
pub fn select<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(root, |v, seg| match v {
        Value::Object(m) => m.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
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
}
