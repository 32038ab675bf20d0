//! Shaping a part's JSON result and combining the results: pure functions,
//! compiled once per config.
//!
//! Order for one part: `target` (take a sub-value), `allow` (keep only these
//! dotted paths), `deny` (remove these), `rename`. Arrays are transparent to
//! `allow`, `deny` and `rename`: a path applies to every element, so
//! `allow: ["id"]` on a list of orders keeps each order's `id`.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

type Path = Vec<String>;

fn split(p: &str) -> Path {
    p.split('.').map(str::to_string).collect()
}

/// A set of dotted paths as a tree (a leaf keeps everything below it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Keep {
    leaf: bool,
    children: BTreeMap<String, Keep>,
}

impl Keep {
    fn insert(&mut self, path: &[String]) {
        match path.split_first() {
            None => self.leaf = true,
            Some((first, rest)) => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    fn apply(&self, v: Value) -> Option<Value> {
        if self.leaf {
            return Some(v);
        }
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, child) in m {
                    if let Some(keep) = self.children.get(&k) {
                        if let Some(kept) = keep.apply(child) {
                            out.insert(k, kept);
                        }
                    }
                }
                Some(Value::Object(out))
            }
            Value::Array(a) => Some(Value::Array(
                a.into_iter().filter_map(|e| self.apply(e)).collect(),
            )),
            // A scalar where the allow-list expects an object is dropped.
            _ => None,
        }
    }
}

/// How one part's result is reshaped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    target: Option<Path>,
    allow: Option<Keep>,
    deny: Vec<Path>,
    rename: Vec<(Path, Path)>,
}

impl Shape {
    /// Compiles the part's `target`, `allow`, `deny` and `rename`.
    pub fn new(
        target: Option<&str>,
        allow: &[String],
        deny: &[String],
        rename: &BTreeMap<String, String>,
    ) -> Shape {
        let allow = (!allow.is_empty()).then(|| {
            let mut k = Keep::default();
            for p in allow {
                k.insert(&split(p));
            }
            k
        });
        Shape {
            target: target.map(split),
            allow,
            deny: deny.iter().map(|p| split(p)).collect(),
            rename: rename.iter().map(|(f, t)| (split(f), split(t))).collect(),
        }
    }

    /// True when the result is used as it is.
    pub fn is_identity(&self) -> bool {
        self.target.is_none()
            && self.allow.is_none()
            && self.deny.is_empty()
            && self.rename.is_empty()
    }

    /// Reshapes a result; fails when `target` is missing from it.
    pub fn apply(&self, v: Value) -> Result<Value, String> {
        let mut v = match &self.target {
            Some(path) => take_at(v, path)
                .ok_or_else(|| format!("the response has no field {}", path.join(".")))?,
            None => v,
        };
        if let Some(keep) = &self.allow {
            v = keep.apply(v).unwrap_or(Value::Null);
        }
        for path in &self.deny {
            remove(&mut v, path);
        }
        for (from, to) in &self.rename {
            rename(&mut v, from, to);
        }
        Ok(v)
    }
}

/// Moves the value at `path` out of `v` (object keys and array indexes).
fn take_at(v: Value, path: &[String]) -> Option<Value> {
    path.iter().try_fold(v, |v, seg| match v {
        Value::Object(mut m) => m.remove(seg),
        Value::Array(mut a) => {
            let i = seg.parse::<usize>().ok().filter(|i| *i < a.len())?;
            Some(a.swap_remove(i))
        }
        _ => None,
    })
}

fn remove(v: &mut Value, path: &[String]) {
    match v {
        Value::Array(a) => a.iter_mut().for_each(|e| remove(e, path)),
        Value::Object(m) => match path {
            [] => {}
            [last] => {
                m.remove(last);
            }
            [first, rest @ ..] => {
                if let Some(child) = m.get_mut(first) {
                    remove(child, rest);
                }
            }
        },
        _ => {}
    }
}

fn take_field(v: &mut Value, path: &[String]) -> Option<Value> {
    let (last, parents) = path.split_last()?;
    let mut cur = v;
    for seg in parents {
        cur = cur.as_object_mut()?.get_mut(seg)?;
    }
    cur.as_object_mut()?.remove(last)
}

fn put_field(v: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parents {
        let Some(m) = cur.as_object_mut() else {
            return;
        };
        cur = m
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if let Some(m) = cur.as_object_mut() {
        m.insert(last.clone(), value);
    }
}

fn rename(v: &mut Value, from: &[String], to: &[String]) {
    if let Value::Array(a) = v {
        a.iter_mut().for_each(|e| rename(e, from, to));
        return;
    }
    if let Some(value) = take_field(v, from) {
        put_field(v, to, value);
    }
}

/// Deep-merges `src` into `dst`: objects are merged key by key, recursively;
/// anything else in `src` (a scalar, an array, or an object meeting a
/// non-object) replaces what `dst` had. So on a conflict the later wins.
pub fn deep_merge(dst: &mut Value, src: Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) => deep_merge(existing, v),
                    None => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (dst, src) => *dst = src,
    }
}

