//! The compiled route matcher.
//!
//! Routes are compiled once per config into a segment trie: static segments
//! are kept sorted for binary search, a `{param}` segment is one child per
//! node, and prefix routes hang off the node where their prefix ends. A
//! lookup walks the request path once (plus backtracking over params), so its
//! cost grows with the path's depth, not with the number of routes.
//!
//! Specificity, from most to least specific:
//! 1. a full-path match (exact or template) beats any prefix match; between
//!    full-path matches, at the first segment where they differ a static
//!    segment beats a `{param}`;
//! 2. a longer prefix (more segments) beats a shorter one;
//! 3. among routes with the same path pattern, more conditions win: a `host`
//!    first, then more `headers`, then having a `methods` list;
//! 4. remaining ties go to the route declared first.

use std::collections::HashMap;
use std::ops::Range;

/// What a route requires besides its path.
#[derive(Debug, Clone, Default)]
pub struct Conditions {
    /// Allowed methods; empty allows all.
    pub methods: Vec<String>,
    /// Host condition: exact (lower-case, no port) or `*.suffix`.
    pub host: Option<String>,
    /// Header conditions: lower-case name and exact value.
    pub headers: Vec<(String, String)>,
}

/// The path part of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Exact path or template with whole-segment `{params}`.
    Full(String),
    /// Prefix matched on whole segments.
    Prefix(String),
}

/// One route as the router sees it.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// Path pattern.
    pub path: PathPattern,
    /// Other conditions.
    pub conditions: Conditions,
}

/// The request facts a lookup needs.
pub struct RequestFacts<'a, H: Fn(&str) -> Option<&'a [u8]>> {
    /// Method as sent.
    pub method: &'a str,
    /// Path without the query string.
    pub path: &'a str,
    /// Host header value, if any (port allowed).
    pub host: Option<&'a str>,
    /// Looks up a header value by lower-case name.
    pub header: H,
}

/// The outcome of a lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Route index (declaration order) and the byte ranges of its params in the path, in pattern order.
    Found {
        route: usize,
        params: Vec<Range<usize>>,
    },
    /// The path matched routes whose methods exclude this one; the allowed methods.
    MethodNotAllowed { allow: Vec<String> },
    /// No route matches.
    NotFound,
}

#[derive(Debug, Default)]
struct Node {
    statics: Vec<(Box<str>, Node)>,
    param: Option<Box<Node>>,
    full: Vec<usize>,
    prefix: Vec<usize>,
}

impl Node {
    fn static_child(&self, seg: &str) -> Option<&Node> {
        self.statics
            .binary_search_by(|(k, _)| (**k).cmp(seg))
            .ok()
            .and_then(|i| self.statics.get(i))
            .map(|(_, node)| node)
    }
}

/// The trie while routes are added: nodes in an arena and one map from
/// (parent, segment) to child for the whole table, so adding a route costs
/// O(depth) and allocates little (per-node ordered maps or insertion into
/// sorted vectors made tables of many routes slow to build).
#[derive(Default)]
struct TrieBuilder<'a> {
    nodes: Vec<BuildNode<'a>>,
    edges: HashMap<(usize, &'a str), usize>,
}

#[derive(Default)]
struct BuildNode<'a> {
    statics: Vec<(&'a str, usize)>,
    param: Option<usize>,
    full: Vec<usize>,
    prefix: Vec<usize>,
}

