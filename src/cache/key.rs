//! Cache keys. A key reads `[METHOD ]host path[?query][\x1fname=value...][\x1eidentity]`;
//! the part from the path to the query (the "resource") is what purges
//! match. Pure.

use crate::config::CacheQuery;
use crate::http::RequestHead;

/// Separates the key's header values.
const SEP_HEADER: char = '\x1f';
/// Separates the caller's identity.
const SEP_IDENTITY: char = '\x1e';
/// Separates the values of the fields a stored answer varies on.
const SEP_VARY: char = '\x1d';

/// The compiled key settings of a route.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    /// Include the method.
    pub method: bool,
    /// Include the host.
    pub host: bool,
    /// Which query parameters.
    pub query: CacheQuery,
    /// Lower-case request header names.
    pub headers: Vec<String>,
}

/// The path and the key's share of the query, parameters sorted.
pub fn resource(plan: &KeyPlan, path: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(path.len() + query.map_or(0, str::len) + 1);
    out.push_str(path);
    let Some(q) = query.filter(|q| !q.is_empty()) else {
        return out;
    };
    let mut params: Vec<&str> = match &plan.query {
        CacheQuery::Ignore => return out,
        CacheQuery::All => q.split('&').filter(|p| !p.is_empty()).collect(),
        CacheQuery::Only(names) => q
            .split('&')
            .filter(|p| {
                let name = p.split_once('=').map_or(*p, |(n, _)| n);
                names.iter().any(|n| n == name)
            })
            .collect(),
    };
    if params.is_empty() {
        return out;
    }
    params.sort_unstable();
    out.push('?');
    for (i, p) in params.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(p);
    }
    out
}

/// A request's key (without the `Vary` part) and its resource.
pub fn primary(plan: &KeyPlan, req: &RequestHead, identity: Option<&str>) -> (String, String) {
    let res = resource(plan, req.path(), req.query());
    let mut key = String::with_capacity(res.len() + 64);
    if plan.method {
        key.push_str(req.method());
        key.push(' ');
    }
    if plan.host {
        let host = String::from_utf8_lossy(req.host().unwrap_or_default());
        if host.bytes().any(|b| b.is_ascii_uppercase()) {
            key.push_str(&host.to_ascii_lowercase());
        } else {
            key.push_str(&host);
        }
    }
    key.push_str(&res);
    for name in &plan.headers {
        key.push(SEP_HEADER);
        key.push_str(name);
        key.push('=');
        if let Some(v) = req.header(name) {
            key.push_str(&String::from_utf8_lossy(v));
        }
    }
    if let Some(id) = identity {
        key.push(SEP_IDENTITY);
        key.push_str(id);
    }
    (key, res)
}

/// The key of the variant of `primary` that a request selects by the
/// fields the stored answer varies on.
pub fn variant(primary: &str, names: &[String], req: &RequestHead) -> String {
    let mut key = String::with_capacity(primary.len() + 32);
    key.push_str(primary);
    key.push(SEP_VARY);
    for name in names {
        key.push_str(name);
        key.push('=');
        if let Some(v) = req.header(name) {
            key.push_str(&String::from_utf8_lossy(v));
        }
        key.push(SEP_HEADER);
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(query: CacheQuery) -> KeyPlan {
        KeyPlan {
            method: false,
            host: true,
            query,
            headers: Vec::new(),
        }
    }

    #[test]
    fn the_query_is_sorted_and_filtered() {
        let all = plan(CacheQuery::All);
        assert_eq!(resource(&all, "/p", Some("b=2&a=1")), "/p?a=1&b=2");
        assert_eq!(resource(&all, "/p", Some("")), "/p");
        let only = plan(CacheQuery::Only(vec!["page".into(), "size".into()]));
        assert_eq!(
            resource(&only, "/p", Some("utm=x&size=3&page=2")),
            "/p?page=2&size=3"
        );
        assert_eq!(resource(&only, "/p", Some("utm=x")), "/p");
        let none = plan(CacheQuery::Ignore);
        assert_eq!(resource(&none, "/p", Some("a=1")), "/p");
    }
}
