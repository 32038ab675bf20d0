//! Path templates of `google.api.http` rules:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```
//!
//! `{sku}` is `{sku=*}`: one segment. `**` matches the rest of the path and
//! may only come last. Captured values are percent-decoded.

/// One compiled path segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**`: the rest of the path (zero or more segments).
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seg {
    kind: Kind,
    /// The variable this segment belongs to (index into `vars`).
    var: Option<usize>,
}

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segs: Vec<Seg>,
    /// Field paths of the variables, in order (`item.sku`).
    vars: Vec<String>,
    verb: Option<String>,
}

impl PathTemplate {
    /// Parses a template; the error says what is wrong with it.
    pub fn parse(source: &str) -> Result<PathTemplate, String> {
        let bad = |why: &str| format!("path template `{source}`: {why}");
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| bad("must start with `/`"))?;
        // Split at top-level slashes (slashes inside `{..}` belong to the
        // variable's pattern).
        let mut top: Vec<&str> = Vec::new();
        let mut depth = 0u32;
        let mut start = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => {
                    if depth > 0 {
                        return Err(bad("nested `{`"));
                    }
                    depth += 1;
                }
                '}' => {
                    depth = depth.checked_sub(1).ok_or_else(|| bad("unbalanced `}`"))?;
                }
                '/' if depth == 0 => {
                    top.push(rest.get(start..i).unwrap_or_default());
                    start = i + 1;
                }
                _ => {}
            }
        }
        if depth != 0 {
            return Err(bad("unclosed `{`"));
        }
        top.push(rest.get(start..).unwrap_or_default());

        // A verb: `:name` after the last top-level segment (outside braces).
        let mut verb = None;
        if let Some(last) = top.last_mut() {
            let close = last.rfind('}').map_or(0, |i| i + 1);
            if let Some(colon) = last.get(close..).and_then(|s| s.find(':')) {
                let at = close + colon;
                let v = last.get(at + 1..).unwrap_or_default();
                if v.is_empty() || v.contains(['{', '}', '*']) {
                    return Err(bad("bad verb"));
                }
                verb = Some(v.to_string());
                *last = last.get(..at).unwrap_or_default();
            }
        }

        let mut segs = Vec::new();
        let mut vars = Vec::new();
        for part in top {
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| bad("text after a variable in one segment"))?;
                let (field, pattern) = match inner.split_once('=') {
                    Some((f, p)) => (f, p),
                    None => (inner, "*"),
                };
                if field.is_empty()
                    || !field.split('.').all(|s| {
                        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    })
                {
                    return Err(bad(&format!("bad field path `{field}`")));
                }
                if vars.iter().any(|v| v == field) {
                    return Err(bad(&format!("field `{field}` bound twice")));
                }
                let index = vars.len();
                vars.push(field.to_string());
                for p in pattern.split('/') {
                    segs.push(Seg {
                        kind: literal_or_wild(p).map_err(|w| bad(&w))?,
                        var: Some(index),
                    });
                }
            } else {
                if part.contains(['{', '}', '=']) {
                    return Err(bad(&format!("bad segment `{part}`")));
                }
                segs.push(Seg {
                    kind: literal_or_wild(part).map_err(|w| bad(&w))?,
                    var: None,
                });
            }
        }
        let rest_at = segs.iter().position(|s| s.kind == Kind::Rest);
        if rest_at.is_some_and(|i| i + 1 != segs.len()) {
            return Err(bad("`**` may only be the last segment"));
        }
        Ok(PathTemplate {
            source: source.to_string(),
            segs,
            vars,
            verb,
        })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The field paths the template binds (`["item.sku"]`).
    pub fn variables(&self) -> &[String] {
        &self.vars
    }

    /// A sort key: templates with more literal segments match first, then
    /// those without `**`.
    pub fn specificity(&self) -> (usize, bool, usize) {
        let literals = self
            .segs
            .iter()
            .filter(|s| matches!(s.kind, Kind::Literal(_)))
            .count();
        let no_rest = !self.segs.iter().any(|s| s.kind == Kind::Rest);
        (literals, no_rest, self.segs.len())
    }

    /// Matches a request path (without its query): the bound fields and
    /// their percent-decoded values, or `None`.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut captured: Vec<Vec<&str>> = vec![Vec::new(); self.vars.len()];
        let mut i = 0;
        for seg in &self.segs {
            match &seg.kind {
                Kind::Rest => {
                    let tail = parts.get(i..).unwrap_or_default();
                    if let Some(v) = seg.var.and_then(|v| captured.get_mut(v)) {
                        v.extend_from_slice(tail);
                    }
                    i = parts.len();
                }
                kind => {
                    let part = *parts.get(i)?;
                    match kind {
                        Kind::Literal(l) if l == part => {}
                        Kind::One if !part.is_empty() => {}
                        _ => return None,
                    }
                    if let Some(v) = seg.var.and_then(|v| captured.get_mut(v)) {
                        v.push(part);
                    }
                    i += 1;
                }
            }
        }
        if i != parts.len() {
            return None;
        }
        let mut out = Vec::with_capacity(self.vars.len());
        for (field, parts) in self.vars.iter().zip(captured) {
            out.push((field.clone(), percent_decode(&parts.join("/"), false).ok()?));
        }
        Some(out)
    }
}

