#!/usr/bin/env python3
"""Turn the raw runs recorded by scripts/bench.sh into Markdown tables.

Input: a TSV file with a header line and one row per run:
    round target requests duration_us p50_us p90_us p99_us errors proxy_ticks upstream_ticks
proxy_ticks is "-" for targets without a proxy (direct).

Usage: report.py RUNS.tsv CLK_TCK [BASELINE_TARGET [KEY_RATIO ...]]

KEY_RATIO is "A/B", "A/B<=LIMIT" or "A/B<LIMIT": target A's proxy CPU-µs per
request divided by target B's, reported in a table of its own (with a verdict
against LIMIT if one is given), e.g. "shardgate/shardgate-noauth<=1.15".
A "rps:" or "p99:" prefix puts the verdict on that ratio instead, and ">="
and ">" limits are allowed too, e.g. "rps:shardgate-reload/shardgate-routes>=0.95".

Every ratio is taken within one round (same seconds of machine speed),
then the median over rounds is reported.
"""

import csv
import operator
import re
import statistics
import sys

KEY_RATIO_RE = re.compile(
    r"^(?:(cpu|rps|p99):)?([^/<>=:]+)/([^/<>=]+)(?:(<=|<|>=|>)([0-9]*\.?[0-9]+))?$")
COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def fmt(value, digits=2):
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


