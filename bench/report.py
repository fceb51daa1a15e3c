"""Turns the raw figures of scripts/bench (wrk, mysqlslap, /proc CPU and RSS readings, the
fan-out client's report) into report.md and report.json."""

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
            # CPU per request: utime + stime of the process(es) over the scenario's requests.
            cpu = json.loads((results / "raw" / f"{name}.{target}.cpu.json").read_text())
            r["api_cpu_us_per_request"] = per_request(cpu["api_ticks"], cpu, r["requests"])
            r["nginx_cpu_us_per_request"] = per_request(cpu["nginx_ticks"], cpu, r["requests"])
            raw[(name, target)] = r
    machine = json.loads((results / "raw" / "machine.json").read_text())
    fanout = read_fanout(results)
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
    if fanout:
        streams = fanout["client"]["subscribers"]
        targets += [
            (f"Fan-out: {streams:,} streams held (count of those never ready)",
             streams - fanout["client"]["ready"], 0, "max_count"),
            ("Fan-out: zero dropped events", fanout["client"]["dropped"], 0, "max_count"),
            ("Fan-out: zero duplicated events", fanout["client"]["duplicated"], 0, "max_count"),
            ("Fan-out: p99 write-to-last-subscriber <= 1 s",
             fanout["client"]["latency_ms"]["last"]["p99"], 1000, "max_ms"),
            ("Fan-out: API peak RSS <= 150 MB", fanout["api_peak_rss_mb"], 150, "max_mb"),
        ]

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
        "machine": machine,
        "scenarios": {f"{n}.{t}": r for (n, t), r in raw.items()},
        "fanout": fanout,
        "targets": checks,
    }
    (results / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    lines = [
        f"# Benchmark ({report['generated_at']})",
        "",
        f"{connections} connections, {seconds} s per scenario, {int(rows):,} rows; "
        f"wrk, API, nginx and MariaDB share this machine ({machine['cores']} cores). "
        f"Load averages (1/5/15 min) before: {machine['load_before']}, "
        f"after: {machine['load_after']}.",
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
        "CPU time per request, in µs (utime + stime of the API's process and of nginx's "
        "master and workers, over the scenario's requests):",
        "",
        "| scenario | API, direct | API, through nginx | nginx |",
        "|---|---:|---:|---:|",
    ]
    for name, label in SCENARIOS:
        d, n = raw[(name, "direct")], raw[(name, "nginx")]
        lines.append(f"| {label} | {d['api_cpu_us_per_request']:.1f} "
                     f"| {n['api_cpu_us_per_request']:.1f} | {n['nginx_cpu_us_per_request']:.1f} |")
    if fanout:
        lines += [""] + fanout_lines(fanout)
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


def per_request(ticks, cpu, requests):
    return round(ticks / cpu["clk_tck"] / requests * 1e6, 2) if requests else None


def read_fanout(results):
    """The fan-out scenario's figures, or None when its client failed."""
    client = results / "raw" / "fanout.json"
    if not client.exists():
        return None
    resources = json.loads((results / "raw" / "fanout.resources.json").read_text())
    cpu = json.loads((results / "raw" / "fanout.cpu.json").read_text())
    return {
        "client": json.loads(client.read_text()),
        "seconds": resources["seconds"],
        "api_peak_rss_mb": round(resources["api_peak_rss_kb"] / 1024, 1),
        "nginx_peak_rss_mb": round(resources["nginx_peak_rss_kb"] / 1024, 1),
        "api_cpu_seconds": round(cpu["api_ticks"] / cpu["clk_tck"], 2),
        "nginx_cpu_seconds": round(cpu["nginx_ticks"] / cpu["clk_tck"], 2),
        "nginx_worker_connections": resources["nginx_worker_connections"],
        "nginx_worker_rlimit_nofile": resources["nginx_worker_rlimit_nofile"],
    }


def fanout_lines(f):
    c = f["client"]
    e = c["errors"]
    lat = c["latency_ms"]
    return [
        f"Fan-out: **{c['subscribers']:,} streams** through nginx ({c['ready']:,} ready after "
        f"{c['ready_seconds']:.1f} s), {c['writes']} writes at {c['writes_per_second']}/s "
        f"over {c['writes_seconds']:.1f} s, {c['writes_created']} answered 201. Delivery of each write's `created` event, "
        "from its 201 at the client, in ms (p50 / p99 over the writes):",
        "",
        "| first subscriber | median subscriber | last subscriber |",
        "|---:|---:|---:|",
        " | ".join(f"{lat[k]['p50']:.0f} / {lat[k]['p99']:.0f}"
                   for k in ("first", "median", "last")).join(["| ", " |"]),
        "",
        f"Dropped {c['dropped']}, duplicated {c['duplicated']}, reconnects {c['reconnects']}, "
        f"resets {c['resets']}; errors: connect {e['connect']}, status {e['status']}, "
        f"stream {e['stream']}, write {e['write']}. Peak RSS: API {f['api_peak_rss_mb']} MB, "
        f"nginx {f['nginx_peak_rss_mb']} MB (master and workers). CPU over the scenario's "
        f"{f['seconds']} s: API {f['api_cpu_seconds']} s, nginx {f['nginx_cpu_seconds']} s. "
        f"nginx: worker_connections {f['nginx_worker_connections']}, "
        f"worker_rlimit_nofile {f['nginx_worker_rlimit_nofile']}.",
    ]


if __name__ == "__main__":
    main(*sys.argv[1:])
