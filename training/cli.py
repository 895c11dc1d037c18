"""The ``secagg`` command (typer). Also runnable as ``python -m training.cli``.

* ``secagg demo`` — the embedded default run; ``secagg run --config run.toml`` — a run described by a TOML file.
  Both show a progress bar per round and one line per finished round, then a final table (loss/perplexity,
  ε per client, bytes up/down, time), and write ``metrics.jsonl``, ``loss.png``, ``epsilon.png`` and
  ``config.json`` into ``--out``.
* ``secagg certs init``, ``keyholder serve``, ``aggregator serve``, ``client run``, ``up`` — the networked
  deployment, mounted from :mod:`training.transport.cli`.
* ``secagg bench NAME [ARGS...]`` — runs ``python -m benchmarks.NAME ARGS...``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pkgutil
import runpy
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from training.config import RunConfig, load_config
from training.errors import ConfigError, TrainingError
from training.transport.cli import mount

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizers thread pool: safe across fork()

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated training of a language model across clouds with secure aggregation and DP.")

BENCHMARKS = ("ckks_micro", "dp_overhead", "transport", "secagg_micro", "crypto_costs", "scaling",
              "privacy_utility", "paper_tables")
"""The benchmarks documented in benchmarks/README.md (any module of the ``benchmarks`` package can be run)."""


class _RoundBars:
    """One tqdm bar per round (to stderr; hidden when stderr is not a terminal), closed before its summary line."""

    def __init__(self, runner) -> None:
        self.runner, self.bar, self.round = runner, None, -1

    def tick(self, rnd: int, what: str) -> None:
        from tqdm import tqdm

        if rnd != self.round:
            self.close()
            total = len(self.runner.trainers) if rnd == 0 else self.runner.ticks_per_round
            self.bar = tqdm(total=total, desc="start" if rnd == 0 else f"round {rnd}", leave=False,
                            file=sys.stderr, disable=None, unit="step")
            self.round = rnd
        self.bar.set_postfix_str(what)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


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
    bars = _RoundBars(runner)

    def progress(m) -> None:
        bars.close()
        eps = f"{m.epsilon:.2f}" if m.epsilon is not None else "-"
        typer.echo(f"round {m.round:>3}: loss {m.loss:.3f} ppl {m.perplexity:8.1f} eps {eps:>6} "
                   f"up {human_bytes(m.bytes_up):>9} down {human_bytes(m.bytes_down):>9} {m.seconds:5.1f} s "
                   f"clients {m.contributors}"
                   + (f" staleness {dict(sorted(m.staleness.items()))}" if any(m.staleness.values()) else "")
                   + (f" dropped {m.dropped}" if m.dropped else ""))

    try:
        rows = runner.run(progress, bars.tick)
    finally:
        bars.close()
    out.mkdir(parents=True, exist_ok=True)
    write_metrics(rows, out / "metrics.jsonl")
    plot(rows, out, runner.initial_loss)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    typer.echo("")
    typer.echo(final_table(rows))
    if runner.stop_reason:
        typer.echo(f"stopped early: {runner.stop_reason}")
    typer.echo(f"wrote {out / 'metrics.jsonl'}, loss.png, epsilon.png (total {time.perf_counter() - t0:.1f} s)")


def _run_or_exit(cfg: RunConfig, out: Path) -> None:
    from privacy.errors import PrivacyError
    from secagg.errors import SecAggError

    try:
        _execute(cfg, out)
    except (TrainingError, PrivacyError, SecAggError) as e:
        typer.echo(f"error: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from None


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="output directory"),
    scheme: str = typer.Option("ckks", help="secure aggregation: ckks | masking | packed"),
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


def available_benchmarks() -> list[str]:
    """Modules of the ``benchmarks`` package (names without a leading underscore)."""
    spec = importlib.util.find_spec("benchmarks")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                  if not m.name.startswith("_"))


def benchmark_module(name: str) -> str:
    """The module that ``secagg bench NAME`` runs; ConfigError naming the available ones if there is none."""
    found = available_benchmarks()
    if name not in found:
        raise ConfigError(f"unknown benchmark {name!r}; available: {', '.join(found) or 'none (is benchmarks/ on the path?)'}")
    return f"benchmarks.{name}"


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
             help="Run benchmarks.NAME with ARGS (its own --help lists them). Benchmarks: " + ", ".join(BENCHMARKS)
             + ". Results go to benchmarks/results/.")
def bench(ctx: typer.Context, name: str = typer.Argument(..., help="benchmark module name")) -> None:
    try:
        module = benchmark_module(name)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    argv = sys.argv
    sys.argv = [module, *ctx.args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv


mount(app)  # certs init, keyholder serve, aggregator serve, client run, up

if __name__ == "__main__":
    app()
