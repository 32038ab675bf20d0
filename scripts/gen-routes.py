#!/usr/bin/env python3
"""Writes a gateway config with N template routes and one catch-all.

Usage: scripts/gen-routes.py N [options] > routes.ron

Route i (0-based) is

    Route(name: "svc-i", match: Match(path: "/api/v1/svc-i/items/{id}", methods: ["GET", "HEAD"]),
          upstream: "up-<i mod K>", rewrite: "/svc-i/items/{id}")

so the upstream sees which route a request took; the catch-all
(`path_prefix: "/"`, name "catch-all") comes last and goes to "up-0".
Each route sits on its own line, as a config written by a tool would be.

Options:
  --bind ADDR        listener address (default 127.0.0.1:8080)
  --target ADDR      every upstream's target (default 127.0.0.1:9001)
  --upstreams K      number of upstreams the routes are spread over (default 4)
  --shards N         Count(N) shards (default 1)
"""

import argparse
import sys


def main():
    p = argparse.ArgumentParser(usage=__doc__)
    p.add_argument("n", type=int)
    p.add_argument("--bind", default="127.0.0.1:8080")
    p.add_argument("--target", default="127.0.0.1:9001")
    p.add_argument("--upstreams", type=int, default=4)
    p.add_argument("--shards", type=int, default=1)
    a = p.parse_args()
    if a.n < 0 or a.upstreams < 1 or a.shards < 1:
        sys.exit("gen-routes.py: N >= 0, --upstreams >= 1 and --shards >= 1")
    out = sys.stdout
    out.write(f"// {a.n} template routes and a catch-all, written by scripts/gen-routes.py.\n")
    out.write("Gateway(\n")
    out.write(f"    shards: Count({a.shards}),\n")
    out.write(f'    listeners: [ Listener(name: "main", bind: "{a.bind}") ],\n')
    out.write("    upstreams: {\n")
    for k in range(a.upstreams):
        out.write(f'        "up-{k}": Upstream(targets: ["{a.target}"], max_idle_per_target: 256),\n')
    out.write("    },\n")
    out.write("    routes: [\n")
    for i in range(a.n):
        out.write(
            f'        Route(name: "svc-{i}", match: Match(path: "/api/v1/svc-{i}/items/{{id}}", '
            f'methods: ["GET", "HEAD"]), upstream: "up-{i % a.upstreams}", '
            f'rewrite: "/svc-{i}/items/{{id}}"),\n'
        )
    out.write('        Route(name: "catch-all", match: Match(path_prefix: "/"), upstream: "up-0"),\n')
    out.write("    ],\n")
    out.write(")\n")


if __name__ == "__main__":
    main()
