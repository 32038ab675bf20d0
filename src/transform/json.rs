//! JSON field operations on dotted paths (`user.address.city`,
//! `items.0.id`): remove, rename, move and add, applied in that order.
//! Pure functions of the document and the compiled operations.

use serde_json::{Map, Value};

/// A dotted path, split into object keys (or array indexes).
pub type Path = Vec<String>;

/// Splits `a.b.c`; `None` when a segment is empty.
pub fn parse_path(p: &str) -> Option<Path> {
    let segs: Path = p.split('.').map(str::to_string).collect();
    (!segs.iter().any(String::is_empty)).then_some(segs)
}

/// The container holding the last segment of `path` (an object, or an
/// array for a numeric segment), and that segment.
fn parent_mut<'v>(root: &'v mut Value, path: &'v [String]) -> Option<(&'v mut Value, &'v str)> {
    let (last, up) = path.split_last()?;
    let mut at = root;
    for seg in up {
        at = child_mut(at, seg)?;
    }
    Some((at, last.as_str()))
}

fn child_mut<'v>(v: &'v mut Value, seg: &str) -> Option<&'v mut Value> {
    match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    }
}

/// Removes the value at `path`, returning it.
pub fn take(root: &mut Value, path: &[String]) -> Option<Value> {
    let (parent, last) = parent_mut(root, path)?;
    match parent {
        Value::Object(m) => m.remove(last),
        Value::Array(a) => {
            let i = last.parse::<usize>().ok().filter(|&i| i < a.len())?;
            Some(a.remove(i))
        }
        _ => None,
    }
}

/// Puts `value` at `path`, creating missing objects on the way; a scalar
/// in the way is left alone (and the value dropped). An array index must
/// exist (it is replaced).
pub fn put(root: &mut Value, path: &[String], value: Value) -> bool {
    let Some((last, up)) = path.split_last() else {
        return false;
    };
    let mut at = root;
    for seg in up {
        let exists = match &*at {
            Value::Object(m) => m.contains_key(seg),
            Value::Array(_) => true,
            _ => return false,
        };
        if !exists {
            if let Value::Object(m) = at {
                m.insert(seg.clone(), Value::Object(Map::new()));
            }
        }
        match child_mut(at, seg) {
            Some(next) => at = next,
            None => return false,
        }
    }
    match at {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            true
        }
        Value::Array(a) => match last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Renames the key at `path` to `to` in the same object (a key `to`
/// already there is replaced).
pub fn rename(root: &mut Value, path: &[String], to: &str) -> bool {
    let Some((Value::Object(m), last)) = parent_mut(root, path) else {
        return false;
    };
    match m.remove(last) {
        Some(v) => {
            m.insert(to.to_string(), v);
            true
        }
        None => false,
    }
}

/// Moves the value at `from` to `to` (creating objects on the way).
pub fn move_to(root: &mut Value, from: &[String], to: &[String]) -> bool {
    match take(root, from) {
        Some(v) => put(root, to, v),
        None => false,
    }
}

/// The compiled body operations of one direction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JsonPlan {
    /// Paths removed.
    pub remove: Vec<Path>,
    /// Path → new key in the same object.
    pub rename: Vec<(Path, String)>,
    /// Path → path.
    pub moves: Vec<(Path, Path)>,
    /// Paths added (or replaced), with the value's source.
    pub add: Vec<(Path, super::AddValue)>,
}

impl JsonPlan {
    /// Applies remove, rename and move, then the adds with `values` (one
    /// expanded value per [`JsonPlan::add`] entry, `None` to skip it).
    pub fn apply(&self, doc: &mut Value, values: &[Option<Value>]) {
        for p in &self.remove {
            take(doc, p);
        }
        for (p, to) in &self.rename {
            rename(doc, p, to);
        }
        for (from, to) in &self.moves {
            move_to(doc, from, to);
        }
        for ((p, _), v) in self.add.iter().zip(values) {
            if let Some(v) = v {
                put(doc, p, v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Path {
        parse_path(s).unwrap()
    }

    #[test]
    fn dotted_paths_remove_rename_move_add() {
        let mut v = json!({"user": {"id": 7, "secret": "x", "addr": {"city": "Oslo"}}, "items": [{"id": 1}, {"id": 2}]});
        assert_eq!(take(&mut v, &p("user.secret")), Some(json!("x")));
        assert!(rename(&mut v, &p("user.id"), "user_id"));
        assert!(move_to(&mut v, &p("user.addr.city"), &p("location.city")));
        assert!(put(&mut v, &p("meta.source.name"), json!("gw")));
        assert!(put(&mut v, &p("items.1.id"), json!(3)));
        assert_eq!(
            v,
            json!({"user": {"user_id": 7, "addr": {}}, "items": [{"id": 1}, {"id": 3}],
                   "location": {"city": "Oslo"}, "meta": {"source": {"name": "gw"}}})
        );
    }

    #[test]
    fn missing_paths_and_scalars_are_left_alone() {
        let mut v = json!({"a": 1, "list": [1]});
        assert_eq!(take(&mut v, &p("b.c")), None);
        assert!(!rename(&mut v, &p("nope"), "x"));
        assert!(!put(&mut v, &p("a.b"), json!(2)));
        assert!(!put(&mut v, &p("list.5"), json!(2)));
        assert!(!move_to(&mut v, &p("nope"), &p("x")));
        assert_eq!(v, json!({"a": 1, "list": [1]}));
        assert_eq!(take(&mut v, &p("list.0")), Some(json!(1)));
        assert!(parse_path("a..b").is_none());
    }
}