impl<'a> TrieBuilder<'a> {
    /// The root is node 0; room for about `segments` nodes.
    fn new(segments: usize) -> TrieBuilder<'a> {
        let mut nodes = Vec::with_capacity(segments + 1);
        nodes.push(BuildNode::default());
        TrieBuilder {
            nodes,
            edges: HashMap::with_capacity(segments),
        }
    }

    fn add_node(&mut self) -> usize {
        self.nodes.push(BuildNode::default());
        self.nodes.len() - 1
    }

    fn static_child(&mut self, parent: usize, seg: &'a str) -> usize {
        if let Some(&child) = self.edges.get(&(parent, seg)) {
            return child;
        }
        let child = self.add_node();
        self.edges.insert((parent, seg), child);
        if let Some(p) = self.nodes.get_mut(parent) {
            p.statics.push((seg, child));
        }
        child
    }

    fn param_child(&mut self, parent: usize) -> usize {
        if let Some(child) = self.nodes.get(parent).and_then(|p| p.param) {
            return child;
        }
        let child = self.add_node();
        if let Some(p) = self.nodes.get_mut(parent) {
            p.param = Some(child);
        }
        child
    }

    fn node(&mut self, i: usize) -> Option<&mut BuildNode<'a>> {
        self.nodes.get_mut(i)
    }

    /// The lookup form of node `i`: children sorted for binary search,
    /// candidate lists in specificity order.
    fn finish(&mut self, i: usize, conds: &[Conditions]) -> Node {
        let Some(b) = self.nodes.get_mut(i).map(std::mem::take) else {
            return Node::default();
        };
        crate::pace::point();
        let key = |i: &usize| {
            let Some(c) = conds.get(*i) else {
                return (true, usize::MAX, true, *i);
            };
            (
                c.host.is_none(),
                usize::MAX - c.headers.len(),
                c.methods.is_empty(),
                *i,
            )
        };
        let (mut statics, mut full, mut prefix) = (b.statics, b.full, b.prefix);
        statics.sort_unstable_by(|x, y| x.0.cmp(y.0));
        full.sort_by_key(key);
        prefix.sort_by_key(key);
        Node {
            statics: statics
                .into_iter()
                .map(|(seg, child)| (Box::from(seg), self.finish(child, conds)))
                .collect(),
            param: b.param.map(|p| Box::new(self.finish(p, conds))),
            full,
            prefix,
        }
    }
}

/// A compiled route table.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    conditions: Vec<Conditions>,
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

impl Router {
    /// Compiles routes; their index in `routes` is the declaration order.
    pub fn new(routes: &[RouteSpec]) -> Router {
        // Sized up front: growing the arena or the edge map would copy it
        // all in one step.
        let segments = routes
            .iter()
            .map(|r| match &r.path {
                PathPattern::Full(p) | PathPattern::Prefix(p) => p.matches('/').count(),
            })
            .sum();
        let mut trie = TrieBuilder::new(segments);
        for (i, r) in routes.iter().enumerate() {
            crate::pace::point();
            let mut node = 0;
            match &r.path {
                PathPattern::Full(p) => {
                    for seg in p.strip_prefix('/').unwrap_or(p).split('/') {
                        node = if is_param(seg) {
                            trie.param_child(node)
                        } else {
                            trie.static_child(node, seg)
                        };
                    }
                    if let Some(n) = trie.node(node) {
                        n.full.push(i);
                    }
                }
                PathPattern::Prefix(p) => {
                    let trimmed = p.trim_end_matches('/');
                    for seg in trimmed.split('/').skip(1) {
                        node = trie.static_child(node, seg);
                    }
                    if let Some(n) = trie.node(node) {
                        n.prefix.push(i);
                    }
                }
            }
        }
        let conditions: Vec<Conditions> = routes.iter().map(|r| r.conditions.clone()).collect();
        let root = trie.finish(0, &conditions);
        Router { root, conditions }
    }

    /// Frees the table node by node, with a [`crate::pace::point`] every
    /// few nodes (a large table's recursive drop would not pause).
    pub fn drop_paced(self) {
        let mut stack = vec![self.root];
        let mut freed = 0usize;
        while let Some(mut node) = stack.pop() {
            stack.extend(node.statics.drain(..).map(|(_, child)| child));
            if let Some(p) = node.param.take() {
                stack.push(*p);
            }
            drop(node);
            freed += 1;
            if freed.is_multiple_of(32) {
                crate::pace::point();
            }
        }
        crate::pace::drop_each(self.conditions);
    }

