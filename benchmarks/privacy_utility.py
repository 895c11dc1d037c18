"""Privacy–utility benchmark: final validation perplexity vs ε for each secure-aggregation scheme and aggregator.

Grid: ε ∈ {1, 2, 4, 8, ∞} (δ = 1e-5, DP-SGD on every client, σ calibrated so that every client's ε after the
whole run is at most the target) × scheme {ckks, masking, plaintext} × aggregator {fedavg, loss-weighted}, on the
embedded Shakespeare corpus (or WikiText-103 from ``--wikitext DIR``) with a tiny GPT-2. ε = ∞ is DP off with the
same rounds and steps (the non-private reference). ``plaintext`` is a benchmark-only baseline: the same federation
with the secure sum replaced by the exact float64 sum (no protection).

Initialisation: by default the tiny GPT-2 is first pre-trained non-privately on *public* text — Shakespeare plays
disjoint from the clients' plays and from the validation blocks (WikiText: articles after the private ones) — and
the federation then fine-tunes it with DP on the private plays (public pre-training + private fine-tuning, the
standard DP recipe, and the paper's "pre-trained language model" setting). ``--pretrain-steps 0`` trains from
scratch. The default run also spot-checks (ckks/fedavg at ε ∈ {8, ∞}) LoRA adapters (rank 8) on the pre-trained
model, where only the adapters are trained, noised and aggregated (``--checks scratch lora`` adds from scratch).

Learning rates: before the grid, the first (scheme, aggregator) runs at ε = 8 and ε = ∞ for every value of
``--lr-grid``; each side keeps its best (every finite ε uses the ε = 8 choice), recorded under ``lr_selection``.
The JSON also records, at the start model, the mean clipped gradient's norm against each ε's noise norm.

Goal checked: at ε = 8 the perplexity is within 15% of the non-private run of the same scheme and aggregator.
``--sweep-scheme S`` (default ``ckks``, the product default) runs the whole ε sweep for S only and spot-checks the
other schemes at ε ∈ {8, ∞} (a secure scheme changes utility only through its encoding error); ``--sweep-scheme
all`` runs the full 30-run grid (about twice the time). Writes JSON and a PNG (perplexity vs ε).

Run: ``python -m benchmarks.privacy_utility`` (``--quick`` for a smoke run). Timings: a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks._lm import clipped_signal, final_eval, make_runner, pretrain
from benchmarks._pu_report import GOAL_EPS, GOAL_RATIO, across_seeds, headline, plot, seed_table, summarize
from training.config import RunConfig
from training.workload.corpus import prepare

RESULTS = Path(__file__).resolve().parent / "results"
EPSILONS = (1.0, 2.0, 4.0, 8.0, math.inf)
SCHEMES = ("ckks", "masking", "plaintext")
AGGREGATORS = ("fedavg", "loss-weighted")
# Why the defaults are what they are (recorded in the JSON). DP-SGD's noise on the mean clipped gradient has norm
# ≈ σ·C·√d/B while the signal is at most C, and at fixed ε the accountant lets σ grow far slower than q = B/N.
CHOICES = {
    "private_data": "all 32 plays not used for public pre-training, no per-client cap (about 20k blocks per "
                    "client instead of 2,048): more records per client means a lower sample rate q for the same "
                    "batch, so less noise for the same ε",
    "batch_and_steps": "expected batch 128 for 8 rounds x 4 local steps (T = 32) instead of 64 for 8 x 8: the "
                       "same examples per client and compute, half the noise norm per step; both sides use the "
                       "same T and batch",
    "learning_rate": "each side (ε = 8 and ε = ∞) takes its best local AdamW lr from the same grid "
                     "(lr_selection); every finite ε uses the ε = 8 choice. Selection on the validation set is "
                     "itself not private (the usual caveat of DP hyper-parameter tuning)",
    "clip_norm": "C = 1; every per-sequence gradient norm exceeds it (noise_to_signal.start_model), so under Adam, "
                 "which is invariant to the gradient scale, a different C changes nothing but the clipping bias",
    "not_used": "frozen embeddings (the training package has no switch for it) and longer public pre-training "
                "(it would shrink the fine-tuning gain both sides are compared on)",
}


def base_config(args: argparse.Namespace, model_path: str | None) -> RunConfig:
    cfg = RunConfig()
    if args.wikitext:
        cfg.data.corpus, cfg.data.wikitext_dir = "wikitext", args.wikitext
    cfg.data.partition, cfg.data.n_documents, cfg.data.max_articles = args.partition, args.private_docs, \
        args.private_docs
    cfg.data.max_blocks_per_client = args.blocks_per_client or None
    cfg.data.block_size, cfg.data.vocab_size = args.block_size, args.vocab
    cfg.model.path, cfg.model.n_layer, cfg.model.n_embd = model_path, args.layers, args.embd
    cfg.train.rounds, cfg.train.local_steps, cfg.train.batch_size = args.rounds, args.local_steps, args.batch_size
    cfg.train.lr, cfg.train.seed = args.lr, args.seed
    cfg.federation.clients = args.clients
    cfg.federation.update_clip = args.update_clip
    cfg.dp.max_grad_norm, cfg.dp.delta, cfg.dp.accountant = args.max_grad_norm, args.delta, "prv"
    return cfg


def calibrate(cfg: RunConfig, eps: float, loss_releases: bool) -> dict:
    """σ such that every client's ε after rounds·local_steps DP-SGD steps (and, for the loss-weighted rule, its
    rounds·loss_batches DP loss releases at σ_L) is <= ``eps`` (the smallest client has the largest sample rate
    q = batch/N and so binds)."""
    from privacy.accounting import noise_multiplier_for_epsilon
    from privacy.events import PrivacyEvent
    from training.ledgers import RELATION

    data = prepare(cfg.data, cfg.federation.clients, np.random.default_rng(cfg.train.seed))
    n_min = min(len(c) for c in data.clients)
    q = min(1.0, cfg.train.batch_size / n_min)
    steps = cfg.train.rounds * cfg.train.local_steps
    releases = [PrivacyEvent(cfg.dp.loss_noise_multiplier, q, cfg.train.rounds * cfg.dp.loss_batches)] \
        if loss_releases else []
    sigma = noise_multiplier_for_epsilon(eps, q, steps, cfg.dp.delta, accountant="prv", history=releases,
                                         relation=RELATION)
    return {"sigma": sigma, "sample_rate": q, "steps": steps, "client_blocks": [len(c) for c in data.clients],
            "loss_releases": releases[0].steps if releases else 0,
            "loss_noise_multiplier": cfg.dp.loss_noise_multiplier if releases else None}


def run_one(args, scheme: str, aggregator: str, eps: float, init: str, sigmas: dict, model_path: str | None) -> dict:
    """One federation; ``init``: "pretrained" (full fine-tuning), "lora" (pre-trained base frozen, LoRA adapters
    trained and aggregated) or "scratch"."""
    cfg = base_config(args, None if init == "scratch" else model_path)
    cfg.model.lora = init == "lora"
    cfg.federation.aggregator = aggregator
    row: dict = {"scheme": scheme, "aggregator": aggregator, "init": init, "seed": args.seed,
                 "epsilon_target": None if math.isinf(eps) else eps, "lr": args.lr}
    if math.isinf(eps):
        cfg.dp.enabled = False
    else:
        cfg.train.lr = row["lr"] = args.dp_lr
        # the seed sets the split (so the smallest client's sample rate); the loss-weighted rule adds loss releases
        key = (args.seed, eps, aggregator == "loss-weighted")
        if key not in sigmas:
            sigmas[key] = calibrate(base_config(args, None), eps, loss_releases=key[2])
        cfg.dp.enabled, cfg.dp.noise_multiplier = True, sigmas[key]["sigma"]
        row["noise_multiplier"] = sigmas[key]["sigma"]
    t0 = time.perf_counter()
    try:
        runner = make_runner(cfg, scheme)
        rows = runner.run()
    except Exception as e:  # recorded, not hidden: e.g. a scheme that is not available in this checkout
        row.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=3))
        return row
    last = rows[-1]
    row.update(status="ok", initial_loss=runner.initial_loss, initial_perplexity=math.exp(min(runner.initial_loss, 50)),
               **final_eval(runner), epsilon_spent=last.epsilon,
               wall_seconds=time.perf_counter() - t0, train_seconds=sum(m.seconds for m in rows),
               compute_seconds=sum(m.compute_seconds for m in rows),
               secure_seconds=sum(m.secure_seconds for m in rows),
               bytes_up=sum(m.bytes_up for m in rows), bytes_down=sum(m.bytes_down for m in rows),
               loss_curve=[m.loss for m in rows], params=int(runner.fed.global_vec.size))
    if abs(row["val_loss"] - last.loss) > 1e-9:
        raise AssertionError("final eval must agree with the runner's last round")
    if row["epsilon_spent"] is not None and row["epsilon_spent"] > eps * 1.001:
        raise AssertionError(f"spent ε {row['epsilon_spent']:.3f} exceeds the target {eps}")
    return row


def plan(args) -> list[tuple[str, str, float, str]]:
    """(scheme, aggregator, ε, init) runs: the sweep scheme(s) at every ε, the others at ε ∈ {8, ∞}, plus the
    spot checks (from scratch; LoRA on the pre-trained model) at ε ∈ {8, ∞}; plaintext, then ckks, then masking."""
    eps_all = [float(e) for e in args.eps]
    init = "pretrained" if args.pretrain_steps > 0 else "scratch"
    out = []
    for scheme in args.schemes:
        full = args.sweep_scheme in ("all", scheme)
        eps_list = eps_all if full else [e for e in eps_all if e in (GOAL_EPS, math.inf)]
        out += [(scheme, agg, e, init) for agg in args.aggregators for e in eps_list]
    if init == "pretrained":
        scheme = "ckks" if "ckks" in args.schemes else args.schemes[0]
        out += [(scheme, args.aggregators[0], e, check) for check in args.checks for e in (GOAL_EPS, math.inf)]
    order = {"plaintext": 0, "ckks": 1, "masking": 2}
    return sorted(out, key=lambda t: (t[3] != init, order.get(t[0], 3)))


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", choices=["tiny", "smollm2-135m"],
                    help="smollm2-135m: the demo's DP LoRA federation per ε, seed and secure scheme, each ε at "
                         "the lr picked on a tuning split of other plays (benchmarks.smollm2_privacy; only "
                         "--eps, --seeds, --schemes, --out apply)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds x 2 steps, ε ∈ {8, ∞}, plaintext")
    ap.add_argument("--eps", nargs="+", type=float, default=list(EPSILONS), help="targets; 'inf' = no DP")
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    ap.add_argument("--aggregators", nargs="+", default=list(AGGREGATORS), choices=AGGREGATORS)
    ap.add_argument("--sweep-scheme", default="ckks", choices=(*SCHEMES, "all"),
                    help="this scheme runs every ε, the others ε ∈ {8, ∞}; 'all': the full grid")
    ap.add_argument("--wikitext", default=None, help="local WikiText-103 directory (raw or parquet layout)")
    ap.add_argument("--pretrain-steps", type=int, default=300, help="public pre-training steps (0: from scratch)")
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--pretrain-batch", type=int, default=64)
    ap.add_argument("--private-docs", type=int, default=None,
                    help="clients' documents: the first N plays by name (WikiText: N articles); public ones follow")
    ap.add_argument("--public-docs", type=int, default=None, help="public documents (default 6 plays / 600 articles)")
    ap.add_argument("--checks", nargs="*", default=["lora"], choices=["scratch", "lora"],
                    help="spot checks at ε ∈ {8, ∞} (ckks/fedavg): from scratch; LoRA (rank 8) on the pre-trained "
                         "model. Pass none to skip")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128, help="expected (Poisson) batch size of DP-SGD")
    ap.add_argument("--lr", type=float, default=3e-3, help="local AdamW lr without DP (ε = ∞) if no --lr-grid")
    ap.add_argument("--dp-lr", type=float, default=3e-3, help="local AdamW lr under DP-SGD if no --lr-grid")
    ap.add_argument("--lr-grid", nargs="*", type=float, default=[1e-3, 3e-3, 1e-2],
                    help="pick --lr and --dp-lr from this grid (each side its best at ε = ∞ / 8); none: no tuning")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--blocks-per-client", type=int, default=0, help="cap (a uniform sample); 0: no cap")
    ap.add_argument("--partition", default="by-document", choices=["by-document", "iid", "dirichlet"])
    ap.add_argument("--max-grad-norm", type=float, default=1.0)
    ap.add_argument("--update-clip", type=float, default=50.0,
                    help="L2 clip of every update (masking's public value bound); large enough not to bind")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="the whole plan runs once per seed (data split, initialisation, DP noise, batches); the lr "
                         "grid and the public pre-training use the first")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (PNG next to it)")
    args = ap.parse_args(argv)
    if args.public_docs is None:
        args.public_docs = 600 if args.wikitext else 6
    if args.quick:
        args.private_docs = args.private_docs or (60 if args.wikitext else 6)
        args.rounds, args.local_steps, args.blocks_per_client, args.pretrain_steps = 2, 2, 256, 20
        args.eps, args.checks, args.lr_grid, args.seeds = [GOAL_EPS, math.inf], [], [], args.seeds[:1]
        if args.schemes == list(SCHEMES):
            args.schemes = ["plaintext"]
    if args.private_docs is None:
        args.private_docs = 600 if args.wikitext else 32
    if args.out is None and args.model == "tiny":
        # a smoke run never overwrites the committed results
        args.out = (Path(tempfile.gettempdir()) / "secagg-bench" if args.quick else RESULTS) / \
            ("privacy_utility_quick.json" if args.quick else "privacy_utility.json")
    return args


def _log(r: dict, t0: float) -> None:
    eps = "inf" if r["epsilon_target"] is None else f"{r['epsilon_target']:g}"
    tag = f"{r['scheme']:>9} {r['aggregator']:>13} {r['init']:>10} eps={eps:>4} lr={r['lr']:g}"
    if r["status"] == "ok":
        print(f"{tag}: val loss {r['initial_loss']:.3f} -> {r['val_loss']:.3f} ppl {r['val_perplexity']:7.1f} "
              f"acc {r['val_next_token_accuracy']:.3f} eps_spent {r['epsilon_spent'] or 0:.2f} "
              f"{r['wall_seconds']:.1f} s (elapsed {time.perf_counter() - t0:.0f} s)", flush=True)
    else:
        print(f"{tag}: ERROR {r['error']}", flush=True)


def tune_lr(args, runs: list, sigmas: dict, model_path: str | None, t0: float) -> tuple[list[dict], list[dict]]:
    """Learning-rate selection, the same grid for both sides: the first (scheme, aggregator) of the plan at
    ε = 8 and ε = ∞ once per lr in ``args.lr_grid``; each side keeps its lowest validation loss (sets
    ``args.dp_lr`` / ``args.lr``). Returns (all grid rows, the two chosen rows, which stand for those runs)."""
    scheme, agg, _, init = runs[0]
    rows, best = [], {}
    for eps in (GOAL_EPS, math.inf):
        for lr in args.lr_grid:
            args.lr = args.dp_lr = lr
            rows.append(run_one(args, scheme, agg, eps, init, sigmas, model_path))
            _log(rows[-1], t0)
        ok = [r for r in rows if r["status"] == "ok" and (r["epsilon_target"] is None) == math.isinf(eps)]
        best[eps] = min(ok, key=lambda r: r["val_loss"])
    args.dp_lr, args.lr = best[GOAL_EPS]["lr"], best[math.inf]["lr"]
    return rows, [best[GOAL_EPS], best[math.inf]]


def main(argv=None) -> dict:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    args = parse(argv)
    if args.model != "tiny":
        from benchmarks import smollm2_privacy

        schemes = [s for s in args.schemes if s != "plaintext"]  # the plaintext baseline is tiny-model only
        return smollm2_privacy.main(["--eps", *map(str, args.eps), "--seeds", *map(str, args.seeds),
                                     "--schemes", *schemes] + (["--out", str(args.out)] if args.out else []))
    torch.set_num_threads(max(1, int(os.environ.get("BENCH_THREADS", "1"))))
    runs = plan(args)
    args.seed = args.seeds[0]
    print(f"privacy_utility: {len(runs)} runs x {len(args.seeds)} seeds (+{2 * len(args.lr_grid) - 2 if args.lr_grid else 0} for the lr "
          f"grid), {args.rounds} rounds x {args.local_steps} local steps, batch {args.batch_size}, "
          f"{args.clients} clients (shared 2-core machine)", flush=True)
    t0 = time.perf_counter()
    pre = pretrain(base_config(args, None), args.public_docs, args.pretrain_steps, args.pretrain_batch,
                   args.pretrain_lr, args.seed) if args.pretrain_steps > 0 else None
    path = pre["path"] if pre else None
    if pre:
        print(f"public pre-training: {pre['steps']} steps on {len(pre['public_documents'])} public documents "
              f"({pre['public_blocks']} blocks), train loss {pre['final_train_loss']:.3f}", flush=True)
    sigmas: dict = {}
    grid_rows, results = (tune_lr(args, runs, sigmas, path, t0) if args.lr_grid and GOAL_EPS in args.eps
                          and math.inf in args.eps else ([], []))
    done = {(r["seed"], r["scheme"], r["aggregator"], r["epsilon_target"] or math.inf, r["init"]) for r in results}
    for seed in args.seeds:
        args.seed = seed
        for scheme, agg, eps, init in runs:
            if (seed, scheme, agg, eps, init) not in done:
                results.append(run_one(args, scheme, agg, eps, init, sigmas, path))
                _log(results[-1], t0)
    args.seed = args.seeds[0]
    signal = clipped_signal(base_config(args, None), path, args.batch_size)
    snr = {f"{e:g}": {"sigma": v["sigma"], "noise_norm": v["sigma"] * args.max_grad_norm *
                      math.sqrt(signal["params"]) / args.batch_size} for (seed, e, rel), v in sigmas.items()
           if seed == args.seed and not rel}
    for v in snr.values():
        v["noise_to_signal"] = v["noise_norm"] / signal["clipped_mean_grad_norm"]
    cfg = asdict(base_config(args, path))
    cfg["federation"].pop("scheme")
    cfg["federation"].pop("aggregator")
    cfg["train"].update(lr_no_dp=args.lr, lr_dp=args.dp_lr, lr_grid=args.lr_grid)
    cfg["train"].pop("lr")
    report = {"benchmark": "privacy_utility", "quick": args.quick,
              "command": "python -m benchmarks.privacy_utility " + " ".join(argv or []),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads":
                          torch.get_num_threads(), "note": "shared 2-core machine"},
              "grid": {"epsilons": [None if math.isinf(e) else e for e in args.eps], "schemes": args.schemes,
                       "aggregators": args.aggregators, "sweep_scheme": args.sweep_scheme,
                       "delta": args.delta, "goal": f"ppl(eps={GOAL_EPS:g}) <= {GOAL_RATIO} x ppl(no DP)"},
              "config": cfg, "choices": CHOICES, "pretraining": pre,
              "calibration": {f"seed={s} eps={e:g}" + (" with loss releases" if rel else ""): v
                              for (s, e, rel), v in sigmas.items()},
              "lr_selection": [{k: r.get(k) for k in ("scheme", "aggregator", "epsilon_target", "lr", "status",
                                                      "val_loss", "val_perplexity")} for r in grid_rows],
              "noise_to_signal": {"start_model": signal, "per_epsilon": snr},
              "total_seconds": time.perf_counter() - t0, "runs": results,
              "summary": summarize([r for r in results if r["seed"] == args.seeds[0]]),
              "summary_by_seed": {str(s): summarize([r for r in results if r["seed"] == s]) for s in args.seeds}}
    report["across_seeds"] = across_seeds(report["summary_by_seed"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    if any(r["status"] == "ok" for r in results):
        plot(results, args.out.with_suffix(".png"))
    print(headline(report))
    print(seed_table(report["across_seeds"], args.seeds))
    print(f"start-of-training noise/signal per DP step (B={args.batch_size}, d={signal['params']}): " +
          ", ".join(f"ε={e} {v['noise_to_signal']:.1f}" for e, v in snr.items()))
    if args.quick:
        print("(smoke run: 4 local steps in all; these numbers say nothing about the goal)")
    print(f"wrote {args.out} ({report['total_seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
