"""A gRPC inventory.v1.Inventory server for the transcoding tests.

Message classes come from the descriptor set (argv[1]) through a descriptor
pool and a message factory; no generated code. Prints `PORT <n>` once it
listens on 127.0.0.1, then serves until killed.

Behaviour:
- GetItem: sku `slow` -> answers after 2 s; `missing` -> NOT_FOUND with a google.rpc.Status detail (the
  request echoed as an Any); `bad` -> INVALID_ARGUMENT; `__calls` -> an item
  whose quantity is the number of calls so far; otherwise a full item whose
  `attributes` echo the request's view and the metadata seen, with the
  initial metadata `x-served-by: python-grpc`.
- ListItems: page_size items (default 3); the first one's note holds the
  request as JSON; filter.warehouse `fail-mid` -> two items then UNAVAILABLE,
  `fail-first` -> NOT_FOUND before any item, `slow` -> 0.3 s between items.
- CreateItem: the body's item back, attributes.request_id set.
- UpdateItem: the item back, attributes.allow_missing set.
- ReserveItem: a reservation expiring hold_for after 2024-01-01T00:00:00Z.
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

pool = descriptor_pool.DescriptorPool()
fds = descriptor_pb2.FileDescriptorSet.FromString(open(sys.argv[1], "rb").read())
for f in fds.file:
    pool.Add(f)


def cls(name):
    desc = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


Item = cls("inventory.v1.Item")
GetItemRequest = cls("inventory.v1.GetItemRequest")
ListItemsRequest = cls("inventory.v1.ListItemsRequest")
CreateItemRequest = cls("inventory.v1.CreateItemRequest")
UpdateItemRequest = cls("inventory.v1.UpdateItemRequest")
ReserveItemRequest = cls("inventory.v1.ReserveItemRequest")
Reservation = cls("inventory.v1.Reservation")

calls = 0
lock = threading.Lock()


def count():
    global calls
    with lock:
        calls += 1
        return calls


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, data):
    return varint(field << 3 | 2) + varint(len(data)) + data


def rpc_status(code, message, type_url, value):
    any_ = ld(1, type_url.encode()) + ld(2, value)
    return varint(1 << 3) + varint(code) + ld(2, message.encode()) + ld(3, any_)


def full_item(sku):
    it = Item()
    it.sku = sku
    it.name = "torque wrench"
    it.kind = 1  # KIND_TOOL
    it.tags.extend(["metric", "calibrated"])
    it.dimensions.width_mm = 40.5
    it.dimensions.height_mm = 20
    it.dimensions.depth_mm = 410
    loc = it.locations.add()
    loc.warehouse = "north"
    loc.shelf = "A3"
    loc.bin = 7
    loc = it.locations.add()
    loc.warehouse = "south"
    loc.shelf = "C1"
    loc.bin = 2
    it.quantity = 12
    it.updated_at.seconds = 1704164645  # 2024-01-02T03:04:05Z
    it.updated_at.nanos = 500000000
    it.restock_lead_time.seconds = 3
    it.restock_lead_time.nanos = 500000000
    it.reorder_level.value = 4
    it.note.value = "fragile"
    return it


def get_item(req, ctx):
    n = count()
    if req.sku == "missing":
        detail = rpc_status(5, "no item missing", "type.googleapis.com/inventory.v1.GetItemRequest",
                            req.SerializeToString())
        ctx.set_trailing_metadata((("grpc-status-details-bin", detail),))
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no item with sku missing")
    if req.sku == "slow":
        time.sleep(2)
    if req.sku == "bad":
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "sku bad is not a valid sku")
    ctx.send_initial_metadata((("x-served-by", "python-grpc"),))
    it = full_item(req.sku)
    if req.sku == "__calls":
        it.quantity = n
    it.attributes["view"] = req.view
    for k, v in ctx.invocation_metadata():
        if not k.endswith("-bin"):
            it.attributes["md." + k] = v
    if ctx.time_remaining() is not None:
        it.attributes["deadline"] = "set"
    return it


def list_items(req, ctx):
    count()
    if req.filter.warehouse == "fail-first":
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no warehouse fail-first")
    n = req.page_size or 3
    for i in range(n):
        if req.filter.warehouse == "fail-mid" and i == 2:
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "warehouse went away")
        if req.filter.warehouse == "slow" and i > 0:
            time.sleep(0.3)
        it = Item()
        it.sku = "s-%d" % i
        it.quantity = i
        it.restock_lead_time.seconds = 60 * (i + 1)
        if i == 0:
            it.note.value = json_format.MessageToJson(req, indent=None, preserving_proto_field_name=True)
        yield it


def create_item(req, ctx):
    count()
    it = Item()
    it.CopyFrom(req.item)
    if not it.sku:
        it.sku = "new"
    it.attributes["request_id"] = req.request_id
    return it


def update_item(req, ctx):
    count()
    it = Item()
    it.CopyFrom(req.item)
    it.attributes["allow_missing"] = "true" if req.allow_missing else "false"
    return it


def reserve_item(req, ctx):
    count()
    r = Reservation()
    r.reservation_id = "r-1"
    r.sku = req.sku
    r.quantity = req.quantity
    r.expires_at.seconds = 1704067200 + req.hold_for.seconds
    r.expires_at.nanos = req.hold_for.nanos
    return r


def unary(fn, req_cls):
    return grpc.unary_unary_rpc_method_handler(
        fn, request_deserializer=req_cls.FromString, response_serializer=lambda m: m.SerializeToString())


handlers = {
    "GetItem": unary(get_item, GetItemRequest),
    "ListItems": grpc.unary_stream_rpc_method_handler(
        list_items, request_deserializer=ListItemsRequest.FromString,
        response_serializer=lambda m: m.SerializeToString()),
    "CreateItem": unary(create_item, CreateItemRequest),
    "UpdateItem": unary(update_item, UpdateItemRequest),
    "ReserveItem": unary(reserve_item, ReserveItemRequest),
}

server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("inventory.v1.Inventory", handlers),))
if len(sys.argv) > 3:
    # TLS: certificate and key files (PEM) after the descriptor set.
    creds = grpc.ssl_server_credentials(
        [(open(sys.argv[3], "rb").read(), open(sys.argv[2], "rb").read())])
    port = server.add_secure_port("127.0.0.1:0", creds)
else:
    port = server.add_insecure_port("127.0.0.1:0")
server.start()
print("PORT %d" % port, flush=True)
server.wait_for_termination()