/// Places a shaped result into the composite. Under keys, it goes under
/// `key`; merged, an object result is deep-merged into the root unless the
/// part has a group key, and any other result goes under `key`.
pub fn place(root: &mut Map<String, Value>, merged: bool, grouped: bool, key: &str, v: Value) {
    if merged && !grouped && v.is_object() {
        let mut whole = Value::Object(std::mem::take(root));
        deep_merge(&mut whole, v);
        if let Value::Object(m) = whole {
            *root = m;
        }
        return;
    }
    match root.get_mut(key) {
        Some(existing) => deep_merge(existing, v),
        None => {
            root.insert(key.to_string(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shape(
        target: Option<&str>,
        allow: &[&str],
        deny: &[&str],
        rename: &[(&str, &str)],
    ) -> Shape {
        let s = |l: &[&str]| l.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let r = rename
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        Shape::new(target, &s(allow), &s(deny), &r)
    }

    #[test]
    fn allow_keeps_only_listed_paths_through_arrays() {
        let v = json!({"orders": [{"id": 1, "total": 2, "secret": 3}, {"id": 4, "x": {"y": 1, "z": 2}}], "n": 2});
        let got = shape(None, &["orders.id", "orders.x.z"], &[], &[])
            .apply(v)
            .unwrap();
        assert_eq!(
            got,
            json!({"orders": [{"id": 1}, {"id": 4, "x": {"z": 2}}]})
        );
    }

    #[test]
    fn target_then_allow() {
        let v = json!({"data": [{"id": 1, "total": 2, "status": "s", "x": 0}], "meta": {}});
        let got = shape(Some("data"), &["id", "total", "status"], &[], &[])
            .apply(v)
            .unwrap();
        assert_eq!(got, json!([{"id": 1, "total": 2, "status": "s"}]));
        let err = shape(Some("nope"), &[], &[], &[])
            .apply(json!({}))
            .unwrap_err();
        assert!(err.contains("nope"));
        let first = shape(Some("data.0.id"), &[], &[], &[])
            .apply(json!({"data": [{"id": 9}]}))
            .unwrap();
        assert_eq!(first, json!(9));
    }

    #[test]
    fn deny_and_rename() {
        let v = json!({"id": 1, "email": "e", "inner": {"password": "p", "k": 1}, "name": "n"});
        let got = shape(
            None,
            &[],
            &["email", "inner.password"],
            &[("name", "display.name"), ("id", "user_id")],
        )
        .apply(v)
        .unwrap();
        assert_eq!(
            got,
            json!({"inner": {"k": 1}, "display": {"name": "n"}, "user_id": 1})
        );
        let list = json!([{"total": 1}, {"total": 2}]);
        let got = shape(None, &[], &[], &[("total", "amount")])
            .apply(list)
            .unwrap();
        assert_eq!(got, json!([{"amount": 1}, {"amount": 2}]));
    }

    #[test]
    fn merge_rule_later_wins_objects_merge() {
        let mut a = json!({"user": {"id": 1, "name": "a"}, "list": [1], "n": 1});
        deep_merge(
            &mut a,
            json!({"user": {"name": "b", "x": true}, "list": [2], "n": {"k": 1}}),
        );
        assert_eq!(
            a,
            json!({"user": {"id": 1, "name": "b", "x": true}, "list": [2], "n": {"k": 1}})
        );
    }

    #[test]
    fn placing_under_keys_and_merged() {
        let mut root = Map::new();
        place(&mut root, false, false, "profile", json!({"id": 1}));
        place(&mut root, false, false, "orders", json!([1, 2]));
        assert_eq!(
            Value::Object(root),
            json!({"profile": {"id": 1}, "orders": [1, 2]})
        );
        let mut root = Map::new();
        place(
            &mut root,
            true,
            false,
            "profile",
            json!({"id": 1, "a": {"b": 1}}),
        );
        place(&mut root, true, false, "more", json!({"a": {"c": 2}}));
        place(&mut root, true, false, "orders", json!([1]));
        place(&mut root, true, true, "grp", json!({"x": 1}));
        assert_eq!(
            Value::Object(root),
            json!({"id": 1, "a": {"b": 1, "c": 2}, "orders": [1], "grp": {"x": 1}})
        );
    }
}
