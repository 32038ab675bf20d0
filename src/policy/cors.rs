//! CORS, as the Fetch standard's CORS protocol expects a server to answer.
//!
//! - A *preflight* is an `OPTIONS` request carrying `Origin` and
//!   `Access-Control-Request-Method`. The gateway answers it itself (204,
//!   or 403 JSON when the origin, method or a header is not allowed),
//!   before authentication, rate limits and any upstream call: browsers
//!   send preflights without credentials.
//! - An *actual* request from an allowed origin gets
//!   `Access-Control-Allow-Origin` (the origin itself, or `*` when any
//!   origin is allowed without credentials), `-Allow-Credentials: true`
//!   when configured, and `-Expose-Headers`. A disallowed origin gets no
//!   CORS header at all. Every answer on a CORS route says `Vary: Origin`,
//!   since it depends on the `Origin` field.
//! - `*` is never sent together with credentials: a config that allows
//!   any origin (or method, or header) with `allow_credentials` is refused
//!   by `check` (Fetch treats `*` as a literal name on a credentialed
//!   request, which would silently not work).
//!
//! Everything is pure: [`CorsPlan::check_preflight`] and
//! [`CorsPlan::actual_headers`] take the request's field values and write
//! header lines.

use crate::config::Cors;

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OriginRule {
    /// Any origin.
    Any,
    /// This serialized origin (lower case).
    Exact(String),
    /// `scheme://` + one or more labels + this suffix (`.example.com[:port]`, lower case).
    Subdomains { scheme: String, suffix: String },
}

/// A route's compiled CORS policy.
#[derive(Debug, Clone)]
pub struct CorsPlan {
    origins: Vec<OriginRule>,
    any_method: bool,
    methods: Vec<String>,
    any_header: bool,
    /// Lower case.
    headers: Vec<String>,
    credentials: bool,
    /// Header lines of an allowed actual response after the origin line
    /// (`-Allow-Credentials`, `-Expose-Headers`, `Vary`).
    actual_tail: String,
    /// Header lines of a preflight answer after the origin and the
    /// allowed headers (`-Allow-Methods`, `-Allow-Credentials`, `-Max-Age`, `Vary`).
    preflight_tail: String,
}

/// Why a preflight is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The origin is not allowed.
    Origin,
    /// The requested method is not allowed.
    Method,
    /// A requested header is not allowed.
    Header,
}

impl Refusal {
    /// The 403 reason.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Origin => "CORS: the origin is not allowed",
            Refusal::Method => "CORS: the requested method is not allowed",
            Refusal::Header => "CORS: a requested header is not allowed",
        }
    }
}

/// Request headers a browser never lists in `Access-Control-Request-Headers`
/// with a value it would have to ask for, or that are always allowed.
const SAFELISTED: [&str; 3] = ["accept", "accept-language", "content-language"];

/// Parses one `allow_origins` entry; `Err` says why it is not an origin.
fn parse_origin(s: &str) -> Result<OriginRule, String> {
    if s == "*" {
        return Ok(OriginRule::Any);
    }
    let lower = s.to_ascii_lowercase();
    let Some((scheme, rest)) = lower.split_once("://") else {
        return Err(format!(
            "{s:?} is not an origin (scheme://host[:port], e.g. https://app.example.com)"
        ));
    };
    let scheme_ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.');
    let host_ok = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:*[]".contains(&b));
    if !scheme_ok || !host_ok {
        return Err(format!(
            "{s:?} is not an origin (scheme://host[:port], no path, no trailing '/')"
        ));
    }
    match rest.strip_prefix("*.") {
        Some(suffix) if wildcard_suffix_ok(suffix) => Ok(OriginRule::Subdomains {
            scheme: scheme.to_string(),
            suffix: format!(".{suffix}"),
        }),
        Some(_) => Err(format!(
            "{s:?}: a wildcard origin is scheme://*.domain with at least two labels after '*.' (e.g. https://*.example.com)"
        )),
        None if rest.contains('*') => Err(format!(
            "{s:?}: '*' is allowed only as the first label (https://*.example.com)"
        )),
        None => Ok(OriginRule::Exact(lower)),
    }
}

/// `example.com` or `example.com:8443`: two or more labels, an optional port.
fn wildcard_suffix_ok(suffix: &str) -> bool {
    let (host, port) = match suffix.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (suffix, None),
    };
    is_labels(host)
        && host.contains('.')
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// True for the characters of one or more DNS labels joined by dots (no empty label).
fn is_labels(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

impl OriginRule {
    fn matches(&self, origin: &str) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Exact(o) => origin.eq_ignore_ascii_case(o),
            OriginRule::Subdomains { scheme, suffix } => {
                let Some((s, rest)) = origin.split_once("://") else {
                    return false;
                };
                if !s.eq_ignore_ascii_case(scheme) || rest.len() <= suffix.len() {
                    return false;
                }
                let (labels, tail) = rest.split_at(rest.len() - suffix.len());
                tail.eq_ignore_ascii_case(suffix) && is_labels(labels)
            }
        }
    }
}

