"""``secagg flower sim``: a federation on Flower's simulation runtime, with the outputs of ``secagg run``."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import typer

from training.errors import TrainingError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Run secagg's secure aggregation on Flower (the engine FL deployments already run).")


@app.command()
def sim(
    clients: int = typer.Option(3, "--clients", help="client SuperNodes (the key holder is one more)"),
    rounds: int = typer.Option(2, "--rounds", help="server steps"),
    config: Optional[Path] = typer.Option(None, "--config", help="TOML run file (model, data, DP, strategy)"),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="masking | ckks | packed"),
    aggregator: Optional[str] = typer.Option(None, "--aggregator", help="fedavg | loss-weighted | gradient | async"),
    trainer: str = typer.Option("local", "--trainer", help="local (the run file's model) | synthetic"),
    out: Path = typer.Option(Path("runs/flower"), "--out", help="output directory"),
    timeout: float = typer.Option(300.0, "--timeout", help="seconds a batch of messages may wait for replies"),
) -> None:
    """Run the federation on Flower's simulation runtime; write metrics.jsonl, plots and the final table."""
    from training.flower.sim import simulate, write_outputs
    from training.deployment import load_transport_config

    t0 = time.perf_counter()
    try:
        cfg = load_transport_config(config, clients=clients, rounds=rounds, scheme=scheme, aggregator=aggregator,
                                    trainer=trainer, out=str(out))
        if cfg.ledger is None:  # as `secagg run`: the same --out continues each client's budget
            cfg = dataclasses.replace(cfg, ledger=str(out / "ledger"))
        result = simulate(cfg, timeout=timeout)
    except TrainingError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2, default=str))
    typer.echo(write_outputs(result, out))
    if result.get("stop_reason"):
        typer.echo(f"stopped early: {result['stop_reason']}")
    typer.echo(f"wrote {out / 'metrics.jsonl'}, loss.png, epsilon.png (total {time.perf_counter() - t0:.1f} s)")


def mount(parent: typer.Typer) -> None:
    """Add ``flower`` as a command group of ``parent`` (``secagg flower sim``)."""
    parent.add_typer(app, name="flower")
