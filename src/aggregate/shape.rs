//! Shaping a part's JSON result and combining the results: pure functions,
//! compiled once per config.
//!
//! Order for one part: `target` (take a sub-value), `allow` (keep only these
//! dotted paths), `deny` (remove these), `rename`. Arrays are transparent to
//! `allow`, `deny` and `rename`: a path applies to every element, so
//! `allow: ["id"]` on a list of orders keeps each order's `id`. A `*`
//! segment stands for every element of an array or every key of an object
//! (`items.*.price`). Keys keep the order the backend sent them in.

use crate::config::Collisions;
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
        let star = self.children.get("*");
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                for (k, child) in m {
                    if let Some(keep) = self.children.get(&k).or(star) {
                        if let Some(kept) = keep.apply(child) {
                            out.insert(k, kept);
                        }
                    }
                }
                Some(Value::Object(out))
            }
            // `*` at an array takes its elements; otherwise arrays are transparent.
            Value::Array(a) => {
                let each = match star {
                    Some(s) if self.children.len() == 1 => s,
                    _ => self,
                };
                Some(Value::Array(
                    a.into_iter().filter_map(|e| each.apply(e)).collect(),
                ))
            }
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

/// Moves the value at `path` out of `v` (object keys and array indexes,
/// `-1` for the last element; the whole of `v` for an empty path).
pub(super) fn take_at(v: Value, path: &[String]) -> Option<Value> {
    path.iter().try_fold(v, |v, seg| match v {
        Value::Object(mut m) => m.shift_remove(seg),
        Value::Array(mut a) => {
            let i = super::template::index_of(a.len(), seg)?;
            Some(a.swap_remove(i))
        }
        _ => None,
    })
}