def fmt_int(value):
    if value is None:
        return "–"
    return f"{value:,.0f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def load(path, clk_tck):
    runs = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            requests = int(row["requests"])
            secs = int(row["duration_us"]) / 1e6
            us_per_tick = 1e6 / clk_tck

            def per_req(ticks):
                if ticks == "-" or requests == 0:
                    return None
                return int(ticks) * us_per_tick / requests

            run = {
                "round": int(row["round"]),
                "target": row["target"],
                "requests": requests,
                "rps": requests / secs if secs > 0 else 0.0,
                "p50_ms": int(row["p50_us"]) / 1000,
                "p99_ms": int(row["p99_us"]) / 1000,
                "errors": int(row["errors"]),
                "proxy_us": per_req(row["proxy_ticks"]),
                "up_us": per_req(row["upstream_ticks"]),
            }
            run["eff"] = ratio(run["proxy_us"], run["up_us"])
            runs.append(run)
    return runs


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, clk_tck = sys.argv[1], int(sys.argv[2])
    base = sys.argv[3] if len(sys.argv) > 3 else "nginx"
    key_ratios = []
    for spec in sys.argv[4:]:
        match = KEY_RATIO_RE.match(spec)
        if not match:
            sys.exit(f"report.py: bad key ratio {spec!r} (want A/B, A/B<=LIMIT or A/B<LIMIT)")
        metric, a, b, op, limit = match.groups()
        key_ratios.append((metric or "cpu", a, b, op, float(limit) if limit else None))
    runs = load(path, clk_tck)
    if not runs:
        print("_No runs were recorded._")
        return

    targets = []
    for r in runs:
        if r["target"] not in targets:
            targets.append(r["target"])
    by_round = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["target"]] = r

    # Ratios to the baseline proxy in the same round.
    for rnd in by_round.values():
        b = rnd.get(base)
        for r in rnd.values():
            r["rps_x"] = ratio(r["rps"], b["rps"]) if b else None
            r["p99_x"] = ratio(r["p99_ms"], b["p99_ms"]) if b else None
            r["cpu_x"] = ratio(r["proxy_us"], b["proxy_us"]) if b else None
            r["eff_x"] = ratio(r["eff"], b["eff"]) if b else None

    print(f"#### Per round (ratios are to `{base}` in the same round)\n")
    print("| round | target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req "
          "| upstream CPU µs/req | proxy/upstream CPU | req/s ÷ " + base
          + " | p99 ÷ " + base + " | CPU/req ÷ " + base + " |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for rnd_no in sorted(by_round):
        for t in targets:
            r = by_round[rnd_no].get(t)
            if r is None:
                continue
            print(f"| {rnd_no} | {t} | {fmt_int(r['rps'])} | {fmt(r['p50_ms'], 3)} "
                  f"| {fmt(r['p99_ms'], 3)} | {r['errors']} | {fmt(r['proxy_us'])} "
                  f"| {fmt(r['up_us'])} | {fmt(r['eff'])} | {fmt(r['rps_x'])} "
                  f"| {fmt(r['p99_x'])} | {fmt(r['cpu_x'])} |")

    print(f"\n#### Medians over rounds (ratios are per-round ratios to `{base}`, then the median)\n")
    print("| target | runs | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req "
          "| upstream CPU µs/req | **proxy/upstream CPU** | req/s ÷ " + base
          + " | p99 ÷ " + base + " | CPU/req ÷ " + base
          + " | proxy/upstream ÷ " + base + " |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        rs = [rnd[t] for rnd in by_round.values() if t in rnd]

        def m(key):
            return median([r[key] for r in rs])

        errors = sum(r["errors"] for r in rs)
        print(f"| {t} | {len(rs)} | {fmt_int(m('rps'))} | {fmt(m('p50_ms'), 3)} "
              f"| {fmt(m('p99_ms'), 3)} | {errors} | {fmt(m('proxy_us'))} | {fmt(m('up_us'))} "
              f"| **{fmt(m('eff'))}** | {fmt(m('rps_x'))} | {fmt(m('p99_x'))} "
              f"| {fmt(m('cpu_x'))} | {fmt(m('eff_x'))} |")

    print("\nproxy/upstream CPU = proxy CPU per request ÷ upstream nginx CPU per request "
          "in the same run; it cancels most of the machine's speed drift.")

    if key_ratios:
        print_key_ratios(by_round, key_ratios)
    if any(r["errors"] for r in runs):
        print("\n**Warning:** some runs had errors (socket errors or non-2xx/3xx "
              "responses); their req/s is not comparable.")


def print_key_ratios(by_round, key_ratios):
    """A÷B per round for each pair, then the median; verdict on CPU-µs/req
    (or on req/s or p99 for a "rps:"/"p99:" pair)."""
    print("\n#### Key ratios (A ÷ B within each round, then the median; "
          "the verdict is on proxy CPU-µs/req unless it names req/s or p99)\n")
    print("| A ÷ B | rounds | **proxy CPU µs/req** | per round | proxy/upstream CPU "
          "| req/s | p99 | target | verdict |")
    print("|---|---:|---:|---|---:|---:|---:|---:|---|")
    keys = {"cpu": "proxy_us", "rps": "rps", "p99": "p99_ms"}
    for metric, a, b, op, limit in key_ratios:
        pairs = [(rnd[a], rnd[b]) for _, rnd in sorted(by_round.items())
                 if a in rnd and b in rnd]
        cpu_m = median([ratio(ra["proxy_us"], rb["proxy_us"]) for ra, rb in pairs])
        eff_m = median([ratio(ra["eff"], rb["eff"]) for ra, rb in pairs])
        rps_m = median([ratio(ra["rps"], rb["rps"]) for ra, rb in pairs])
        p99_m = median([ratio(ra["p99_ms"], rb["p99_ms"]) for ra, rb in pairs])
        judged = median([ratio(ra[keys[metric]], rb[keys[metric]]) for ra, rb in pairs])
        if limit is None:
            want, verdict = "–", "–"
        else:
            want = f"{'' if metric == 'cpu' else metric + ' '}{op} {limit:g}"
            verdict = "–" if judged is None else (
                "met" if COMPARE[op](judged, limit) else "**not met**")
        per_round = [ratio(ra[keys[metric]], rb[keys[metric]]) for ra, rb in pairs]
        label = f"{a} ÷ {b}" if metric == "cpu" else f"{metric}: {a} ÷ {b}"
        print(f"| {label} | {len(pairs)} | **{fmt(cpu_m, 3)}** "
              f"| {' '.join(fmt(c) for c in per_round) or '–'} | {fmt(eff_m)} | {fmt(rps_m, 3)} "
              f"| {fmt(p99_m, 3)} | {want} | {verdict} |")


if __name__ == "__main__":
    main()
