//! `for_each` parts: per-item enrichment. The part runs once per element of
//! an earlier part's array (`for_each: "order.items"`), at most
//! `max_concurrency` calls in flight, or makes one batch call for all items
//! and joins the answer's elements back to the items by key. Each answer is
//! then placed into its element under `into` (see [`place`]).
//!
//! All item calls are polled from the composite's one task: nothing is
//! spawned, and the part's `timeout_ms` bounds all of its calls together.

use super::fetch::{Answer, PartError};
use super::plan::Each;
use super::run::{build_with_path, context, slot_value, Call, Done, Request, Slot};
use super::template::{scalar_str, scalar_text, select, Context};
use crate::config::OnItemError;
use serde_json::Value;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

/// A built request: head and body, and where `host` goes.
type Built = (Vec<u8>, usize);

enum Work {
    Batch(Built, Vec<Option<String>>),
    Each(Vec<Result<Built, PartError>>),
}

/// Runs a `for_each` part once its dependencies are complete.
pub(super) async fn run(
    call: &Call<'_>,
    each: &Each,
    request: &Request<'_>,
    results: &RefCell<Vec<Slot>>,
) -> Result<Done, PartError> {
    let part = call.part;
    let req = request.inputs.req;
    let work = {
        let slots = results.borrow();
        let lookup = |d: usize| slot_value(&slots, d);
        let items: &[Value] =
            match slot_value(&slots, each.source).and_then(|v| select(v, &each.path)) {
                None | Some(Value::Null) => &[],
                Some(Value::Array(a)) => a,
                Some(_) => {
                    return Err(PartError::new(format!(
                        "for_each: {} is not an array",
                        describe(call, each)
                    )))
                }
            };
        if items.len() > each.max_items {
            return Err(PartError::new(format!(
                "for_each: {} items; at most {} are allowed (max_items)",
                items.len(),
                each.max_items
            )));
        }
        if items.is_empty() {
            return Ok(Done::from(Value::Array(Vec::new())));
        }
        match &each.batch {
            Some(b) => {
                let ctx = context(request, &lookup, None);
                let built = build_with_path(part, &b.path, call.index, &ctx, req, call.ex)?;
                let keys = items
                    .iter()
                    .map(|it| select(it, &b.item_key).and_then(scalar_text))
                    .collect();
                Work::Batch(built, keys)
            }
            None => Work::Each(
                items
                    .iter()
                    .map(|it| {
                        let ctx: Context<'_> = context(request, &lookup, Some(it));
                        build_with_path(part, &part.path, call.index, &ctx, req, call.ex)
                    })
                    .collect(),
            ),
        }
    };
    let mut done = Done::from(Value::Null);
    let outcomes: Vec<Result<Value, PartError>> = match work {
        Work::Batch((bytes, host_at), keys) => {
            let answer = call.send(bytes, host_at).await?;
            let b = each
                .batch
                .as_ref()
                .ok_or_else(|| PartError::new("no batch"))?;
            done.status = answer.status;
            done.headers = answer.headers;
            let list = match super::shape::take_at(answer.value, &b.target) {
                Some(Value::Array(list)) => list,
                _ => {
                    return Err(PartError::new(format!(
                        "the batch answer has no array at {}",
                        if b.target.is_empty() {
                            "its root".to_string()
                        } else {
                            b.target.join(".")
                        }
                    )))
                }
            };
            join_batch(list, &b.key, &keys)
                .into_iter()
                .map(|r| {
                    r.map_err(PartError::new)
                        .and_then(|v| b.shape.apply(v).map_err(PartError::new))
                })
                .collect()
        }
        Work::Each(requests) => {
            let answers = run_items(call, each.max_concurrency, requests).await?;
            let mut first = true;
            answers
                .into_iter()
                .map(|r| {
                    let a = r?;
                    if first {
                        done.status = a.status;
                        first = false;
                    }
                    done.headers.extend(a.headers);
                    if part.shape.is_identity() {
                        Ok(a.value)
                    } else {
                        part.shape.apply(a.value).map_err(PartError::new)
                    }
                })
                .collect()
        }
    };
    let mut values = Vec::with_capacity(outcomes.len());
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            Ok(v) => values.push(v),
            Err(e) if each.on_error == OnItemError::FailPart => {
                return Err(PartError {
                    reason: format!("item {i}: {}", e.reason),
                    ..e
                });
            }
            Err(e) => {
                values.push(Value::Null);
                done.item_errors.push((i, e));
            }
        }
    }
    done.value = Value::Array(values);
    Ok(done)
}

