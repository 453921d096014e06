"""Paired differences with bootstrap intervals between two rows of a Shapes video measurement.

Reads the JSON that ``measure_ctgm.py`` or ``measure_broadway_vstar.py`` writes (per-video reader scores,
video i generated from the same seed in every row) and prints, for each pair ``B-A`` and each score, the mean
of B's score minus A's over the videos where both have it, with a 95 % percentile bootstrap interval
(resampling videos, 4,000 resamples, seed 0), as a Markdown table (CPU, seconds):

    python benchmarks/paired_differences.py measure_ctgm.json --pair "plain:ctgm tii+tar" --pair "synopsis:synopsis + ctgm tii+tar"
    python benchmarks/paired_differences.py measure_broadway_vstar.json --pair broadway/plain:broadway/broadway

A row is named by its key in the file's ``rows`` (measure_ctgm) or as ``table/row`` (measure_broadway_vstar:
``broadway/plain``, ``vstar/tar``). Eight lines of numpy, so no statistics dependency for them.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METRICS = ("recolor", "order", "motion", "identity", "exact")


def row_scores(data: dict, name: str) -> list[dict]:
    if "rows" in data and name in data["rows"]:
        return data["rows"][name]["scores"]
    table, _, row = name.partition("/")
    if table in data and isinstance(data[table], dict) and row in data[table]:
        return data[table][row]["scores"]
    raise SystemExit(f"error: no row {name!r} in the file; give a key of 'rows' or table/row")


def paired(a: list[dict], b: list[dict], metric: str, resamples: int = 4000, seed: int = 0):
    """(n, mean of b - a, low, high) over the videos where both rows have the score; None when none has it."""
    d = np.array([y[metric] - x[metric] for x, y in zip(a, b, strict=True)
                  if x.get(metric) is not None and y.get(metric) is not None], dtype=float)
    if d.size == 0:
        return None
    idx = np.random.default_rng(seed).integers(0, d.size, size=(resamples, d.size))
    means = d[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return d.size, float(d.mean()), float(low), float(high)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", type=Path)
    parser.add_argument("--pair", action="append", required=True, help="A:B, printed as B - A")
    parser.add_argument("--metrics", default=",".join(METRICS))
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read {args.json} as a measurement's JSON ({exc}); pass the file that "
                         "measure_ctgm.py or measure_broadway_vstar.py wrote")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    print("| difference | " + " | ".join(metrics) + " |")
    print("|---" * (len(metrics) + 1) + "|")
    for pair in args.pair:
        a_name, sep, b_name = pair.partition(":")
        if not sep:
            raise SystemExit(f"error: --pair {pair!r} is not A:B; write the two row names with a colon between them")
        a, b = row_scores(data, a_name), row_scores(data, b_name)
        cells = []
        for m in metrics:
            r = paired(a, b, m)
            cells.append("-" if r is None else f"{r[1]:+.3f} [{r[2]:+.3f}, {r[3]:+.3f}] (n = {r[0]})")
        print(f"| {b_name} − {a_name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
