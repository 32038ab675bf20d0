//! gRPC status codes: their HTTP statuses for transcoded answers (the
//! mapping published with google.rpc.Code), the HTTP statuses of gateway
//! errors as gRPC codes for gRPC clients, and the JSON error body of a
//! transcoded call (`code`, `message`, `details` from
//! `grpc-status-details-bin`).

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{json, Map, Value};

/// The gRPC status codes (google.rpc.Code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

const ALL: [Code; 17] = [
    Code::Ok,
    Code::Cancelled,
    Code::Unknown,
    Code::InvalidArgument,
    Code::DeadlineExceeded,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::Unimplemented,
    Code::Internal,
    Code::Unavailable,
    Code::DataLoss,
    Code::Unauthenticated,
];

impl Code {
    /// The code of a number; numbers outside 0..=16 are `Unknown`, as the
    /// gRPC spec asks of clients.
    pub fn from_i32(n: i32) -> Code {
        usize::try_from(n)
            .ok()
            .and_then(|i| ALL.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The code of a `grpc-status` trailer value; unparsable is `Unknown`.
    pub fn from_header(value: &str) -> Code {
        value
            .trim()
            .parse::<i32>()
            .map_or(Code::Unknown, Code::from_i32)
    }

    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The canonical name, `NOT_FOUND`.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The HTTP status of a transcoded answer with this code, as
    /// google/rpc/code.proto documents each code.
    pub fn http_status(self) -> u16 {
        match self {
            Code::Ok => 200,
            Code::Cancelled => 499,
            Code::Unknown => 500,
            Code::InvalidArgument => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 400,
            Code::Aborted => 409,
            Code::OutOfRange => 400,
            Code::Unimplemented => 501,
            Code::Internal => 500,
            Code::Unavailable => 503,
            Code::DataLoss => 500,
            Code::Unauthenticated => 401,
        }
    }

    /// The code a gRPC client sees for an error the gateway itself answers
    /// with HTTP status `status` (auth, rate limits, upstream failures):
    /// the meaning of the gateway's status, not grpc's table for statuses
    /// from a non-gRPC server (which would make a 429 UNAVAILABLE).
    pub fn from_gateway_status(status: u16) -> Code {
        match status {
            200..=299 => Code::Ok,
            400 | 411 | 414 | 415 | 422 | 431 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 | 405 | 501 => Code::Unimplemented,
            408 | 504 => Code::DeadlineExceeded,
            409 => Code::Aborted,
            412 => Code::FailedPrecondition,
            413 | 429 => Code::ResourceExhausted,
            499 => Code::Cancelled,
            500 => Code::Internal,
            502 | 503 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// Base64 as gRPC binary headers carry it: standard alphabet, padding
/// optional.
const BIN_HEADER: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes a `-bin` header value.
pub fn decode_bin_header(value: &str) -> Result<Vec<u8>, String> {
    BIN_HEADER
        .decode(value.trim())
        .map_err(|e| format!("bad base64 in a -bin header: {e}"))
}

/// Encodes bytes for a `-bin` header (unpadded, as gRPC implementations send).
pub fn encode_bin_header(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

/// Undoes the percent-encoding of a `grpc-message` trailer; malformed
/// escapes stay as they are (the spec asks receivers not to fail).
pub fn decode_grpc_message(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a message for a `grpc-message` trailer (everything
/// outside printable ASCII, and `%`).
pub fn encode_grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A decoded google.rpc.Status (`grpc-status-details-bin`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RpcStatus {
    pub code: i32,
    pub message: String,
    /// google.protobuf.Any values: (type URL, bytes).
    pub details: Vec<(String, Vec<u8>)>,
}

/// Decodes a serialized google.rpc.Status (fields 1 code, 2 message,
/// 3 repeated Any{1 type_url, 2 value}); unknown fields are skipped.
pub fn decode_rpc_status(mut buf: &[u8]) -> Result<RpcStatus, String> {
    let mut status = RpcStatus::default();
    while !buf.is_empty() {
        let (field, value) = next_field(&mut buf)?;
        match (field, value) {
            (1, Wire::Varint(v)) => status.code = v as i32,
            (2, Wire::Bytes(b)) => status.message = String::from_utf8_lossy(b).into_owned(),
            (3, Wire::Bytes(mut any)) => {
                let mut url = String::new();
                let mut value = Vec::new();
                while !any.is_empty() {
                    match next_field(&mut any)? {
                        (1, Wire::Bytes(b)) => url = String::from_utf8_lossy(b).into_owned(),
                        (2, Wire::Bytes(b)) => value = b.to_vec(),
                        _ => {}
                    }
                }
                status.details.push((url, value));
            }
            _ => {}
        }
    }
    Ok(status)
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn next_field<'a>(buf: &mut &'a [u8]) -> Result<(u64, Wire<'a>), String> {
    let bad = |e: prost::DecodeError| format!("bad google.rpc.Status: {e}");
    let key = prost::encoding::decode_varint(buf).map_err(bad)?;
    let field = key >> 3;
    let wire = match key & 7 {
        0 => Wire::Varint(prost::encoding::decode_varint(buf).map_err(bad)?),
        1 => {
            *buf = buf.get(8..).ok_or("bad google.rpc.Status: truncated")?;
            Wire::Other
        }
        2 => {
            let len = usize::try_from(prost::encoding::decode_varint(buf).map_err(bad)?)
                .map_err(|_| "bad google.rpc.Status: length")?;
            let bytes = buf.get(..len).ok_or("bad google.rpc.Status: truncated")?;
            *buf = buf.get(len..).unwrap_or_default();
            Wire::Bytes(bytes)
        }
        5 => {
            *buf = buf.get(4..).ok_or("bad google.rpc.Status: truncated")?;
            Wire::Other
        }
        other => return Err(format!("bad google.rpc.Status: wire type {other}")),
    };
    Ok((field, wire))
}

/// One detail as JSON: the message by the canonical mapping with its
/// `@type` when `pool` knows the type, else `{"@type", "value": base64}`.
fn detail_json(url: &str, value: &[u8], pool: Option<&DescriptorPool>) -> Value {
    let name = url.rsplit('/').next().unwrap_or(url);
    if let Some(desc) = pool.and_then(|p| p.get_message_by_name(name)) {
        if let Ok(msg) = DynamicMessage::decode(desc, value) {
            if let Ok(Value::Object(fields)) = serde_json::to_value(&msg) {
                let mut obj = Map::with_capacity(fields.len() + 1);
                obj.insert("@type".into(), Value::String(url.to_string()));
                obj.extend(fields);
                return Value::Object(obj);
            }
        }
    }
    json!({"@type": url, "value": base64::engine::general_purpose::STANDARD.encode(value)})
}

/// The JSON error body of a failed transcoded call:
/// `{"code": 5, "status": "NOT_FOUND", "message": "..", "details": [..]}`.
/// `details_bin` is the `grpc-status-details-bin` trailer, if any; a bad
/// one is left out (the code and message still stand).
pub fn error_body(
    code: Code,
    message: &str,
    details_bin: Option<&str>,
    pool: Option<&DescriptorPool>,
) -> Vec<u8> {
    let details: Vec<Value> = details_bin
        .and_then(|v| decode_bin_header(v).ok())
        .and_then(|b| decode_rpc_status(&b).ok())
        .map(|s| {
            s.details
                .iter()
                .map(|(url, value)| detail_json(url, value, pool))
                .collect()
        })
        .unwrap_or_default();
    let body = json!({
        "code": code.as_i32(),
        "status": code.name(),
        "message": message,
        "details": details,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_to_http_statuses() {
        let cases = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in cases {
            assert_eq!(code.http_status(), status, "{}", code.name());
        }
    }

    #[test]
    fn numbers_and_headers_to_codes() {
        for n in 0..=16 {
            assert_eq!(Code::from_i32(n).as_i32(), n);
        }
        assert_eq!(Code::from_i32(17), Code::Unknown);
        assert_eq!(Code::from_i32(-1), Code::Unknown);
        assert_eq!(Code::from_header("5"), Code::NotFound);
        assert_eq!(Code::from_header(" 14 "), Code::Unavailable);
        assert_eq!(Code::from_header("x"), Code::Unknown);
    }

    #[test]
    fn gateway_statuses_to_grpc_codes() {
        assert_eq!(Code::from_gateway_status(401), Code::Unauthenticated);
        assert_eq!(Code::from_gateway_status(403), Code::PermissionDenied);
        assert_eq!(Code::from_gateway_status(429), Code::ResourceExhausted);
        assert_eq!(Code::from_gateway_status(502), Code::Unavailable);
        assert_eq!(Code::from_gateway_status(503), Code::Unavailable);
        assert_eq!(Code::from_gateway_status(504), Code::DeadlineExceeded);
        assert_eq!(Code::from_gateway_status(404), Code::Unimplemented);
        assert_eq!(Code::from_gateway_status(400), Code::InvalidArgument);
        assert_eq!(Code::from_gateway_status(413), Code::ResourceExhausted);
        assert_eq!(Code::from_gateway_status(500), Code::Internal);
        assert_eq!(Code::from_gateway_status(418), Code::Unknown);
    }

    #[test]
    fn grpc_message_percent_coding() {
        let m = "not found: sku é 100%";
        let enc = encode_grpc_message(m);
        assert!(enc.is_ascii());
        assert!(enc.ends_with("100%25"), "{enc}");
        assert_eq!(decode_grpc_message(&enc), m);
        assert_eq!(decode_grpc_message("bad %zz escape %"), "bad %zz escape %");
    }

    /// A google.rpc.Status with one Any detail, encoded by hand.
    fn status_bytes(detail_url: &str, detail: &[u8]) -> Vec<u8> {
        let mut any = Vec::new();
        any.push(0x0a);
        any.push(detail_url.len() as u8);
        any.extend_from_slice(detail_url.as_bytes());
        any.push(0x12);
        any.push(detail.len() as u8);
        any.extend_from_slice(detail);
        let mut s = vec![0x08, 5, 0x12, 7];
        s.extend_from_slice(b"no item");
        s.push(0x1a);
        s.push(any.len() as u8);
        s.extend_from_slice(&any);
        s
    }

    #[test]
    fn rpc_status_decodes() {
        let bytes = status_bytes("type.googleapis.com/x.Y", b"\x08\x01");
        let s = decode_rpc_status(&bytes).unwrap();
        assert_eq!(s.code, 5);
        assert_eq!(s.message, "no item");
        assert_eq!(
            s.details,
            vec![("type.googleapis.com/x.Y".to_string(), vec![8, 1])]
        );
        assert!(decode_rpc_status(&[0x12, 9, b'a']).is_err());
    }

    #[test]
    fn error_body_with_details() {
        let bytes = status_bytes("type.googleapis.com/x.Y", b"\x08\x01");
        let bin = encode_bin_header(&bytes);
        let body = error_body(Code::NotFound, "no item", Some(&bin), None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], 5);
        assert_eq!(v["status"], "NOT_FOUND");
        assert_eq!(v["message"], "no item");
        assert_eq!(v["details"][0]["@type"], "type.googleapis.com/x.Y");
        assert_eq!(v["details"][0]["value"], "CAE=");
        // Padded base64 is accepted too; garbage leaves the details out.
        let padded = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(decode_bin_header(&padded).unwrap(), bytes);
        let body = error_body(Code::Internal, "x", Some("@@@"), None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["details"], json!([]));
    }

    #[test]
    fn error_body_decodes_known_detail_types() {
        let pool = DescriptorPool::decode(
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/protos/inventory.pb"))
                .unwrap()
                .as_slice(),
        )
        .unwrap();
        // A GetItemRequest{sku: "A1"} as the detail.
        let bytes = status_bytes(
            "type.googleapis.com/inventory.v1.GetItemRequest",
            b"\x0a\x02A1",
        );
        let body = error_body(
            Code::NotFound,
            "no item",
            Some(&encode_bin_header(&bytes)),
            Some(&pool),
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["details"][0],
            json!({"@type": "type.googleapis.com/inventory.v1.GetItemRequest", "sku": "A1"})
        );
    }
}
