"""Response framing shared by client.py and busy.py."""


def split_response(buf):
    """The status (text) of the first whole response in `buf` (a head and a
    Content-Length body) and the bytes after it, or None while incomplete."""
    if b"\r\n\r\n" not in buf:
        return None
    head, rest = buf.split(b"\r\n\r\n", 1)
    cl = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            cl = int(v)
    if len(rest) < cl:
        return None
    return head.split(b" ", 2)[1].decode(), rest[cl:]
