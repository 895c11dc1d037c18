"""Run outputs: ``metrics.jsonl`` (one JSON object per round), PNG plots, and the final text table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from training.engine.metrics import RoundMetrics

__all__ = ["write_metrics", "plot", "final_table", "human_bytes"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def write_metrics(rows: Sequence[RoundMetrics], path: str | Path, initial_loss: float | None = None) -> Path:
    """One JSON object per line with at least round, loss, epsilon, bytes_up, bytes_down, seconds; the first
    line also carries ``initial_loss`` (the global model's validation loss before round 1) when given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            row = r.as_json()
            if i == 0 and initial_loss is not None:
                row["initial_loss"] = initial_loss
            fh.write(json.dumps(row, sort_keys=True) + "\n")
    return path


def plot(rows: Sequence[RoundMetrics], out: str | Path, initial_loss: float | None = None) -> list[Path]:
    """``loss.png`` (validation loss vs round) and ``epsilon.png`` (ε per client vs round) under ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = [r.round for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    xs, ys = ([0] + rounds, [initial_loss] + [r.loss for r in rows]) if initial_loss is not None else \
        (rounds, [r.loss for r in rows])
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Global model loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths = [out / "loss.png"]
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    clients = sorted({c for r in rows for c in r.epsilon_per_client})
    for c in clients:
        ax.plot(rounds, [r.epsilon_per_client.get(c) or 0.0 for r in rows], marker="o", label=f"client {c}")
    ax.set_xlabel("round")
    ax.set_ylabel("ε spent")
    ax.set_title("Privacy budget per client")
    ax.grid(alpha=0.3)
    if clients:
        ax.legend()
    fig.tight_layout()
    paths.append(out / "epsilon.png")
    fig.savefig(paths[1], dpi=100)
    plt.close(fig)
    return paths


def _nan(x: float | None) -> float:
    return float("nan") if x is None else x


def _opt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def final_table(rows: Sequence[RoundMetrics], initial_loss: float | None = None) -> str:
    """A fixed-width table: the start (round 0, when ``initial_loss`` is given), one line per round, totals."""
    import math

    head = f"{'round':>5} {'loss':>7} {'ppl':>8} {'eps(max)':>9} {'up':>10} {'down':>10} {'wall s':>7} {'model s':>8}"
    lines = [head, "-" * len(head)]
    if initial_loss is not None:
        lines.append(f"{0:>5} {initial_loss:>7.3f} {math.exp(min(initial_loss, 50.0)):>8.1f} {'-':>9} {'-':>10} "
                     f"{'-':>10} {'-':>7} {'-':>8}")
    for r in rows:
        eps = f"{r.epsilon:.2f}" if r.epsilon is not None else "-"
        lines.append(f"{r.round:>5} {r.loss:>7.3f} {_nan(r.perplexity):>8.1f} {eps:>9} {human_bytes(r.bytes_up):>10} "
                     f"{human_bytes(r.bytes_down):>10} {r.seconds:>7.1f} {_opt(r.modelled_seconds):>8}")
    if rows:
        last = rows[-1]
        lines.append("-" * len(head))
        modelled = f", modelled cross-cloud time {last.sim_time:.1f} s" if last.sim_time is not None else ""
        lines.append(f"total up {human_bytes(sum(r.bytes_up for r in rows))}, down "
                     f"{human_bytes(sum(r.bytes_down for r in rows))}, wall {sum(r.seconds for r in rows):.1f} s"
                     + modelled)
        if initial_loss is not None and last.perplexity is not None:
            start, end = math.exp(min(initial_loss, 50.0)), last.perplexity
            lines.append(f"validation perplexity {start:.1f} -> {end:.1f} ({100 * (end / start - 1):+.1f}%)")
        per = ", ".join(f"client {c}: ε={e:.2f}" if e is not None else f"client {c}: no DP"
                        for c, e in sorted(last.epsilon_per_client.items()))
        relation = getattr(last, "epsilon_relation", None) or ""
        against = f" ({relation})" if "against" in relation else ""  # distributed placement names its adversary
        lines.append(f"privacy spent{against}: {per}")
        exposed = getattr(last, "exposed_epsilon_per_client", None)
        if exposed:  # the per-client guarantee of distributed placement: one contribution seen alone
            lines.append("per client, if the secure sum were broken (its own share alone, this run): " + ", ".join(
                f"client {c}: ε={e:.2f}" for c, e in sorted(exposed.items()) if e is not None))
    return "\n".join(lines)
