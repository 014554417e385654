"""Summarize a pytest-benchmark JSON file: medians, ratios to the NumPy baseline, memory.

Usage: python benchmarks/report.py RESULTS.json

Within each benchmark group the test whose name ends in ``_numpy`` (or ``_out``,
hand-written NumPy with out= buffers, or ``_first_call_eager``, the eager call
that a compiled first call is compared with) is the baseline; every other test
in the group is reported as a ratio of medians.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def _time(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} us"


def _megabytes(count) -> str:
    return "-" if count is None else f"{count / 2**20:.0f} MiB"


def _is_baseline(bench: dict) -> bool:
    return bench["name"].endswith(("_numpy", "_out", "_first_call_eager"))


def summarize(results: dict) -> str:
    """Return a Markdown table of the groups in a pytest-benchmark result."""
    groups = defaultdict(list)
    for bench in results["benchmarks"]:
        groups[bench["group"] or ""].append(bench)
    lines = [
        "| workload | implementation | median | ratio to baseline | peak memory per call "
        "| memory / (inputs + outputs) |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted(groups):
        benches = groups[group]
        baseline = next((b for b in benches if _is_baseline(b)), None)
        for bench in sorted(benches, key=lambda b: not _is_baseline(b)):
            median = bench["stats"]["median"]
            ratio = median / baseline["stats"]["median"] if baseline else float("nan")
            implementation = bench["name"].rsplit("_", 1)[-1]
            extra = bench.get("extra_info", {})
            memory = extra.get("memory_ratio")
            lines.append(
                f"| {group} | {implementation} | {_time(median)} | {ratio:.2f} | "
                f"{_megabytes(extra.get('peak_bytes'))} | "
                f"{'-' if memory is None else f'{memory:.2f}'} |"
            )
    machine = results.get("machine_info", {})
    lines.append("")
    lines.append(
        f"Machine: {machine.get('cpu', {}).get('brand_raw', 'unknown CPU')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores, Python "
        f"{machine.get('python_version', '?')}; run {results.get('datetime', '?')}."
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/report.py RESULTS.json", file=sys.stderr)
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        print(summarize(json.load(handle)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
