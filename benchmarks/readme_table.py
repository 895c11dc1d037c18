"""README's performance table, made from the result files (never typed by hand).

    python -m benchmarks.readme_table          # rewrites the table between the markers in README.md

Each row names its goal, the measured value (with the spread where the file has one), the verdict and the file
it comes from. A test checks that README.md holds exactly what this module makes from benchmarks/results/.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BEGIN, END = "<!-- perf-table: begin (python -m benchmarks.readme_table) -->", "<!-- perf-table: end -->"
GIB = 2**30

__all__ = ["table", "rewrite", "BEGIN", "END"]


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.exists() else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _by_point(name: str) -> list[dict]:
    """The rows of result file ``name`` by (scheme, n); none when the file is absent."""
    d = _load(name)
    return [] if d is None else sorted(d["rows"], key=lambda r: (r["scheme"], r["n"]))


def _memory_rows() -> list[str]:
    rows = []
    for r in _by_point("full_model.json"):
        rows.append(f"| whole round in one process, streamed: {r['scheme']}, n = {r['n']}, D = {r['dim']:,} | "
                    f"peak RSS ≤ 4 GiB | {r['peak_rss_bytes'] / GIB:.2f} GiB (client {r['client_s']:.1f} s, "
                    f"aggregator + key holder {r['round_server_s']:.1f} s, {r['up_bytes_per_value']:.2f} B/value up) | "
                    f"{_verdict(r['goal_met'])} | `full_model.json` |")
    return rows


def _grpc_rows() -> list[str]:
    rows = []
    for r in _by_point("grpc_memory.json"):
        servers = max(r["aggregator_peak_rss_bytes"], r["keyholder_peak_rss_bytes"])
        kh = f"key holder {r['keyholder_peak_rss_bytes'] / GIB:.2f} GiB" if r["keyholder_peak_rss_bytes"] else \
            "no key holder"
        rows.append(f"| `secagg up` (gRPC, one process per role): {r['scheme']}, n = {r['n']}, D = {r['dim']:,} | "
                    f"each server ≤ 4 GiB | aggregator {r['aggregator_peak_rss_bytes'] / GIB:.2f} GiB, {kh}, client "
                    f"{r['client_peak_rss_bytes'] / GIB:.2f} GiB (holds the model and its update; commit "
                    f"{r.get('commit', '?')}) | {_verdict(servers <= 4 * GIB)} | `grpc_memory.json` |")
    return rows


def _flower_rows() -> list[str]:
    rows = []
    for r in _by_point("flower_memory.json"):
        rows.append(f"| Flower simulation, streamed: {r['scheme']}, n = {r['n']}, D = {r['dim']:,} | each process "
                    f"≤ 4 GiB | driver (ServerApp + SuperLink) {r['driver_peak_rss_bytes'] / GIB:.2f} GiB, ClientApp "
                    f"actor {r['clientapp_peak_rss_bytes'] / GIB:.2f} GiB (round {r['round_s']:.0f} s, "
                    f"{r['up_bytes_per_value']:.2f} B/value up; commit {r.get('commit', '?')}) | "
                    f"{_verdict(r['goal_met'])} | `flower_memory.json` |")
    return rows


def _verdict_rows(name: str) -> list[str]:
    d = _load(name)
    if d is None:
        return []
    return [f"| {v['target']} | {v['goal']} | {v['measured']:.3g} | {_verdict(v['pass'])} | `{name}` |"
            for v in d["verdicts"] if "client" in v["target"] or "round" in v["target"]]


def _hardening_rows() -> list[str]:
    d = _load("hardening.json")
    if d is None:
        return []
    rows = []
    for r in d["rows"]:
        if r["scheme"] == "masking" or "aggregator weights" in r["label"]:
            continue

        def total(side: dict) -> float:
            return (r["n"] * side["client_cpu_s_median"]["median"] + side["server_cpu_s"]["median"]
                    + side["keyholder_cpu_s"]["median"])

        over = total(r["current"]) / total(r["baseline"]) - 1
        rows.append(f"| hardening cost of the round: {r['label']}, D = {r['dim']:,} | ≤ +10% | {100 * over:+.0f}% "
                    f"(median of {d['repeats']}) | {_verdict(over <= 0.10)} | `hardening.json` |")
    return rows


def table() -> str:
    """The markdown table (header included) from the result files present."""
    head = ["| What | Goal | Measured | Verdict | From |", "|---|---|---|---|---|"]
    body = (_memory_rows() + _grpc_rows() + _flower_rows() + _verdict_rows("secagg_micro.json")
            + _verdict_rows("secaggplus_whole.json") + _hardening_rows())
    return "\n".join(head + body)


def rewrite(readme: Path = ROOT / "README.md") -> bool:
    """Put :func:`table` between the markers of ``readme``; True if it changed."""
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no performance-table markers")
    before, rest = text.split(BEGIN, 1)
    _, after = rest.split(END, 1)
    new = before + BEGIN + "\n" + table() + "\n" + END + after
    readme.write_text(new)
    return new != text


if __name__ == "__main__":
    print("README.md " + ("updated" if rewrite() else "already current"))
