"""A gRPC-Web client on Python's http.client, for the gateway tests.

usage: h2up_web_client.py PORT PATH PAYLOAD binary|text [release]

Sends one gRPC-Web call (one message frame), reads the answer as it
streams, decodes its frames (base64 for -text, in 4-char groups, padded
segments allowed) and prints JSON: status, content_type, messages,
trailers (from the trailer frame), header_status (grpc-status in the
headers: a trailers-only answer), and with `release`: how many messages
had arrived when the first one was seen (then it calls test.Echo/Release
through the gateway, so the server sends the rest).
"""

import base64
import http.client
import json
import sys


def frame(payload, text):
    body = b"\x00" + len(payload).to_bytes(4, "big") + payload
    return base64.b64encode(body) if text else body


def decode_text(raw):
    """Decodes the complete 4-char groups of raw; returns (bytes, rest)."""
    whole = len(raw) // 4 * 4
    out = b""
    start = 0
    for end in range(4, whole + 1, 4):
        if b"=" in raw[end - 4:end] or end == whole:
            out += base64.b64decode(raw[start:end], validate=True)
            start = end
    return out, raw[whole:]


def call(port, path, payload, text, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    ct = "application/grpc-web-text" if text else "application/grpc-web+proto"
    h = {"content-type": ct, "x-grpc-web": "1", "accept": ct}
    h.update(headers or {})
    conn.request("POST", path, body=frame(payload, text), headers=h)
    return conn, conn.getresponse()


def main():
    port = int(sys.argv[1])
    path = sys.argv[2]
    payload = sys.argv[3].encode()
    text = sys.argv[4] == "text"
    release = len(sys.argv) > 5 and sys.argv[5] == "release"
    conn, resp = call(port, path, payload, text)
    out = {
        "status": resp.status,
        "content_type": resp.getheader("content-type"),
        "header_status": resp.getheader("grpc-status"),
        "header_message": resp.getheader("grpc-message"),
        "messages": [],
        "trailers": {},
    }
    raw = b""
    buf = b""
    while True:
        data = resp.read1(65536)
        if not data:
            break
        if text:
            decoded, raw = decode_text(raw + data)
            buf += decoded
        else:
            buf += data
        while len(buf) >= 5:
            n = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + n:
                break
            flag, body, buf = buf[0], buf[5:5 + n], buf[5 + n:]
            if flag & 0x80:
                for line in body.decode().split("\r\n"):
                    if line:
                        k, v = line.split(":", 1)
                        out["trailers"][k.strip()] = v.strip()
            else:
                out["messages"].append(body.decode())
        if release and out["messages"] and "seen_at_first" not in out:
            out["seen_at_first"] = len(out["messages"])
            c2, r2 = call(port, "/test.Echo/Release", b"", False)
            r2.read()
            c2.close()
    out["leftover"] = len(buf) + len(raw)
    conn.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
