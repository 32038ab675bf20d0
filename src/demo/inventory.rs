//! The demo's gRPC inventory backend: `inventory.v1.Inventory` (see
//! `protos/inventory.proto`) over h2c, on the gateway's own HTTP/2 server,
//! with messages decoded and encoded by prost-reflect from the bundled
//! descriptor set. The stock lives in memory on the backend's thread.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use monoio::net::TcpListener;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};
use serde_json::{json, Value};

use crate::grpc::status::encode_grpc_message;
use crate::grpc::{frame, Code};
use crate::h2::{serve_h2c, H2Limits, RecvBody, Responder, Shutdown};

/// The descriptor set of `protos/inventory.proto`, compiled in.
pub const DESCRIPTORS: &[u8] = include_bytes!("../../protos/inventory.pb");

/// Largest request message taken.
const MAX_MESSAGE: usize = 1 << 20;

/// A call's failure: its status and message.
type Failed = (Code, String);

struct Inventory {
    pool: DescriptorPool,
    /// Items by sku, in their canonical JSON form.
    items: RefCell<BTreeMap<String, Value>>,
    next_reservation: RefCell<u64>,
}

/// Starts the inventory backend on `addr` (on its own thread and monoio
/// runtime); returns the address it listens on.
pub fn start(addr: &str) -> Result<SocketAddr, String> {
    let l = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("cannot bind the demo inventory backend on {addr}: {e}"))?;
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let bound = l.local_addr().map_err(|e| e.to_string())?;
    let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| format!("descriptors: {e}"))?;
    std::thread::Builder::new()
        .name("shardgate-demo-grpc".into())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build();
            let Ok(mut rt) = rt else {
                eprintln!("shardgate: demo inventory: cannot build runtime");
                return;
            };
            rt.block_on(serve(l, pool));
        })
        .map_err(|e| e.to_string())?;
    Ok(bound)
}

async fn serve(l: std::net::TcpListener, pool: DescriptorPool) {
    let listener = match TcpListener::from_std(l) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("shardgate: demo inventory: {e}");
            return;
        }
    };
    let state = Rc::new(Inventory {
        pool,
        items: RefCell::new(seed()),
        next_reservation: RefCell::new(1),
    });
    let limits = Rc::new(H2Limits::default());
    let shutdown: Rc<Shutdown> = Shutdown::new();
    let handler = Rc::new(move |req: Request<RecvBody>, res: Responder| {
        let state = state.clone();
        async move { call(&state, req, res).await }
    });
    while let Ok((stream, _)) = listener.accept().await {
        let limits = limits.clone();
        let shutdown = shutdown.clone();
        let handler = handler.clone();
        monoio::spawn(async move {
            let _ = serve_h2c(stream, Bytes::new(), &limits, shutdown, handler).await;
        });
    }
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// RFC 3339 (a Timestamp's JSON form) of `secs` after the epoch.
fn timestamp(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    crate::observe::rfc3339_millis(UNIX_EPOCH + Duration::from_secs(secs))
}

fn seed() -> BTreeMap<String, Value> {
    let updated = timestamp(now_s());
    let items = [
        json!({"sku": "sku-1001", "name": "torque wrench", "kind": "KIND_TOOL",
               "tags": ["metric", "calibrated"],
               "dimensions": {"widthMm": 40, "heightMm": 20, "depthMm": 410},
               "locations": [{"warehouse": "north", "shelf": "A3", "bin": 7}],
               "quantity": "12", "updatedAt": updated, "restockLeadTime": "172800s",
               "reorderLevel": 4, "note": "calibrate yearly",
               "attributes": {"brand": "acme"}}),
        json!({"sku": "sku-1002", "name": "M6 hex bolt", "kind": "KIND_PART",
               "tags": ["steel"], "locations": [{"warehouse": "south", "shelf": "C1", "bin": 2}],
               "quantity": "2500", "updatedAt": updated, "restockLeadTime": "86400s",
               "reorderLevel": 500}),
        json!({"sku": "sku-1003", "name": "cutting oil", "kind": "KIND_CONSUMABLE",
               "quantity": "0", "updatedAt": updated, "discontinued": true}),
    ];
    items
        .into_iter()
        .filter_map(|i| Some((i.get("sku")?.as_str()?.to_string(), i)))
        .collect()
}

