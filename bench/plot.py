#!/usr/bin/env python3
"""Plots of bench/run.sh results: deliveries/s and server CPU per delivery, against the event
rate (the saturation ladders: run.sh's scenario e, bench/http.sh's ladder) and against the number of clients (runs at 100 ev/s on
one topic with no stalled clients: scenarios l, b and the k sweep).

    python3 bench/plot.py [--out docs/img] bench/results/<timestamp>.jsonl ...
    python3 bench/plot.py --out docs/img --prefix http- bench/results/http-<timestamp>.jsonl

Needs matplotlib (`pip install matplotlib`; it ships its own fonts, and SVG text is kept as
text). Each point is the median over rounds.
"""

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict

ORDER = ["inprocess", "hub", "hub-fanout10", "nchan", "ssehub-native", "ssehub-axum", "ssehub-hyper", "axum-broadcast", "floor-write", "floor-writev", "floor-epoll"]


def load(paths):
    records = []
    for path in paths:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if r.get("kind") == "run" and r.get("ok") and r.get("deliveries"):
                    records.append(r)
    return records


def series(records, x_key, keep):
    """{label: [(x, median deliveries/s, median ns/delivery)]} for the records `keep` accepts."""
    points = defaultdict(lambda: defaultdict(list))
    for r in records:
        if keep(r):
            points[r["label"]][r[x_key]].append(r)
    out = {}
    for label, by_x in points.items():
        rows = []
        for x in sorted(by_x):
            rs = by_x[x]
            dps = statistics.median(r["deliveries_per_s"] for r in rs)
            ns = [r["server_cpu_ns_per_delivery"] for r in rs if r.get("server_cpu_ns_per_delivery")]
            rows.append((x, dps, statistics.median(ns) if ns else None))
        out[label] = rows
    return dict(sorted(out.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else 99))


def human(value, _position=None):
    """1500 -> 1.5k, 2000000 -> 2M: readable log-axis labels."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def draw(plt, panels, x_label, y_index, y_label, title, path):
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (subtitle, data) in zip(axes[0], panels):
        for label, rows in data.items():
            xs = [row[0] for row in rows if row[y_index] is not None]
            ys = [row[y_index] for row in rows if row[y_index] is not None]
            if xs:
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(FuncFormatter(human))
            axis.set_minor_formatter(FuncFormatter(lambda v, p: ""))
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        ax.set_title(subtitle)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"plot.py: wrote {path}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/img", help="directory for the SVG files")
    parser.add_argument("--prefix", default="", help="prefix of the SVG file names (e.g. http-)")
    parser.add_argument("files", nargs="+", help="JSON lines from bench/run.sh or bench/http.sh")
    args = parser.parse_args()
    try:
        import matplotlib
    except ImportError:
        sys.exit("plot.py: matplotlib is missing: pip install matplotlib")
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt

    records = load(args.files)
    if not records:
        sys.exit("plot.py: no successful runs in the input")
    os.makedirs(args.out, exist_ok=True)

    def on_ladder(r):
        return r["scenario"].startswith(("e-", "ladder-"))

    ladders = []
    for clients in sorted({r["clients"] for r in records if on_ladder(r)}, reverse=True):
        data = series(records, "rate", lambda r, c=clients: on_ladder(r) and r["clients"] == c)
        ladders.append((f"{clients:,} clients, 1 topic, 128 B", data))
    if ladders:
        draw(plt, ladders, "events/s published", 1, "deliveries/s", "Deliveries per second against rate",
             os.path.join(args.out, args.prefix + "deliveries-vs-rate.svg"))
        draw(plt, ladders, "events/s published", 2, "server CPU ns per delivery",
             "Server CPU per delivery against rate", os.path.join(args.out, args.prefix + "cpu-vs-rate.svg"))

    def at_100(r):
        return r["rate"] == 100 and r["topics"] == 1 and r.get("slow") == 0 and not on_ladder(r)

    sweep = series(records, "clients", at_100)
    if any(len(rows) > 1 for rows in sweep.values()):
        panels = [("100 ev/s, 1 topic, 128 B", sweep)]
        draw(plt, panels, "clients", 1, "deliveries/s", "Deliveries per second against clients",
             os.path.join(args.out, args.prefix + "deliveries-vs-clients.svg"))
        draw(plt, panels, "clients", 2, "server CPU ns per delivery", "Server CPU per delivery against clients",
             os.path.join(args.out, args.prefix + "cpu-vs-clients.svg"))


if __name__ == "__main__":
    main()