fn literal_or_wild(part: &str) -> Result<Kind, String> {
    match part {
        "*" => Ok(Kind::One),
        "**" => Ok(Kind::Rest),
        "" => Err("empty segment".into()),
        lit if lit.contains('*') => Err(format!("bad segment `{lit}`")),
        lit => Ok(Kind::Literal(lit.to_string())),
    }
}

/// Percent-decodes `s` (and `+` as a space when `plus_as_space`, for query
/// strings); bad escapes or invalid UTF-8 are an error.
pub fn percent_decode(s: &str, plus_as_space: bool) -> Result<String, String> {
    if !s.contains(['%', '+']) {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let v = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-escape in `{s}`"))?;
                out.push(v);
                i += 3;
            }
            b'+' if plus_as_space => {
                out.push(b' ');
                i += 1;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| format!("`{s}` is not UTF-8 once decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(t: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(t).unwrap().matches(path)
    }

    fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            p.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[test]
    fn simple_variable() {
        assert_eq!(
            m("/v1/inventory/{sku}", "/v1/inventory/A-1"),
            pairs(&[("sku", "A-1")])
        );
        assert_eq!(m("/v1/inventory/{sku}", "/v1/inventory/"), None);
        assert_eq!(m("/v1/inventory/{sku}", "/v1/inventory/a/b"), None);
        assert_eq!(m("/v1/inventory/{sku}", "/v1/inventor/a"), None);
        assert_eq!(m("/v1/inventory", "/v1/inventory"), pairs(&[]));
    }

    #[test]
    fn nested_field_and_decoding() {
        assert_eq!(
            m("/v1/inventory/{item.sku}", "/v1/inventory/A%2F1%20x"),
            pairs(&[("item.sku", "A/1 x")])
        );
        assert_eq!(m("/v1/inventory/{item.sku}", "/v1/inventory/%zz"), None);
    }

    #[test]
    fn patterns_wildcards_and_verbs() {
        assert_eq!(
            m("/v1/{name=shelves/*/books/*}", "/v1/shelves/3/books/9"),
            pairs(&[("name", "shelves/3/books/9")])
        );
        assert_eq!(
            m("/v1/{name=shelves/*/books/*}", "/v1/shelves/3/tapes/9"),
            None
        );
        assert_eq!(
            m("/v1/files/{path=**}", "/v1/files/a/b/c.txt"),
            pairs(&[("path", "a/b/c.txt")])
        );
        assert_eq!(m("/v1/*/x", "/v1/any/x"), pairs(&[]));
        assert_eq!(
            m("/v1/inventory/{sku}:reserve", "/v1/inventory/A1:reserve"),
            pairs(&[("sku", "A1")])
        );
        assert_eq!(m("/v1/inventory/{sku}:reserve", "/v1/inventory/A1"), None);
        assert_eq!(
            m("/v1/{shelf}/{book}", "/v1/s/b"),
            pairs(&[("shelf", "s"), ("book", "b")])
        );
    }

    #[test]
    fn bad_templates() {
        for t in [
            "v1/x",
            "/v1/{a",
            "/v1/a}",
            "/v1/{a{b}}",
            "/v1/**/x",
            "/v1/{}",
            "/v1/{a.}",
            "/v1/{a}/{a}",
            "/v1//x",
            "/v1/x:",
            "/v1/a*",
            "/v1/{a}b",
        ] {
            assert!(PathTemplate::parse(t).is_err(), "{t} parsed");
        }
    }

    #[test]
    fn specificity_prefers_literals() {
        let lit = PathTemplate::parse("/v1/inventory/search").unwrap();
        let var = PathTemplate::parse("/v1/inventory/{sku}").unwrap();
        assert!(lit.specificity() > var.specificity());
    }

    #[test]
    fn query_decoding() {
        assert_eq!(percent_decode("a+b%21", true).unwrap(), "a b!");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert!(percent_decode("%ff", false).is_err());
    }
}