fn describe(call: &Call<'_>, each: &Each) -> String {
    let source = call
        .plan
        .parts
        .get(each.source)
        .map_or("", |p| p.name.as_str());
    std::iter::once(source)
        .chain(each.path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(".")
}

/// Sends the item requests, at most `cap` at once, and returns their
/// outcomes in item order. The answers' bodies together may not pass the
/// composite's `max_body_bytes` (they all end up in it): beyond, no more
/// calls start and the part fails. So a part holds at most that plus `cap`
/// calls of `max_part_bytes` each.
async fn run_items(
    call: &Call<'_>,
    cap: usize,
    requests: Vec<Result<Built, PartError>>,
) -> Result<Vec<Result<Answer, PartError>>, PartError> {
    let budget = call.plan.max_body_bytes;
    let mut total: u64 = 0;
    type Pending<'f> = Pin<Box<dyn Future<Output = Result<Answer, PartError>> + 'f>>;
    let n = requests.len();
    let mut outcomes: Vec<Option<Result<Answer, PartError>>> = (0..n).map(|_| None).collect();
    let mut queue = requests.into_iter().enumerate();
    let mut queue_done = false;
    let mut active: Vec<(usize, Pending<'_>)> = Vec::with_capacity(cap.min(n));
    std::future::poll_fn(|cx| loop {
        while !queue_done && active.len() < cap {
            match queue.next() {
                Some((i, Ok((bytes, host_at)))) => {
                    active.push((i, Box::pin(call.send(bytes, host_at))));
                }
                Some((i, Err(e))) => {
                    if let Some(o) = outcomes.get_mut(i) {
                        *o = Some(Err(e));
                    }
                }
                None => queue_done = true,
            }
        }
        let before = active.len();
        active.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            Poll::Ready(r) => {
                if let Ok(a) = &r {
                    total = total.saturating_add(a.bytes as u64);
                }
                if let Some(o) = outcomes.get_mut(*i) {
                    *o = Some(r);
                }
                false
            }
            Poll::Pending => true,
        });
        if total > budget {
            return Poll::Ready(());
        }
        if queue_done && active.is_empty() {
            return Poll::Ready(());
        }
        if active.len() == before {
            return Poll::Pending;
        }
    })
    .await;
    drop(active);
    if total > budget {
        return Err(PartError::new(format!(
            "the items' answers are larger than {budget} bytes (max_body_bytes)"
        )));
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(PartError::new("did not run"))))
        .collect())
}

/// Joins a batch answer's elements back to the items: item `i` gets the
/// element whose `key` field has the text `item_keys[i]` (the first such
/// element; an element matched by several items is copied). An item
/// without a key or without a matching element gets an error.
pub fn join_batch(
    list: Vec<Value>,
    key: &[String],
    item_keys: &[Option<String>],
) -> Vec<Result<Value, String>> {
    // Which element each item gets, found while the keys are borrowed.
    let found: Vec<Option<usize>> = {
        let mut by_key: HashMap<Cow<'_, str>, usize> = HashMap::with_capacity(list.len());
        for (i, e) in list.iter().enumerate() {
            if let Some(k) = select(e, key).and_then(scalar_str) {
                by_key.entry(k).or_insert(i);
            }
        }
        item_keys
            .iter()
            .map(|k| k.as_deref().and_then(|k| by_key.get(k).copied()))
            .collect()
    };
    let mut elements: Vec<Option<Value>> = list.into_iter().map(Some).collect();
    // Where an element went, for a second item with the same key.
    let mut given_to: Vec<Option<usize>> = vec![None; elements.len()];
    let mut out: Vec<Result<Value, String>> = Vec::with_capacity(item_keys.len());
    for (i, (k, at)) in item_keys.iter().zip(found).enumerate() {
        let (Some(_), Some(at)) = (k, at) else {
            out.push(Err(match k {
                None => "the item has no key".into(),
                Some(k) => format!("the batch answer has no element for {k:?}"),
            }));
            continue;
        };
        let earlier = given_to.get(at).copied().flatten();
        let v = match (elements.get_mut(at).and_then(Option::take), earlier) {
            (Some(v), _) => v,
            (None, Some(j)) => match out.get(j) {
                Some(Ok(v)) => v.clone(),
                _ => Value::Null,
            },
            (None, None) => Value::Null,
        };
        if let Some(g) = given_to.get_mut(at) {
            g.get_or_insert(i);
        }
        out.push(Ok(v));
    }
    out
}