/// Serves one call: `/inventory.v1.Inventory/<Method>`.
async fn call(state: &Inventory, req: Request<RecvBody>, res: Responder) {
    let path = req.uri().path().to_string();
    let (_, mut body) = req.into_parts();
    let Some(method) = path.strip_prefix("/inventory.v1.Inventory/") else {
        return fail(res, Code::Unimplemented, &format!("no service at {path}"));
    };
    let Some(m) = state
        .pool
        .get_service_by_name("inventory.v1.Inventory")
        .and_then(|s| s.methods().find(|x| x.name() == method))
    else {
        return fail(res, Code::Unimplemented, &format!("no method {method}"));
    };
    let input = match body.collect(MAX_MESSAGE + frame::HEADER_LEN).await {
        Ok(b) => b,
        Err(_) => return fail(res, Code::ResourceExhausted, "request too large"),
    };
    let request = match frame::decode_all(&input, MAX_MESSAGE)
        .map_err(|e| e.to_string())
        .and_then(|msgs| match msgs.as_slice() {
            [one] => DynamicMessage::decode(m.input(), *one).map_err(|e| e.to_string()),
            _ => Err("a unary request holds one message".to_string()),
        })
        .and_then(|msg| serde_json::to_value(&msg).map_err(|e| e.to_string()))
    {
        Ok(v) => v,
        Err(e) => return fail(res, Code::InvalidArgument, &e),
    };
    let answers = match method {
        "GetItem" => get_item(state, &request).map(|v| vec![v]),
        "ListItems" => Ok(list_items(state, &request)),
        "CreateItem" => create_item(state, &request).map(|v| vec![v]),
        "UpdateItem" => update_item(state, &request).map(|v| vec![v]),
        "ReserveItem" => reserve_item(state, &request).map(|v| vec![v]),
        other => Err((Code::Unimplemented, format!("no method {other}"))),
    };
    let answers = match answers {
        Ok(a) => a,
        Err((code, message)) => return fail(res, code, &message),
    };
    let head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(())
        .unwrap_or_default();
    let Ok(Some(mut send)) = res.send_head(head, false) else {
        return;
    };
    for v in answers {
        let Some(bytes) = encode(&m.output(), v) else {
            continue;
        };
        if send.send(Bytes::from(bytes)).await.is_err() {
            return;
        }
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let _ = send.trailers(trailers);
}

/// A message from its JSON, as one frame.
fn encode(desc: &MessageDescriptor, v: Value) -> Option<Vec<u8>> {
    let msg = DynamicMessage::deserialize(desc.clone(), v).ok()?;
    let mut out = Vec::new();
    frame::encode(&msg.encode_to_vec(), &mut out).ok()?;
    Some(out)
}

/// A trailers-only answer with a non-OK status.
fn fail(res: Responder, code: Code, message: &str) {
    let mut head = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", code.as_i32().to_string());
    if let Ok(v) = HeaderValue::from_str(&encode_grpc_message(message)) {
        head = head.header("grpc-message", v);
    }
    let _ = res.send_head(head.body(()).unwrap_or_default(), true);
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn int_of(v: &Value, key: &str) -> i64 {
    match v.get(key) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn get_item(state: &Inventory, req: &Value) -> Result<Value, Failed> {
    let sku = str_of(req, "sku");
    state
        .items
        .borrow()
        .get(sku)
        .cloned()
        .ok_or_else(|| (Code::NotFound, format!("no item with sku {sku:?}")))
}

fn list_items(state: &Inventory, req: &Value) -> Vec<Value> {
    let filter = req.get("filter").cloned().unwrap_or(Value::Null);
    let kind = str_of(&filter, "kind");
    let warehouse = str_of(&filter, "warehouse");
    let with_discontinued = filter
        .get("includeDiscontinued")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let size = usize::try_from(int_of(req, "pageSize")).unwrap_or(0);
    state
        .items
        .borrow()
        .values()
        .filter(|i| kind.is_empty() || str_of(i, "kind") == kind)
        .filter(|i| {
            warehouse.is_empty()
                || i.get("locations")
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().any(|l| str_of(l, "warehouse") == warehouse))
        })
        .filter(|i| {
            with_discontinued
                || !i
                    .get("discontinued")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
        })
        .take(if size == 0 { usize::MAX } else { size })
        .cloned()
        .collect()
}

fn create_item(state: &Inventory, req: &Value) -> Result<Value, Failed> {
    let mut item = req.get("item").cloned().unwrap_or_else(|| json!({}));
    let sku = str_of(&item, "sku").to_string();
    if sku.is_empty() {
        return Err((Code::InvalidArgument, "item.sku is required".into()));
    }
    let mut items = state.items.borrow_mut();
    if items.contains_key(&sku) {
        return Err((Code::AlreadyExists, format!("item {sku:?} exists")));
    }
    if let Some(obj) = item.as_object_mut() {
        obj.insert("updatedAt".into(), Value::String(timestamp(now_s())));
    }
    items.insert(sku, item.clone());
    Ok(item)
}

fn update_item(state: &Inventory, req: &Value) -> Result<Value, Failed> {
    let patch = req.get("item").cloned().unwrap_or_else(|| json!({}));
    let sku = str_of(&patch, "sku").to_string();
    let allow_missing = req
        .get("allowMissing")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut items = state.items.borrow_mut();
    let mut item = match items.get(&sku) {
        Some(i) => i.clone(),
        None if allow_missing => json!({ "sku": sku }),
        None => return Err((Code::NotFound, format!("no item with sku {sku:?}"))),
    };
    if let (Some(obj), Some(p)) = (item.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            obj.insert(k.clone(), v.clone());
        }
        obj.insert("updatedAt".into(), Value::String(timestamp(now_s())));
    }
    items.insert(sku, item.clone());
    Ok(item)
}

fn reserve_item(state: &Inventory, req: &Value) -> Result<Value, Failed> {
    let sku = str_of(req, "sku").to_string();
    let wanted = int_of(req, "quantity");
    if wanted <= 0 {
        return Err((Code::InvalidArgument, "quantity must be positive".into()));
    }
    let hold = req
        .get("holdFor")
        .and_then(Value::as_str)
        .and_then(|d| d.strip_suffix('s'))
        .and_then(|d| d.parse::<f64>().ok())
        .map_or(Duration::from_secs(900), Duration::from_secs_f64);
    let mut items = state.items.borrow_mut();
    let item = items
        .get_mut(&sku)
        .ok_or_else(|| (Code::NotFound, format!("no item with sku {sku:?}")))?;
    let have = int_of(item, "quantity");
    if have < wanted {
        return Err((
            Code::FailedPrecondition,
            format!("only {have} of {sku:?} in stock"),
        ));
    }
    if let Some(obj) = item.as_object_mut() {
        obj.insert(
            "quantity".into(),
            Value::String((have - wanted).to_string()),
        );
    }
    let mut next = state.next_reservation.borrow_mut();
    let id = format!("r-{}", *next);
    *next += 1;
    Ok(json!({
        "reservationId": id,
        "sku": sku,
        "quantity": wanted.to_string(),
        "expiresAt": timestamp(now_s() + hold.as_secs() as i64),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc_3339() {
        assert_eq!(timestamp(1_704_164_645), "2024-01-02T03:04:05.000Z");
    }

    #[test]
    fn the_bundled_descriptors_hold_the_service() {
        let pool = DescriptorPool::decode(DESCRIPTORS).unwrap();
        assert!(pool.get_service_by_name("inventory.v1.Inventory").is_some());
        for item in seed().into_values() {
            let desc = pool.get_message_by_name("inventory.v1.Item").unwrap();
            assert!(encode(&desc, item).is_some());
        }
    }
}