    /// Finds the most specific route for a request.
    pub fn lookup<'a, H: Fn(&str) -> Option<&'a [u8]>>(&self, req: &RequestFacts<'a, H>) -> Lookup {
        let host = req.host.map(strip_port);
        let mut allow: Vec<String> = Vec::new();
        let rest = req.path.strip_prefix('/').unwrap_or(req.path);
        let mut params = Vec::new();
        if let Some(route) = self.find_full(
            &self.root,
            req,
            host,
            Segments::of(rest),
            &mut params,
            &mut allow,
        ) {
            params.reverse();
            return Lookup::Found { route, params };
        }
        // Prefix candidates along the static chain, deepest first.
        let segs = if rest.is_empty() {
            None
        } else {
            Some(Segments::of(rest))
        };
        if let Some(route) = self.find_prefix(&self.root, req, host, segs, &mut allow) {
            return Lookup::Found {
                route,
                params: Vec::new(),
            };
        }
        if allow.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed { allow }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn find_full<'a, H: Fn(&str) -> Option<&'a [u8]>>(
        &self,
        node: &Node,
        req: &RequestFacts<'a, H>,
        host: Option<&str>,
        mut segs: Segments<'_>,
        params: &mut Vec<Range<usize>>,
        allow: &mut Vec<String>,
    ) -> Option<usize> {
        let Some(seg) = segs.next() else {
            return self.first_admitted(&node.full, req, host, allow);
        };
        if let Some(child) = node.static_child(seg) {
            if let Some(r) = self.find_full(child, req, host, segs.clone(), params, allow) {
                return Some(r);
            }
        }
        if let Some(child) = &node.param {
            if !seg.is_empty() {
                if let Some(r) = self.find_full(child, req, host, segs, params, allow) {
                    // Params are pushed innermost first and reversed by the caller.
                    // `seg` is a subslice of the request's path.
                    let start = (seg.as_ptr() as usize).wrapping_sub(req.path.as_ptr() as usize);
                    params.push(start..start + seg.len());
                    return Some(r);
                }
            }
        }
        None
    }

    /// Walks static segments as deep as they go, then tries prefix routes on the way back up.
    fn find_prefix<'a, H: Fn(&str) -> Option<&'a [u8]>>(
        &self,
        node: &Node,
        req: &RequestFacts<'a, H>,
        host: Option<&str>,
        mut segs: Option<Segments<'_>>,
        allow: &mut Vec<String>,
    ) -> Option<usize> {
        let child = segs
            .as_mut()
            .and_then(|s| s.next())
            .and_then(|seg| node.static_child(seg));
        if let Some(child) = child {
            if let Some(r) = self.find_prefix(child, req, host, segs, allow) {
                return Some(r);
            }
        }
        self.first_admitted(&node.prefix, req, host, allow)
    }

    fn first_admitted<'a, H: Fn(&str) -> Option<&'a [u8]>>(
        &self,
        list: &[usize],
        req: &RequestFacts<'a, H>,
        host: Option<&str>,
        allow: &mut Vec<String>,
    ) -> Option<usize> {
        for &i in list {
            let Some(c) = self.conditions.get(i) else {
                continue;
            };
            if let Some(want) = &c.host {
                if !host.is_some_and(|h| host_matches(want, h)) {
                    continue;
                }
            }
            if !c
                .headers
                .iter()
                .all(|(name, value)| (req.header)(name) == Some(value.as_bytes()))
            {
                continue;
            }
            if c.methods.is_empty() || c.methods.iter().any(|m| m == req.method) {
                return Some(i);
            }
            for m in &c.methods {
                if !allow.contains(m) {
                    allow.push(m.clone());
                }
            }
        }
        None
    }
}

/// The host without its port: `[v6]:port` → `[v6]`, `name:port` → `name`.
/// An unclosed `[` is returned whole (it matches no host condition).
/// Scanned as bytes: a host is a few bytes, shorter than the set-up of a
/// `char` pattern's search.
fn strip_port(host: &str) -> &str {
    let b = host.as_bytes();
    let end = match b.first() {
        Some(b'[') => b.iter().position(|&c| c == b']').map(|i| i + 1),
        _ => b.iter().rposition(|&c| c == b':'),
    };
    end.and_then(|e| host.get(..e)).unwrap_or(host)
}

/// The `/`-separated segments of a path (as `str::split('/')` yields
/// them), found by a byte scan: path segments are short, and a `char`
/// pattern's search costs more to set up than the scan.
#[derive(Clone)]
struct Segments<'a> {
    rest: Option<&'a str>,
}

