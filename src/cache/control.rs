//! `Cache-Control` directives, as a shared cache reads them (RFC 9111 §5.2,
//! RFC 5861 for the `stale-*` extensions). Pure.

/// The directives of one or more `Cache-Control` field values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache` (with or without field names).
    pub no_cache: bool,
    /// `private` (with or without field names).
    pub private: bool,
    /// `max-age`, seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, seconds.
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`, seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`, seconds.
    pub stale_if_error: Option<u64>,
    /// `must-revalidate` or `proxy-revalidate`: never served stale.
    pub must_revalidate: bool,
}

impl Directives {
    /// Reads every value of the field (a value not understood is ignored).
    pub fn parse<'a>(values: impl Iterator<Item = &'a [u8]>) -> Directives {
        let mut d = Directives::default();
        for value in values {
            let Ok(text) = std::str::from_utf8(value) else {
                continue;
            };
            for part in split_outside_quotes(text) {
                let part = part.trim();
                let (name, arg) = match part.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (part, None),
                };
                let secs = || arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => d.no_store = true,
                    "no-cache" => d.no_cache = true,
                    "private" => d.private = true,
                    "max-age" => d.max_age = secs().or(Some(0)),
                    "s-maxage" => d.s_maxage = secs().or(Some(0)),
                    "stale-while-revalidate" => d.stale_while_revalidate = secs(),
                    "stale-if-error" => d.stale_if_error = secs(),
                    "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                    _ => {}
                }
            }
        }
        d
    }

    /// Freshness lifetime given by the directives (`s-maxage` first), if any.
    pub fn lifetime(&self) -> Option<u64> {
        self.s_maxage.or(self.max_age)
    }
}

fn split_outside_quotes(text: &str) -> impl Iterator<Item = &str> {
    let mut quoted = false;
    text.split(move |c: char| {
        if c == '"' {
            quoted = !quoted;
        }
        c == ',' && !quoted
    })
}

/// True when a request's own `Cache-Control`/`Pragma` asks not to be
/// answered from a cache (`no-cache`, `no-store`, `max-age=0`).
pub fn client_refuses(cache_control: Option<&[u8]>, pragma: Option<&[u8]>) -> bool {
    let d = Directives::parse(cache_control.into_iter());
    let pragma_no_cache = pragma.is_some_and(|p| {
        p.split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
    });
    d.no_cache || d.no_store || d.max_age == Some(0) || (cache_control.is_none() && pragma_no_cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Directives {
        Directives::parse(std::iter::once(v.as_bytes()))
    }

    #[test]
    fn reads_the_directives() {
        let d =
            p("public, max-age=60, s-maxage=\"120\", stale-while-revalidate=5, stale-if-error=30");
        assert_eq!(d.lifetime(), Some(120));
        assert_eq!(d.stale_while_revalidate, Some(5));
        assert_eq!(d.stale_if_error, Some(30));
        assert!(p("No-Store").no_store);
        assert!(p("private=\"x, y\", max-age=3").private);
        assert_eq!(p("private=\"x, y\", max-age=3").max_age, Some(3));
        assert!(p("no-cache").no_cache);
        assert_eq!(p("max-age=abc").max_age, Some(0));
        assert_eq!(p("").lifetime(), None);
    }

    #[test]
    fn client_no_cache() {
        assert!(client_refuses(Some(b"no-cache"), None));
        assert!(client_refuses(Some(b"max-age=0"), None));
        assert!(client_refuses(None, Some(b"no-cache")));
        assert!(!client_refuses(Some(b"max-age=10"), None));
        assert!(!client_refuses(None, None));
    }
}