/// Places a `for_each` part's answers into its source's array: element `i`
/// gets answer `i` under `each.into` (an element that is not an object is
/// replaced by its answer). Items listed in `failed` are left as they are.
pub fn place(source: &mut Value, each: &Each, answers: Value, failed: &[usize]) {
    let Value::Array(answers) = answers else {
        return;
    };
    let Some(Value::Array(elements)) = select_mut(source, &each.path) else {
        return;
    };
    for (i, (e, a)) in elements.iter_mut().zip(answers).enumerate() {
        if failed.contains(&i) {
            continue;
        }
        match e {
            Value::Object(m) => {
                m.insert(each.into.clone(), a);
            }
            other => *other = a,
        }
    }
}

fn select_mut<'v>(root: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |v, seg| match v {
        Value::Object(m) => m.get_mut(seg),
        Value::Array(a) => {
            let i = super::template::index_of(a.len(), seg)?;
            a.get_mut(i)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn joins_by_key_with_missing_and_repeated_items() {
        let list = vec![
            json!({"id": "p-2", "name": "mouse"}),
            json!({"id": "p-1", "name": "keyboard"}),
            json!({"id": 3, "name": "pad"}),
        ];
        let keys = vec![
            Some("p-1".to_string()),
            Some("p-9".to_string()),
            None,
            Some("p-1".to_string()),
            Some("3".to_string()),
        ];
        let got = join_batch(list, &["id".to_string()], &keys);
        assert_eq!(got[0], Ok(json!({"id": "p-1", "name": "keyboard"})));
        assert!(got[1].as_ref().unwrap_err().contains("p-9"));
        assert!(got[2].is_err());
        assert_eq!(got[3], Ok(json!({"id": "p-1", "name": "keyboard"})));
        assert_eq!(got[4], Ok(json!({"id": 3, "name": "pad"})));
    }

    #[test]
    fn places_answers_into_elements() {
        let each = Each {
            source: 0,
            path: vec!["items".into()],
            into: "product".into(),
            max_items: 10,
            max_concurrency: 2,
            on_error: OnItemError::Report,
            batch: None,
        };
        let mut order = json!({"items": [{"pid": 1}, {"pid": 2}, 7]});
        place(
            &mut order,
            &each,
            json!([{"n": "a"}, null, {"n": "c"}]),
            &[1],
        );
        assert_eq!(
            order,
            json!({"items": [{"pid": 1, "product": {"n": "a"}}, {"pid": 2}, {"n": "c"}]})
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Every item gets the element whose key is its own, whatever
            /// the answer's order, repeats or gaps.
            #[test]
            fn each_item_gets_its_own_element(
                answer_ids in proptest::collection::vec(0u8..12, 0..20),
                item_ids in proptest::collection::vec(0u8..12, 0..20),
            ) {
                let list: Vec<Value> = answer_ids.iter().enumerate()
                    .map(|(pos, id)| json!({"id": format!("p{id}"), "pos": pos}))
                    .collect();
                let keys: Vec<Option<String>> = item_ids.iter().map(|id| Some(format!("p{id}"))).collect();
                let got = join_batch(list, &["id".to_string()], &keys);
                prop_assert_eq!(got.len(), item_ids.len());
                for (id, r) in item_ids.iter().zip(&got) {
                    match answer_ids.iter().position(|a| a == id) {
                        Some(first) => prop_assert_eq!(r, &Ok(json!({"id": format!("p{id}"), "pos": first}))),
                        None => prop_assert!(r.is_err()),
                    }
                }
            }
        }
    }
}
