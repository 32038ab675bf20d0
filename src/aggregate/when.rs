//! Conditions of conditional parts (`when`), parsed when the config is
//! loaded and evaluated once the parts they read have completed.
//!
//! Grammar (spaces around the operator are optional):
//!
//! ```text
//! condition := "!" reference            the value is missing or null
//!            | reference                the value is present and not null
//!            | reference "==" literal   its text equals the literal
//!            | reference "!=" literal   the negation of ==
//! reference := as in templates, without braces: claims.role, query.v,
//!              a route param, PART.field.0.x, body.field
//! literal   := a bare word (letters, digits, '_', '-', '.', ':', '@', '/')
//!            | "a quoted string"        (no escapes)
//! ```
//!
//! A string, number or boolean compares by its text (`true`, `42`, `2.5`);
//! the literal `null` equals a missing or null value. References into parts
//! may not use `*`.

use super::template::{self, Context, Found, Source, Template};
use serde_json::Value;

/// A parsed condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// What is tested.
    pub source: Source,
    /// How.
    pub test: Test,
}

/// The test applied to the referenced value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Test {
    /// Present and not null.
    Present,
    /// Missing or null.
    Absent,
    /// Its text equals the literal.
    Equals(String),
    /// Its text differs from the literal.
    Differs(String),
}

/// A problem in a condition: 1-based character position and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionError {
    /// Character position in the condition text (1 = first character).
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConditionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at character {}: {}", self.position, self.message)
    }
}

fn at(position: usize, message: impl Into<String>) -> ConditionError {
    ConditionError {
        position,
        message: message.into(),
    }
}

fn reference_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.*".contains(&b)
}

fn literal_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_-.:@/+".contains(&b)
}

impl Condition {
    /// Parses `text`; `params` are the route's path params and `parts` the
    /// names of its parts.
    pub fn parse(
        text: &str,
        params: &[String],
        parts: &[&str],
    ) -> Result<Condition, ConditionError> {
        let bytes = text.as_bytes();
        let len = bytes.len();
        let skip_spaces = |mut i: usize| {
            while bytes.get(i).is_some_and(|b| *b == b' ') {
                i += 1;
            }
            i
        };
        let mut i = skip_spaces(0);
        let negated = bytes.get(i) == Some(&b'!');
        if negated {
            i = skip_spaces(i + 1);
        }
        let start = i;
        while bytes.get(i).copied().is_some_and(reference_byte) {
            i += 1;
        }
        let reference = text.get(start..i).unwrap_or_default();
        if reference.is_empty() {
            return Err(at(
                start + 1,
                "expected a reference such as claims.role or order.coupon",
            ));
        }
        let source = parse_source(reference, params, parts).map_err(|e| at(start + 1, e))?;
        i = skip_spaces(i);
        if i == len {
            let test = if negated { Test::Absent } else { Test::Present };
            return Ok(Condition { source, test });
        }
        let op_at = i;
        let rest = text.get(i..).unwrap_or_default();
        let equals = if rest.starts_with("==") {
            true
        } else if rest.starts_with("!=") {
            false
        } else {
            return Err(at(i + 1, "expected `==`, `!=` or the end"));
        };
        if negated {
            return Err(at(
                op_at + 1,
                "`!` tests absence and takes no comparison (write `!=`)",
            ));
        }
        i = skip_spaces(i + 2);
        let lit_start = i;
        let literal = if bytes.get(i) == Some(&b'"') {
            let inner_start = i + 1;
            let close = text
                .get(inner_start..)
                .and_then(|t| t.find('"'))
                .ok_or_else(|| at(lit_start + 1, "unclosed '\"'"))?;
            i = inner_start + close + 1;
            text.get(inner_start..inner_start + close)
                .unwrap_or_default()
        } else {
            while bytes.get(i).copied().is_some_and(literal_byte) {
                i += 1;
            }
            text.get(lit_start..i).unwrap_or_default()
        };
        if literal.is_empty() && bytes.get(lit_start) != Some(&b'"') {
            return Err(at(lit_start + 1, "expected a value after the operator"));
        }
        i = skip_spaces(i);
        if i != len {
            return Err(at(i + 1, "unexpected text after the value"));
        }
        let literal = literal.to_string();
        let test = if equals {
            Test::Equals(literal)
        } else {
            Test::Differs(literal)
        };
        Ok(Condition { source, test })
    }

