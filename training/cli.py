"""The ``secagg`` command (typer). Also runnable as ``python -m training.cli``.

* ``secagg demo`` — the embedded default run; ``secagg run --config run.toml`` — a run described by a TOML file.
  Both show a progress bar per round and one line per finished round, then a final table (loss/perplexity,
  ε per client, bytes up/down, time), and write ``metrics.jsonl``, ``loss.png``, ``epsilon.png`` and
  ``config.json`` into ``--out``.
* ``secagg certs init``, ``keyholder serve``, ``aggregator serve``, ``client run``, ``up`` — the networked
  deployment, mounted from :mod:`training.services.cli`.
* ``secagg flower sim`` — the same federation on Flower's simulation runtime (:mod:`training.flower`).
* ``secagg budget show PATH [--json]`` — each client's ε from its durable ledger (:mod:`training.ledgers`).
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

from training.config import RunConfig, demo_config, distribute_noise, load_config
from training.errors import ConfigError, cli_app
from training.flower.cli import mount as mount_flower
from training.ledgers import default_ledger_dir, mount as mount_budget
from training.services.cli import mount

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no tokenizers thread pool: safe across fork()

app = cli_app(no_args_is_help=True,
              help="Federated training of a language model across clouds with secure aggregation and DP.")


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", help="print the traceback of an error too")) -> None:
    if verbose:
        os.environ["SECAGG_VERBOSE"] = "1"  # child processes (secagg up) inherit it


def main() -> None:
    """The ``secagg`` command: named errors are one line and exit status 2 (:func:`training.errors.cli_app`)."""
    app()

DEMO_PROMPT = "HAMLET\nTo be, or not to be, that is the question:\n"
"""The demo's sample prompt, in the corpus' layout (speaker line, verse); Hamlet is not one of the demo's plays."""
BENCHMARKS = ("ckks_micro", "dp_overhead", "transport", "secagg_micro", "crypto_costs", "scaling", "full_model",
              "smollm2_privacy", "privacy_utility", "paper_tables", "flower", "secaggplus_whole")
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


def _sample(runner, prompt: str | None) -> str | None:
    """The global model's greedy continuation of ``prompt`` (None without a prompt)."""
    from training.workload.generate import greedy
    from training.workload.trainer import set_flat

    if not prompt:
        return None
    set_flat(runner.eval_model, runner.fed.global_vec)
    return greedy(runner.eval_model, runner.data.tokenizer, prompt, max_new_tokens=40, stop_id=runner.data.eos_id)


def _dp_line(cfg: RunConfig) -> str:
    noise = cfg.placement_noise()
    if not cfg.dp.enabled or noise is None:
        return "on (all the noise on every client)" if cfg.dp.enabled else "off"
    return (f"on, noise under the secure sum (σ = {noise.noise_multiplier:g} on the sum, a share of "
            f"{noise.share_multiplier:.3g} on each client; against {noise.adversary})")