/// Problems in a `Cors` setting (field name, message).
pub fn check(c: &Cors) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for o in &c.allow_origins {
        if let Err(e) = parse_origin(o) {
            out.push(("allow_origins", e));
        }
    }
    if c.allow_credentials {
        for (field, list) in [
            ("allow_origins", &c.allow_origins),
            ("allow_methods", &c.allow_methods),
            ("allow_headers", &c.allow_headers),
            ("expose_headers", &c.expose_headers),
        ] {
            if list.iter().any(|v| v == "*") {
                out.push((
                    field,
                    "\"*\" cannot be used with allow_credentials: true (the Fetch standard does not accept a wildcard on credentialed requests); list the values".into(),
                ));
            }
        }
    }
    for (field, list) in [
        ("allow_methods", &c.allow_methods),
        ("allow_headers", &c.allow_headers),
        ("expose_headers", &c.expose_headers),
    ] {
        if let Some(bad) = list
            .iter()
            .find(|v| *v != "*" && (v.is_empty() || !v.bytes().all(crate::config::is_token_byte)))
        {
            out.push((field, format!("{bad:?} is not a method or header name")));
        }
    }
    out
}

impl CorsPlan {
    /// Compiles a checked `Cors` setting (see [`check`]).
    pub fn compile(c: &Cors) -> Result<CorsPlan, String> {
        if let Some((field, e)) = check(c).into_iter().next() {
            return Err(format!("cors.{field}: {e}"));
        }
        let origins = c
            .allow_origins
            .iter()
            .map(|o| parse_origin(o))
            .collect::<Result<Vec<_>, _>>()?;
        let any_method = c.allow_methods.iter().any(|m| m == "*");
        let any_header = c.allow_headers.iter().any(|h| h == "*");
        let mut actual_tail = String::new();
        let mut preflight_tail = String::new();
        if c.allow_credentials {
            actual_tail.push_str("access-control-allow-credentials: true\r\n");
        }
        if !c.expose_headers.is_empty() {
            actual_tail.push_str("access-control-expose-headers: ");
            actual_tail.push_str(&c.expose_headers.join(", "));
            actual_tail.push_str("\r\n");
        }
        actual_tail.push_str("vary: Origin\r\n");
        if !c.allow_methods.is_empty() {
            preflight_tail.push_str("access-control-allow-methods: ");
            preflight_tail.push_str(&c.allow_methods.join(", "));
            preflight_tail.push_str("\r\n");
        }
        if c.allow_credentials {
            preflight_tail.push_str("access-control-allow-credentials: true\r\n");
        }
        if let Some(s) = c.max_age_s {
            preflight_tail.push_str(&format!("access-control-max-age: {s}\r\n"));
        }
        preflight_tail.push_str(
            "vary: Origin, Access-Control-Request-Method, Access-Control-Request-Headers\r\n",
        );
        Ok(CorsPlan {
            origins,
            any_method,
            methods: c.allow_methods.clone(),
            any_header,
            headers: c
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            credentials: c.allow_credentials,
            actual_tail,
            preflight_tail,
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, or `None` when
    /// the origin is not allowed. `*` only without credentials and when
    /// any origin is allowed; otherwise the origin itself.
    pub fn allow_origin<'a>(&self, origin: &'a str) -> Option<&'a str> {
        // An origin is visible ASCII without spaces or commas: anything
        // else cannot be echoed into a header.
        if origin.is_empty() || !origin.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            return None;
        }
        let rule = self.origins.iter().find(|r| r.matches(origin))?;
        Some(if *rule == OriginRule::Any && !self.credentials {
            "*"
        } else {
            origin
        })
    }