fn remove(v: &mut Value, path: &[String]) {
    match v {
        Value::Array(a) => {
            // `*` at an array names its elements; otherwise arrays are transparent.
            let rest = match path.split_first() {
                Some((first, rest)) if first == "*" => rest,
                _ => path,
            };
            a.iter_mut().for_each(|e| remove(e, rest));
        }
        Value::Object(m) => match path {
            [] => {}
            [last] if last == "*" => m.clear(),
            [last] => {
                m.shift_remove(last);
            }
            [first, rest @ ..] if first == "*" => {
                m.values_mut().for_each(|child| remove(child, rest));
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
    cur.as_object_mut()?.shift_remove(last)
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

/// Deep-merges `src` into `dst`: objects are merged key by key, recursively
/// (new keys after the existing ones); anything else in `src` (a scalar, an
/// array, or an object meeting a non-object) replaces what `dst` had. So on
/// a conflict the later wins.
pub fn deep_merge(dst: &mut Value, src: Value) {
    // Overwrite never fails.
    let _ = merge_with(dst, src, Collisions::Overwrite, &mut Vec::new());
}

/// Deep-merges `src` into `dst` under `rule`; `path` is where `dst` sits
/// (for the error). Fails, under `Collisions::Error`, with the dotted path
/// of a field both set.
pub fn merge_with(
    dst: &mut Value,
    src: Value,
    rule: Collisions,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match (dst, src, rule) {
        (Value::Object(d), Value::Object(s), _) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(existing) => {
                        path.push(k);
                        merge_with(existing, v, rule, path)?;
                        path.pop();
                    }
                    None => {
                        d.insert(k, v);
                    }
                }
            }
            Ok(())
        }
        (Value::Array(d), Value::Array(s), Collisions::Concat) => {
            d.extend(s);
            Ok(())
        }
        (_, _, Collisions::Error) => Err(if path.is_empty() {
            "two parts answered with values that cannot be merged".into()
        } else {
            format!("two parts set the field {}", path.join("."))
        }),
        (dst, src, _) => {
            *dst = src;
            Ok(())
        }
    }
}

/// Places a shaped result into the composite. Under keys, it goes under
/// `key` (a dotted path); merged, an object result is deep-merged into the
/// root unless the part has a group key, and any other result goes under
/// `key`. Fails when `rule` is `Error` and a field is set twice.
pub fn place(
    root: &mut Map<String, Value>,
    merged: bool,
    grouped: bool,
    key: &str,
    v: Value,
    rule: Collisions,
) -> Result<(), String> {
    if merged && !grouped && v.is_object() {
        let mut whole = Value::Object(std::mem::take(root));
        let r = merge_with(&mut whole, v, rule, &mut Vec::new());
        if let Value::Object(m) = whole {
            *root = m;
        }
        return r;
    }
    // `a.b.c`: objects `a` and `b` are made where missing.
    let nested = key.rsplit('.').fold(v, |inner, seg| {
        let mut m = Map::new();
        m.insert(seg.to_string(), inner);
        Value::Object(m)
    });
    let mut whole = Value::Object(std::mem::take(root));
    let r = merge_with(&mut whole, nested, rule, &mut Vec::new());
    if let Value::Object(m) = whole {
        *root = m;
    }
    r
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
        let o = Collisions::Overwrite;
        let mut root = Map::new();
        place(&mut root, false, false, "profile", json!({"id": 1}), o).unwrap();
        place(&mut root, false, false, "orders", json!([1, 2]), o).unwrap();
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
            o,
        )
        .unwrap();
        place(&mut root, true, false, "more", json!({"a": {"c": 2}}), o).unwrap();
        place(&mut root, true, false, "orders", json!([1]), o).unwrap();
        place(&mut root, true, true, "grp", json!({"x": 1}), o).unwrap();
        assert_eq!(
            Value::Object(root),
            json!({"id": 1, "a": {"b": 1, "c": 2}, "orders": [1], "grp": {"x": 1}})
        );
    }

    #[test]
    fn wildcards_in_allow_and_deny() {
        let v = json!({"items": [{"id": 1, "price": 2, "cost": 1}, {"id": 2, "price": 3}], "n": 1});
        let got = shape(None, &["items.*.price"], &[], &[])
            .apply(v.clone())
            .unwrap();
        assert_eq!(got, json!({"items": [{"price": 2}, {"price": 3}]}));
        let got = shape(None, &[], &["items.*.price", "n"], &[])
            .apply(v)
            .unwrap();
        assert_eq!(got, json!({"items": [{"id": 1, "cost": 1}, {"id": 2}]}));
        let m = json!({"by_id": {"a": {"x": 1, "y": 2}, "b": {"x": 3}}});
        let got = shape(None, &["by_id.*.x"], &[], &[])
            .apply(m.clone())
            .unwrap();
        assert_eq!(got, json!({"by_id": {"a": {"x": 1}, "b": {"x": 3}}}));
        let got = shape(None, &[], &["by_id.*.x"], &[]).apply(m).unwrap();
        assert_eq!(got, json!({"by_id": {"a": {"y": 2}, "b": {}}}));
        let last = shape(Some("items.-1.id"), &[], &[], &[])
            .apply(json!({"items": [{"id": 1}, {"id": 2}]}))
            .unwrap();
        assert_eq!(last, json!(2));
    }

    #[test]
    fn key_order_is_kept_through_shaping() {
        let text = r#"{"z":1,"a":2,"m":{"y":1,"b":2},"k":3}"#;
        let v: Value = serde_json::from_str(text).unwrap();
        let got = shape(None, &[], &["a"], &[]).apply(v).unwrap();
        assert_eq!(got.to_string(), r#"{"z":1,"m":{"y":1,"b":2},"k":3}"#);
    }

    #[test]
    fn collision_rules() {
        let mut p = Vec::new();
        let mut a = json!({"list": [1], "u": {"n": 1}});
        merge_with(
            &mut a,
            json!({"list": [2], "u": {"m": 2}}),
            Collisions::Concat,
            &mut p,
        )
        .unwrap();
        assert_eq!(a, json!({"list": [1, 2], "u": {"n": 1, "m": 2}}));
        let mut a = json!({"list": [1], "u": {"n": 1}});
        merge_with(&mut a, json!({"list": [2]}), Collisions::Overwrite, &mut p).unwrap();
        assert_eq!(a, json!({"list": [2], "u": {"n": 1}}));
        let mut a = json!({"u": {"n": 1}});
        let e = merge_with(&mut a, json!({"u": {"n": 2}}), Collisions::Error, &mut p).unwrap_err();
        assert!(e.contains("u.n"), "{e}");
        let mut root = Map::new();
        place(
            &mut root,
            false,
            true,
            "customer.profile",
            json!({"id": 1}),
            Collisions::Error,
        )
        .unwrap();
        place(
            &mut root,
            false,
            true,
            "customer.orders",
            json!([1]),
            Collisions::Error,
        )
        .unwrap();
        assert_eq!(
            Value::Object(root),
            json!({"customer": {"profile": {"id": 1}, "orders": [1]}})
        );
    }
}