def _execute(cfg: RunConfig, out: Path, prompt: str | None = None) -> None:
    from training.workload.trainer import parameter_counts, set_flat
    from training.inprocess.report import final_table, human_bytes, plot, write_metrics
    from training.inprocess.simulation import Runner

    f = cfg.federation
    typer.echo(f"secagg: {f.clients} clouds, scheme={f.scheme}, aggregator={f.aggregator}, "
               f"partition={cfg.data.partition}, DP-SGD={_dp_line(cfg)}, rounds={cfg.train.rounds}")
    t0 = time.perf_counter()
    if cfg.dp.enabled:  # re-running with the same --out continues each client's budget
        cfg.dp.ledger = str(default_ledger_dir(cfg.dp.ledger, out))
    runner = Runner(cfg)
    typer.echo(f"data: {[len(c) for c in runner.data.clients]} training blocks per client "
               f"({[', '.join(a[:3]) for a in runner.data.assignment]}), {len(runner.data.val)} validation blocks; "
               f"model {runner.fed.global_vec.size:,} trainable parameters; initial loss {runner.initial_loss:.3f} "
               f"(setup {time.perf_counter() - t0:.1f} s)")
    base, trainable = parameter_counts(runner.eval_model)
    model_name = cfg.model.path or cfg.model.name
    typer.echo(f"model {model_name}: {base:,} base parameters"
               + (f" (frozen, never sent), {trainable:,} LoRA adapter parameters trained and aggregated"
                  if cfg.model.use_lora else f", all {trainable:,} trained and aggregated"))
    before = _sample(runner, prompt)
    if before is not None:
        typer.echo(f"sample before training: {prompt!r} -> {before!r}")
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
    write_metrics(rows, out / "metrics.jsonl", runner.initial_loss)
    plot(rows, out, runner.initial_loss)
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "model_name": model_name,
                                                 "base_parameters": base, "trainable_parameters": trainable},
                                                indent=2, default=str))
    typer.echo("")
    typer.echo(final_table(rows, runner.initial_loss))
    if before is not None:
        after = _sample(runner, prompt)
        (out / "samples.json").write_text(json.dumps({"prompt": prompt, "before": before, "after": after,
                                                      "max_new_tokens": 40, "decoding": "greedy"}, indent=2))
        typer.echo(f"\nprompt: {prompt!r}\n  before: {before!r}\n  after:  {after!r}  (samples.json)")
    set_flat(runner.eval_model, runner.fed.global_vec)
    runner.eval_model.save_pretrained(out / "model")  # LoRA: the adapters only (peft); else the whole model
    if runner.stop_reason:
        typer.echo(f"stopped early: {runner.stop_reason}")
    typer.echo(f"wrote {out / 'metrics.jsonl'}, loss.png, epsilon.png, model/ (total {time.perf_counter() - t0:.1f} s)")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="output directory"),
    model: str = typer.Option("smollm2-135m", help="smollm2-135m (pretrained, DP LoRA) | tiny (GPT-2 from scratch)"),
    scheme: str = typer.Option("ckks", help="secure aggregation: ckks | masking | packed"),
    aggregator: Optional[str] = typer.Option(None, help="fedavg | loss-weighted | gradient | async (default: "
                                             "gradient under distributed placement, else fedavg)"),
    rounds: Optional[int] = typer.Option(None, help="server steps (default: 9 for smollm2-135m's distributed "
                                         "placement, 3 for its local one, 6 for tiny)"),
    dp: bool = typer.Option(True, "--dp/--no-dp", help="DP-SGD on every client"),
    placement: str = typer.Option("distributed", help="smollm2-135m's DP-SGD noise: distributed (split among the "
                                  "clients under the secure sum: 9 rounds of one step, the gradient rule with the "
                                  "server's Adam) | local (all of it on every client: 3 rounds of 3 steps)"),
    partition: str = typer.Option("by-document", help="by-document | iid | dirichlet | capacity"),
    prompt: str = typer.Option(DEMO_PROMPT, help="greedy sample before and after training ('' for none)"),
    seed: int = typer.Option(0),
) -> None:
    """3 clouds, Shakespeare split by play, DP-SGD on, CKKS by default: federated LoRA fine-tuning of the
    pretrained SmolLM2-135M with the noise under the secure sum (or --model tiny: a tiny GPT-2 from scratch)."""
    cfg = demo_config(model)
    if placement not in ("local", "distributed"):
        raise ConfigError(f"unknown placement {placement!r}; expected 'local' or 'distributed'")
    cfg.federation.scheme, cfg.train.seed, cfg.dp.enabled, cfg.data.partition = scheme, seed, dp, partition
    if dp and placement == "distributed" and model != "tiny":
        if aggregator not in (None, "gradient"):
            raise ConfigError(f"distributed placement applies the noisy sum with the gradient rule, not "
                              f"{aggregator!r}: pass --placement local for another rule")
        distribute_noise(cfg)
    else:
        cfg.federation.aggregator = aggregator or "fedavg"
    if rounds is not None:
        cfg.train.rounds = rounds
    _execute(cfg.validate(), out, prompt)


@app.command()
def run(
    config: Path = typer.Option(..., "--config", help="TOML run file"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/<config stem>)"),
    prompt: str = typer.Option("", help="greedy sample before and after training (samples.json)"),
) -> None:
    """Run the federation described by a TOML file (see examples/run.toml)."""
    cfg = load_config(config)
    _execute(cfg, out or Path("runs") / config.stem, prompt)


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
    module = benchmark_module(name)
    argv = sys.argv
    sys.argv = [module, *ctx.args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv


mount(app)  # certs init, keyholder serve, aggregator serve, client run, up
mount_flower(app)  # flower sim
mount_budget(app)  # budget show

if __name__ == "__main__":
    main()