    /// The part this condition reads, if any.
    pub fn part_used(&self) -> Option<usize> {
        match self.source {
            Source::Part { part, .. } => Some(part),
            _ => None,
        }
    }

    /// Evaluates the condition. A reference to a part without a result (or
    /// a missing body) counts as a missing value.
    pub fn holds(&self, ctx: &Context<'_>) -> bool {
        let found = template::find(ctx, &self.source).unwrap_or(Found::Missing);
        let text = match &found {
            Found::Missing | Found::Json(Value::Null) => None,
            Found::Text(t) => Some(t.clone()),
            Found::Json(v) => Some(template::scalar_text(v).unwrap_or_default()),
        };
        match &self.test {
            Test::Present => text.is_some(),
            Test::Absent => text.is_none(),
            Test::Equals(lit) => equals(text.as_deref(), lit),
            Test::Differs(lit) => !equals(text.as_deref(), lit),
        }
    }
}

fn equals(text: Option<&str>, literal: &str) -> bool {
    match text {
        None => literal == "null",
        Some(t) => t == literal,
    }
}

fn parse_source(reference: &str, params: &[String], parts: &[&str]) -> Result<Source, String> {
    let t = Template::parse(&format!("{{{reference}}}"), params, parts)?;
    let source = match t.pieces.first() {
        Some(template::Piece::Var(s)) if t.pieces.len() == 1 => s.clone(),
        _ => return Err(format!("{reference:?} is not one reference")),
    };
    match &source {
        Source::Part { path, .. } | Source::Item(path) | Source::Body(path)
            if path.iter().any(|s| s == "*") =>
        {
            Err("a condition cannot use `*`".into())
        }
        Source::Item(_) => Err("a condition cannot read `item`".into()),
        _ => Ok(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(t: &str) -> Result<Condition, ConditionError> {
        Condition::parse(t, &["id".into()], &["order", "user"])
    }

    #[test]
    fn parses_the_forms() {
        let c = parse("claims.role == admin").unwrap();
        assert_eq!(c.source, Source::Claim("role".into()));
        assert_eq!(c.test, Test::Equals("admin".into()));
        let c = parse("order.coupon").unwrap();
        assert_eq!(c.test, Test::Present);
        assert_eq!(c.part_used(), Some(0));
        assert_eq!(parse(" ! order.coupon ").unwrap().test, Test::Absent);
        assert_eq!(
            parse("order.status!=\"on hold\"").unwrap().test,
            Test::Differs("on hold".into())
        );
        assert_eq!(parse("id == 7").unwrap().source, Source::Param(0));
    }

    #[test]
    fn errors_carry_positions() {
        let e = parse("claims.role = admin").unwrap_err();
        assert_eq!(e.position, 13, "{e}");
        let e = parse("ghost.x == 1").unwrap_err();
        assert_eq!(e.position, 1);
        assert!(e.message.contains("unknown part"), "{e}");
        let e = parse("order.x == ").unwrap_err();
        assert_eq!(e.position, 12, "{e}");
        let e = parse("order.x == a b").unwrap_err();
        assert_eq!(e.position, 14, "{e}");
        assert!(parse("").is_err());
        assert!(parse("order.items.*.id").is_err());
        assert!(parse("!order.x == 1").is_err());
        assert!(parse("order.x == \"open").is_err());
    }

    #[test]
    fn evaluates() {
        let order = json!({"coupon": "X", "none": null, "n": 2, "ok": true});
        let part = |i: usize| (i == 0).then_some(&order);
        let claims = vec![("role".to_string(), "admin".to_string())];
        let ctx = Context {
            path: "/",
            params: &[],
            query: Some("v=2"),
            claims: &claims,
            part: &part,
            item: None,
            body: None,
        };
        let holds = |t: &str| parse(t).unwrap().holds(&ctx);
        assert!(holds("claims.role == admin"));
        assert!(!holds("claims.role != admin"));
        assert!(!holds("claims.tier == gold"));
        assert!(holds("claims.tier == null"));
        assert!(holds("order.coupon"));
        assert!(!holds("order.none"));
        assert!(holds("!order.none"));
        assert!(holds("!order.missing"));
        assert!(holds("order.n == 2"));
        assert!(holds("order.ok == true"));
        assert!(holds("query.v == 2"));
        assert!(!holds("user.x"), "a part without a result is missing");
    }
}
