"""Turns the raw wrk and mysqlslap figures of scripts/bench into report.md and report.json."""

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

SCENARIOS = [
    ("list_first", "List first page (limit 20)"),
    ("list_deep", "List a deep page (cursor near id 1000)"),
    ("get_one", "Get one message"),
    ("create", "Create"),
    ("mix_90_10", "90/10 read/write mix"),
    ("health", "Health"),
]
READS = {"list_first", "list_deep", "get_one", "health"}


def main(results, queries, slap_seconds, peak_rss_kb, seconds, connections, rows):
    results = Path(results)
    raw = {}
    for name, _ in SCENARIOS:
        for target in ("direct", "nginx"):
            r = json.loads((results / "raw" / f"{name}.{target}.json").read_text())
            r["rps"] = r["requests"] / r["duration_us"] * 1e6
            r["error_count"] = sum(r["errors"].values())
            raw[(name, target)] = r
    db_rate = int(queries) / float(slap_seconds)
    rss_mb = int(peak_rss_kb) / 1024

    def rps(name, target):
        return raw[(name, target)]["rps"]

    targets = [
        ("List first page direct >= 45 % of raw DB rate",
         rps("list_first", "direct") / db_rate, 0.45, "ratio"),
        ("List first page through nginx >= 30 % of raw DB rate",
         rps("list_first", "nginx") / db_rate, 0.30, "ratio"),
    ]
    for name, label in SCENARIOS:
        targets.append((f"{label}: nginx >= 0.7 x direct",
                        rps(name, "nginx") / rps(name, "direct"), 0.7, "ratio"))
    for target in ("direct", "nginx"):
        targets.append((f"Deep page >= 0.8 x first page ({target})",
                        rps("list_deep", target) / rps("list_first", target), 0.8, "ratio"))
    worst_p99 = max(raw[(n, t)]["latency_us"]["p99"] for n in READS for t in ("direct", "nginx"))
    targets.append(("Reads p99 <= 15 ms", worst_p99 / 1000, 15, "max_ms"))
    errors = sum(r["error_count"] for r in raw.values())
    targets.append(("Zero errors", errors, 0, "max_count"))
    targets.append(("API peak RSS <= 50 MB", rss_mb, 50, "max_mb"))

    checks = []
    for label, value, bound, kind in targets:
        met = value >= bound if kind == "ratio" else value <= bound
        checks.append({"target": label, "value": round(value, 3), "bound": bound, "met": met})

    report = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds_per_scenario": int(seconds),
        "connections": int(connections),
        "rows": int(rows),
        "raw_db_list_rate": round(db_rate),
        "api_peak_rss_mb": round(rss_mb, 1),
        "scenarios": {f"{n}.{t}": r for (n, t), r in raw.items()},
        "targets": checks,
    }
    (results / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    lines = [
        f"# Benchmark ({report['generated_at']})",
        "",
        f"{connections} connections, {seconds} s per scenario, {int(rows):,} rows; "
        "wrk, API, nginx and MariaDB share this machine.",
        "",
        "| scenario | direct req/s | nginx req/s | nginx/direct | direct p50 / p90 / p99 ms "
        "| nginx p50 / p90 / p99 ms | errors |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for name, label in SCENARIOS:
        d, n = raw[(name, "direct")], raw[(name, "nginx")]

        def lat(r):
            l = r["latency_us"]
            return " / ".join(f"{l[p] / 1000:.2f}" for p in ("p50", "p90", "p99"))

        lines.append(
            f"| {label} | {d['rps']:,.0f} | {n['rps']:,.0f} | {n['rps'] / d['rps']:.2f} "
            f"| {lat(d)} | {lat(n)} | {d['error_count'] + n['error_count']} |")
    lines += [
        "",
        f"Raw database rate of the same list query (mysqlslap, {connections} clients): "
        f"**{db_rate:,.0f} queries/s**. API peak RSS: **{rss_mb:.1f} MB**.",
        "",
        "| target | measured | met |",
        "|---|---:|:---:|",
    ]
    for c in checks:
        lines.append(f"| {c['target']} | {c['value']} | {'yes' if c['met'] else '**no**'} |")
    (results / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