impl<'a> Segments<'a> {
    fn of(path: &'a str) -> Segments<'a> {
        Segments { rest: Some(path) }
    }
}

impl<'a> Iterator for Segments<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match rest.bytes().position(|b| b == b'/') {
            // `/` is ASCII: both sides of it are on character boundaries.
            Some(i) => {
                self.rest = rest.get(i + 1..);
                rest.get(..i)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Case-insensitive host match; `*.suffix` matches any name ending in `.suffix`
/// (compared as bytes, so a non-ASCII host cannot split a character).
fn host_matches(want: &str, host: &str) -> bool {
    match want.strip_prefix("*.") {
        Some(suffix) => {
            let (host, suffix) = (host.as_bytes(), suffix.as_bytes());
            // `split` is where the dot before the suffix must be; a label must precede it.
            let Some(split) = host.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            split > 0
                && host.get(split) == Some(&b'.')
                && host
                    .get(split + 1..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        }
        None => want.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_those_of_split() {
        for path in [
            "",
            "a",
            "a/b",
            "a//b",
            "a/",
            "/",
            "//",
            "é/ü/",
            "api/v1/items/",
        ] {
            let ours: Vec<&str> = Segments::of(path).collect();
            let split: Vec<&str> = path.split('/').collect();
            assert_eq!(ours, split, "{path:?}");
        }
        for (host, bare) in [
            ("[::1]", "[::1]"),
            ("h", "h"),
            ("h:1", "h"),
            ("a:b:c", "a:b"),
        ] {
            assert_eq!(strip_port(host), bare);
        }
    }

    #[test]
    fn odd_hosts_do_not_panic() {
        for h in [
            "[a",
            "[",
            "[::1",
            "[::1]:80",
            ":",
            "",
            "é.example.com",
            "x.é",
            "a:b:c",
        ] {
            let _ = strip_port(h);
            assert!(!host_matches("*.example.com", h) || h.ends_with(".example.com"));
        }
        assert_eq!(strip_port("[a"), "[a");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
        assert_eq!(strip_port("api.example.com:80"), "api.example.com");
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(host_matches("*.example.com", "A.EXAMPLE.COM"));
        assert!(!host_matches("*.example.com", ".example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
        assert!(host_matches("*.é.com", "a.é.com"));
        assert!(!host_matches("*.com", "é"));
    }

    fn full(p: &str) -> RouteSpec {
        RouteSpec {
            path: PathPattern::Full(p.into()),
            conditions: Conditions::default(),
        }
    }
    fn prefix(p: &str) -> RouteSpec {
        RouteSpec {
            path: PathPattern::Prefix(p.into()),
            conditions: Conditions::default(),
        }
    }
    fn with(mut r: RouteSpec, f: impl FnOnce(&mut Conditions)) -> RouteSpec {
        f(&mut r.conditions);
        r
    }

    fn look(
        router: &Router,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Lookup {
        let owned: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        let facts = RequestFacts {
            method,
            path,
            host,
            header: |name: &str| {
                owned
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_slice())
            },
        };
        router.lookup(&facts)
    }

    fn found(l: Lookup) -> usize {
        match l {
            Lookup::Found { route, .. } => route,
            other => panic!("expected a route, got {other:?}"),
        }
    }

    #[test]
    fn exact_template_and_prefix() {
        let r = Router::new(&[
            prefix("/"),
            prefix("/api"),
            full("/api/users/{id}"),
            full("/api/users/me"),
            full("/api/users/{id}/orders/{order}"),
        ]);
        assert_eq!(found(look(&r, "GET", "/api/users/me", None, &[])), 3);
        assert_eq!(found(look(&r, "GET", "/api/users/42", None, &[])), 2);
        assert_eq!(found(look(&r, "GET", "/api/users/", None, &[])), 1);
        assert_eq!(found(look(&r, "GET", "/api", None, &[])), 1);
        assert_eq!(found(look(&r, "GET", "/apix", None, &[])), 0);
        assert_eq!(found(look(&r, "GET", "/", None, &[])), 0);
        match look(&r, "GET", "/api/users/7/orders/abc", None, &[]) {
            Lookup::Found { route, params } => {
                assert_eq!(route, 4);
                let p = "/api/users/7/orders/abc";
                let vals: Vec<&str> = params.iter().map(|r| &p[r.clone()]).collect();
                assert_eq!(vals, ["7", "abc"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn static_beats_param_with_backtracking() {
        let r = Router::new(&[full("/a/{x}/c"), full("/a/b/d")]);
        assert_eq!(found(look(&r, "GET", "/a/b/c", None, &[])), 0);
        assert_eq!(found(look(&r, "GET", "/a/b/d", None, &[])), 1);
        assert_eq!(look(&r, "GET", "/a/b/e", None, &[]), Lookup::NotFound);
    }

    #[test]
    fn longest_prefix_wins() {
        let r = Router::new(&[prefix("/a"), prefix("/a/b/"), prefix("/a/b/c")]);
        assert_eq!(found(look(&r, "GET", "/a/b/x", None, &[])), 1);
        assert_eq!(found(look(&r, "GET", "/a/b/c/d", None, &[])), 2);
        assert_eq!(found(look(&r, "GET", "/a/x", None, &[])), 0);
    }

    #[test]
    fn conditions_and_specificity() {
        let r = Router::new(&[
            with(prefix("/p"), |c| c.methods = vec!["GET".into()]),
            with(prefix("/p"), |c| {
                c.headers = vec![("x-api-version".into(), "2.0".into())]
            }),
            with(prefix("/p"), |c| c.host = Some("*.example.com".into())),
        ]);
        assert_eq!(found(look(&r, "GET", "/p", None, &[])), 0);
        assert_eq!(
            found(look(&r, "GET", "/p", None, &[("X-API-Version", "2.0")])),
            1
        );
        assert_eq!(
            found(look(&r, "POST", "/p", None, &[("X-API-Version", "2.0")])),
            1
        );
        assert_eq!(
            found(look(
                &r,
                "GET",
                "/p",
                Some("a.Example.com:8080"),
                &[("x-api-version", "2.0")]
            )),
            2
        );
        assert_eq!(found(look(&r, "GET", "/p", Some("example.com"), &[])), 0);
        assert_eq!(
            look(&r, "DELETE", "/p", None, &[]),
            Lookup::MethodNotAllowed {
                allow: vec!["GET".into()]
            }
        );
    }

    #[test]
    fn declaration_order_breaks_ties() {
        let r = Router::new(&[full("/x"), full("/x")]);
        assert_eq!(found(look(&r, "GET", "/x", None, &[])), 0);
    }

    #[test]
    fn method_mismatch_falls_through_to_prefix() {
        let r = Router::new(&[
            prefix("/api"),
            with(full("/api/users/{id}"), |c| {
                c.methods = vec!["GET".into(), "PUT".into()]
            }),
        ]);
        assert_eq!(found(look(&r, "DELETE", "/api/users/1", None, &[])), 0);
        let r = Router::new(&[with(full("/api/users/{id}"), |c| {
            c.methods = vec!["GET".into(), "PUT".into()]
        })]);
        assert_eq!(
            look(&r, "DELETE", "/api/users/1", None, &[]),
            Lookup::MethodNotAllowed {
                allow: vec!["GET".into(), "PUT".into()]
            }
        );
    }

    #[test]
    fn many_siblings_in_any_order() {
        // Declared in an order unlike the sorted one, sharing prefixes.
        let n = 3000;
        let order: Vec<usize> = (0..n).map(|k| (k * 7919) % n).collect();
        let mut specs: Vec<RouteSpec> = order
            .iter()
            .map(|i| full(&format!("/s/r{i}/items/{{id}}")))
            .collect();
        specs.push(prefix("/s"));
        let r = Router::new(&specs);
        for (route, i) in order.iter().enumerate() {
            assert_eq!(
                found(look(&r, "GET", &format!("/s/r{i}/items/x"), None, &[])),
                route
            );
        }
        assert_eq!(
            found(look(&r, "GET", &format!("/s/r{n}/items/x"), None, &[])),
            n
        );
        assert_eq!(found(look(&r, "GET", "/s/r1/items", None, &[])), n);
    }

    #[test]
    fn empty_param_segment_does_not_match() {
        let r = Router::new(&[full("/u/{id}")]);
        assert_eq!(look(&r, "GET", "/u/", None, &[]), Lookup::NotFound);
        assert_eq!(found(look(&r, "GET", "/u/1", None, &[])), 0);
    }
}