    /// Appends the CORS header lines of an actual (non-preflight) response
    /// to `out`: the allow lines when `origin` is allowed, and `Vary: Origin`
    /// in every case.
    pub fn actual_headers(&self, origin: Option<&[u8]>, out: &mut String) {
        let allowed = origin
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| self.allow_origin(o));
        match allowed {
            Some(o) => {
                out.push_str("access-control-allow-origin: ");
                out.push_str(o);
                out.push_str("\r\n");
                out.push_str(&self.actual_tail);
            }
            None => out.push_str("vary: Origin\r\n"),
        }
    }

    /// Decides a preflight: `Ok` with the header lines of the 204 answer,
    /// or why it is refused. `request_headers` is the value of
    /// `Access-Control-Request-Headers`.
    pub fn check_preflight(
        &self,
        origin: &str,
        method: &str,
        request_headers: Option<&str>,
    ) -> Result<String, Refusal> {
        let allow_origin = self.allow_origin(origin).ok_or(Refusal::Origin)?;
        let method_ok = (self.any_method && !self.credentials)
            || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
            // CORS-safelisted methods need no permission (Fetch §4.8).
            || matches!(method, "GET" | "HEAD" | "POST");
        if !method_ok {
            return Err(Refusal::Method);
        }
        let asked = request_headers
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty());
        let mut allowed_headers = String::new();
        for h in asked {
            let lower = h.to_ascii_lowercase();
            let ok = SAFELISTED.contains(&lower.as_str())
                || self.headers.contains(&lower)
                // `*` never covers Authorization (Fetch §4.8).
                || (self.any_header && !self.credentials && lower != "authorization");
            if !ok || !h.bytes().all(crate::config::is_token_byte) {
                return Err(Refusal::Header);
            }
            if !allowed_headers.is_empty() {
                allowed_headers.push_str(", ");
            }
            allowed_headers.push_str(&lower);
        }
        let mut out = String::with_capacity(96 + self.preflight_tail.len());
        out.push_str("access-control-allow-origin: ");
        out.push_str(allow_origin);
        out.push_str("\r\n");
        if !allowed_headers.is_empty() {
            out.push_str("access-control-allow-headers: ");
            out.push_str(&allowed_headers);
            out.push_str("\r\n");
        }
        out.push_str(&self.preflight_tail);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["Authorization".into(), "Content-Type".into()],
            expose_headers: vec!["X-Request-Id".into()],
            allow_credentials: credentials,
            max_age_s: Some(600),
        }
    }

    fn plan(origins: &[&str], credentials: bool) -> CorsPlan {
        match CorsPlan::compile(&cors(origins, credentials)) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn exact_and_wildcard_subdomain_origins() {
        let p = plan(&["https://app.example.com", "https://*.example.org"], true);
        for ok in [
            "https://app.example.com",
            "https://APP.example.com",
            "https://a.example.org",
            "https://a.b.example.org",
        ] {
            assert_eq!(p.allow_origin(ok), Some(ok), "{ok}");
        }
        for bad in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://example.org",
            "https://.example.org",
            "https://example.org.evil.com",
            "https://evilexample.org",
            "https://a.example.org.evil.com",
            "https://a..example.org",
            "https://x@a.example.org",
            "http://a.example.org",
            "null",
            "",
        ] {
            assert_eq!(p.allow_origin(bad), None, "{bad}");
        }
    }

    #[test]
    fn any_origin_is_a_star_only_without_credentials() {
        let p = plan(&["*"], false);
        assert_eq!(p.allow_origin("https://x.test"), Some("*"));
        assert!(check(&cors(&["*"], true))
            .iter()
            .any(|(f, _)| *f == "allow_origins"));
        assert!(CorsPlan::compile(&cors(&["*"], true)).is_err());
    }

    #[test]
    fn bad_origins_are_reported() {
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://*.com*",
            "https://a.*.example.com",
            "https://*",
        ] {
            assert!(!check(&cors(&[bad], false)).is_empty(), "{bad}");
        }
    }

    #[test]
    fn preflight_checks_method_and_headers() {
        let p = plan(&["https://app.example.com"], true);
        let ok = p.check_preflight(
            "https://app.example.com",
            "PUT",
            Some("Content-Type, authorization"),
        );
        let Ok(lines) = ok else { panic!("{ok:?}") };
        assert!(lines.contains("access-control-allow-origin: https://app.example.com\r\n"));
        assert!(lines.contains("access-control-allow-headers: content-type, authorization\r\n"));
        assert!(lines.contains("access-control-allow-methods: GET, PUT\r\n"));
        assert!(lines.contains("access-control-allow-credentials: true\r\n"));
        assert!(lines.contains("access-control-max-age: 600\r\n"));
        assert!(lines.contains("vary: Origin"));
        assert_eq!(
            p.check_preflight("https://app.example.com", "DELETE", None),
            Err(Refusal::Method)
        );
        assert!(p
            .check_preflight("https://app.example.com", "POST", None)
            .is_ok());
        assert_eq!(
            p.check_preflight("https://app.example.com", "GET", Some("x-secret")),
            Err(Refusal::Header)
        );
        assert_eq!(
            p.check_preflight("https://evil.test", "GET", None),
            Err(Refusal::Origin)
        );
    }

    #[test]
    fn star_headers_never_cover_authorization() {
        let mut c = cors(&["*"], false);
        c.allow_headers = vec!["*".into()];
        let Ok(p) = CorsPlan::compile(&c) else {
            panic!("compiles")
        };
        assert!(p
            .check_preflight("https://a.test", "GET", Some("x-any"))
            .is_ok());
        assert_eq!(
            p.check_preflight("https://a.test", "GET", Some("authorization")),
            Err(Refusal::Header)
        );
    }

    #[test]
    fn actual_headers_vary_always_allow_only_for_allowed() {
        let p = plan(&["https://app.example.com"], true);
        let mut out = String::new();
        p.actual_headers(Some(b"https://app.example.com"), &mut out);
        assert_eq!(
            out,
            "access-control-allow-origin: https://app.example.com\r\naccess-control-allow-credentials: true\r\naccess-control-expose-headers: X-Request-Id\r\nvary: Origin\r\n"
        );
        let mut out = String::new();
        p.actual_headers(Some(b"https://evil.test"), &mut out);
        assert_eq!(out, "vary: Origin\r\n");
        let mut out = String::new();
        p.actual_headers(None, &mut out);
        assert_eq!(out, "vary: Origin\r\n");
    }
}
