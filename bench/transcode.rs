//! HTTP/JSON ⇄ gRPC transcoding cost per call for a message of about
//! 1 KiB (an inventory.v1.Item with tags, locations, attributes and
//! well-known types, from protos/inventory.pb):
//! - `json_to_frame/body_star`: POST /v1/inventory (`body: "*"`): JSON body
//!   → CreateItemRequest → protobuf bytes in a gRPC frame;
//! - `json_to_frame/path_query_body`: PATCH /v1/inventory/{item.sku} with
//!   `body: "item"` and a query parameter (the merged-tree path);
//! - `frame_to_json`: a gRPC frame holding an Item → JSON;
//! - `round_trip`: the first and the third together (one call both ways);
//! - `match`: the route matcher alone.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use prost::Message as _;
use prost_reflect::DynamicMessage;
use shardgate::grpc::frame;
use shardgate::grpc::{JsonOptions, Transcoder};

fn item_json() -> serde_json::Value {
    let locations: Vec<serde_json::Value> = (0..6)
        .map(|i| {
            serde_json::json!({"warehouse": format!("warehouse-{i}"), "shelf": format!("aisle-{i}-shelf-B{i}"), "bin": 100 + i})
        })
        .collect();
    let attributes: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|i| {
            (
                format!("attribute-{i}"),
                serde_json::Value::String(format!("value number {i} of the item")),
            )
        })
        .collect();
    serde_json::json!({
        "sku": "T-100-2048-XL",
        "name": "Torque wrench, 1/2 inch drive, 40-200 Nm, with case and calibration certificate",
        "kind": "KIND_TOOL",
        "tags": ["hand-tool", "metric", "calibrated", "workshop", "heavy", "warranty-2y", "export", "restricted"],
        "dimensions": {"widthMm": 40.5, "heightMm": 512.25, "depthMm": 25.0},
        "locations": locations,
        "quantity": "1250",
        "updatedAt": "2024-05-01T10:00:00.500Z",
        "restockLeadTime": "86400.250s",
        "reorderLevel": 25,
        "note": "Handle with care: recalibrate after 5000 cycles or twelve months, whichever comes first.",
        "attributes": attributes
    })
}

fn transcoding(c: &mut Criterion) {
    let pb = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/protos/inventory.pb"))
        .expect("protos/inventory.pb");
    let t = Transcoder::from_bytes(&pb, "inventory.v1.Inventory", &[], JsonOptions::default())
        .expect("transcoder");

    let create_body =
        serde_json::to_vec(&serde_json::json!({"item": item_json(), "requestId": "req-1"}))
            .expect("json");
    let item_body = serde_json::to_vec(&item_json()).expect("json");
    let item_desc = t
        .pool()
        .get_message_by_name("inventory.v1.Item")
        .expect("Item");
    let item = DynamicMessage::deserialize(item_desc, item_json()).expect("item");
    let mut item_frame = Vec::new();
    frame::encode(&item.encode_to_vec(), &mut item_frame).expect("frame");
    let get = t
        .find("GET", "/v1/inventory/T-100-2048-XL")
        .expect("GetItem")
        .binding;
    println!(
        "request JSON {} bytes, Item JSON {} bytes, Item protobuf {} bytes",
        create_body.len(),
        item_body.len(),
        item_frame.len() - frame::HEADER_LEN
    );

    let mut g = c.benchmark_group("transcode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("json_to_frame/body_star", |b| {
        b.iter(|| {
            let m = t.find("POST", black_box("/v1/inventory")).expect("match");
            t.request_frame(&m, None, black_box(&create_body))
                .expect("frame")
        })
    });
    g.bench_function("json_to_frame/path_query_body", |b| {
        b.iter(|| {
            let m = t
                .find("PATCH", black_box("/v1/inventory/T-100-2048-XL"))
                .expect("match");
            t.request_frame(&m, Some("allow_missing=true"), black_box(&item_body))
                .expect("frame")
        })
    });
    g.bench_function("frame_to_json", |b| {
        b.iter(|| t.unary_response(get, black_box(&item_frame)).expect("json"))
    });
    g.bench_function("round_trip", |b| {
        b.iter(|| {
            let m = t.find("POST", black_box("/v1/inventory")).expect("match");
            let f = t
                .request_frame(&m, None, black_box(&create_body))
                .expect("frame");
            let j = t.unary_response(get, black_box(&item_frame)).expect("json");
            (f, j)
        })
    });
    g.bench_function("match", |b| {
        b.iter(|| {
            t.find("PATCH", black_box("/v1/inventory/T-100-2048-XL"))
                .map(|m| m.params.len())
        })
    });
    g.finish();
}

criterion_group!(benches, transcoding);
criterion_main!(benches);
