#!/usr/bin/env python3
"""Summarises a scripts/bench.sh run: medians per scenario and system, the
witan/etcd ratio, a table for people and a JSON line for machines (last).

Input: DIR/results.tsv (round, scenario, system, metric, value per line) and
DIR/meta (key=value lines). Writes DIR/summary.json; with --plot-data FILE,
also the latency-against-throughput points for bench_plot.gp.
Standard library only.
"""

import json
import statistics
import sys
from collections import defaultdict

SCENARIOS = [
    "put_1", "put_64", "put_256", "txn_put_64", "range_lin_1", "range_lin_64",
    "range_ser_64", "range_1000_keys", "watch_10k", "lease_keepalive",
    "rss_1m_keys", "restart_1m_keys",
]

# The figure `ratio` compares (witan/etcd): throughput where the scenario
# measures throughput, else the median latency, memory or time.
PRIMARY = {
    "put_1": "p50_ms",
    "range_lin_1": "p50_ms",
    "watch_10k": "p50_ms",
    "rss_1m_keys": "rss_mb",
    "restart_1m_keys": "restart_ms",
}
# Scenarios whose target is also stated on p99: they get `ratio_p99` too.
ALSO_P99 = {"put_1", "range_lin_1", "watch_10k"}
# What "better" means for the primary figure, for the table's verdict column.
HIGHER_IS_BETTER = {"rps", "writes_per_fsync"}
# Figures shown for insight where a run has them (the leader's WAL fsyncs
# during the write scenarios); no target is set on them.
DIAGNOSTIC = ("server_cpu_us_per_req", "fsync_mean_ms", "writes_per_fsync")


def read_meta(path):
    meta = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    meta[key] = value
    except FileNotFoundError:
        pass
    return meta


def read_results(path):
    """{scenario: {system: {metric: [values by round]}}}"""
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            fields = line.split("\t")
            if len(fields) != 5:
                raise SystemExit(f"{path}:{n}: expected 5 tab-separated fields, got {line!r}")
            _round, scenario, system, metric, value = fields
            data[scenario][system][metric].append(float(value))
    return data


def summarise(data):
    scenarios = {}
    for name in SCENARIOS:
        if name not in data:
            continue
        entry = {}
        for system in ("witan", "etcd"):
            metrics = data[name].get(system, {})
            entry[system] = {
                m: round(statistics.median(v), 3) for m, v in sorted(metrics.items())
            }
            entry[system]["rounds"] = max((len(v) for v in metrics.values()), default=0)
        primary = PRIMARY.get(name, "rps")
        entry["ratio_of"] = primary
        entry["ratio"] = ratio(entry, primary)
        if name in ALSO_P99:
            entry["ratio_p99"] = ratio(entry, "p99_ms")
        scenarios[name] = entry
    return scenarios


def ratio(entry, metric):
    w = entry["witan"].get(metric)
    e = entry["etcd"].get(metric)
    if w is None or e is None or e == 0:
        return None
    return round(w / e, 3)


def fmt(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}"


def table(scenarios):
    rows = [("scenario", "figure", "witan", "etcd", "witan/etcd", "better")]
    for name, entry in scenarios.items():
        figures = [entry["ratio_of"]]
        if name in ALSO_P99:
            figures.append("p99_ms")
        if name == "rss_1m_keys":
            figures.append("disk_mb")
        figures += [d for d in DIAGNOSTIC if d in entry["witan"] and d in entry["etcd"]]
        for fig in figures:
            r = ratio(entry, fig)
            better = "-"
            if r is not None and r != 1:
                witan_better = r > 1 if fig in HIGHER_IS_BETTER else r < 1
                better = "witan" if witan_better else "etcd"
            rows.append((name, fig, fmt(entry["witan"].get(fig)), fmt(entry["etcd"].get(fig)),
                         "-" if r is None else f"{r:.2f}", better))
        for system in ("witan", "etcd"):
            if entry[system].get("failed") or entry[system].get("errors"):
                rows.append((name, "FAILED/ERRORS", system, "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def plot_data(scenarios, path):
    """Two blocks (witan, etcd): throughput, p50, p99, label, from the put
    scenarios by clients, then the linearizable range ones."""
    with open(path, "w", encoding="utf-8") as f:
        for system in ("witan", "etcd"):
            f.write(f"# {system}\n")
            for group in (("put_1", "put_64", "put_256"), ("range_lin_1", "range_lin_64")):
                for name in group:
                    e = scenarios.get(name, {}).get(system, {})
                    if "rps" in e and "p50_ms" in e:
                        f.write(f"{e['rps']} {e['p50_ms']} {e.get('p99_ms', e['p50_ms'])} {name}\n")
                f.write("\n")
            f.write("\n")


def main(argv):
    if not argv or argv[0].startswith("-"):
        raise SystemExit("usage: bench_summary.py DIR [--plot-data FILE]")
    out = argv[0]
    meta = read_meta(f"{out}/meta")
    scenarios = summarise(read_results(f"{out}/results.tsv"))
    if "--plot-data" in argv:
        plot_data(scenarios, argv[argv.index("--plot-data") + 1])
    summary = {
        "etcd_version": meta.get("etcd_version"),
        "etcd_source": meta.get("etcd_source"),
        "load_generator": meta.get("benchmark_tool"),
        "witan_commit": meta.get("witan_commit"),
        "machine": meta.get("machine"),
        "started": meta.get("started"),
        "rounds": int(meta["rounds"]) if meta.get("rounds") else None,
        "load_average": {k: float(v) for k, v in meta.items() if k.startswith("load_")},
        "scenarios": scenarios,
    }
    with open(f"{out}/summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"etcd {meta.get('etcd_version')} ({meta.get('etcd_source')}); "
          f"load generator {meta.get('benchmark_tool')}; {meta.get('machine')}")
    print(f"medians of {meta.get('rounds')} round(s); load average "
          f"{meta.get('load_start')} at start, {meta.get('load_end')} at end")
    print(table(scenarios))
    print(json.dumps(summary, separators=(",", ":")))


if __name__ == "__main__":
    main(sys.argv[1:])
