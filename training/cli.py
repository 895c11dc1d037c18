"""The ``secagg`` command: ``secagg demo`` (embedded default run) and ``secagg run --config run.toml``.

Also runnable as ``python -m training.cli``. Both commands print one progress line per round, a final table
(loss/perplexity, ε per client, bytes up/down, time), and write ``metrics.jsonl``, ``loss.png``, ``epsilon.png``
and ``config.json`` into ``--out``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Optional

import typer

from training.config import RunConfig, load_config
from training.errors import TrainingError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated training of a language model across clouds with secure aggregation and DP.")


def _execute(cfg: RunConfig, out: Path) -> None:
    from training.report import final_table, human_bytes, plot, write_metrics
    from training.runner import Runner

    f = cfg.federation
    typer.echo(f"secagg: {f.clients} clouds, scheme={f.scheme}, aggregator={f.aggregator}, "
               f"partition={cfg.data.partition}, DP-SGD={'on' if cfg.dp.enabled else 'off'}, rounds={cfg.train.rounds}")
    t0 = time.perf_counter()
    runner = Runner(cfg)
    typer.echo(f"data: {[len(c) for c in runner.data.clients]} training blocks per client "
               f"({[', '.join(a[:3]) for a in runner.data.assignment]}), {len(runner.data.val)} validation blocks; "
               f"model {runner.fed.global_vec.size:,} trainable parameters; initial loss {runner.initial_loss:.3f} "
               f"(setup {time.perf_counter() - t0:.1f} s)")

    def progress(m) -> None:
        eps = f"{m.epsilon:.2f}" if m.epsilon is not None else "-"
        typer.echo(f"round {m.round:>3}: loss {m.loss:.3f} ppl {m.perplexity:8.1f} eps {eps:>6} "
                   f"up {human_bytes(m.bytes_up):>9} down {human_bytes(m.bytes_down):>9} {m.seconds:5.1f} s "
                   f"clients {m.contributors}")

    rows = runner.run(progress)
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(rows, out / "metrics.jsonl")
    plot(rows, out, runner.initial_loss)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    typer.echo("")
    typer.echo(final_table(rows))
    typer.echo(f"wrote {out / 'metrics.jsonl'}, loss.png, epsilon.png (total {time.perf_counter() - t0:.1f} s)")


def _run_or_exit(cfg: RunConfig, out: Path) -> None:
    try:
        _execute(cfg, out)
    except TrainingError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="output directory"),
    scheme: str = typer.Option("ckks", help="secure aggregation: ckks | masking"),
    aggregator: str = typer.Option("fedavg", help="fedavg | loss-weighted | gradient | async"),
    rounds: int = typer.Option(6, help="server steps"),
    dp: bool = typer.Option(True, "--dp/--no-dp", help="DP-SGD on every client"),
    partition: str = typer.Option("by-document", help="by-document | iid | dirichlet | capacity"),
    seed: int = typer.Option(0),
) -> None:
    """3 clouds, tiny GPT-2, Shakespeare split by play, DP-SGD on, CKKS by default."""
    cfg = RunConfig()
    cfg.federation.scheme, cfg.federation.aggregator = scheme, aggregator
    cfg.train.rounds, cfg.train.seed = rounds, seed
    cfg.dp.enabled = dp
    cfg.data.partition = partition
    _run_or_exit(cfg, out)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", help="TOML run file"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/<config stem>)"),
) -> None:
    """Run the federation described by a TOML file (see examples/run.toml)."""
    try:
        cfg = load_config(config)
    except TrainingError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    _run_or_exit(cfg, out or Path("runs") / config.stem)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app()
