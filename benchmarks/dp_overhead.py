"""DP-SGD overhead on a tiny GPT-2: steps/s and peak RSS, non-private vs hooks vs ghost vs LoRA.

Every mode runs in its own fresh subprocess (so peak RSS is per mode) on the same fixed full batches
(per-sequence loss, explicit position ids, SGD). DP modes use the default CSPRNG noise. Ratios are
time-per-step relative to non-private full fine-tuning, measured in the same run. On a shared machine the
fastest of 3 timed blocks per run and of ``--repeats`` interleaved runs per mode is reported.

    python -m benchmarks.dp_overhead [--steps 10] [--repeats 2] [--threads 1] [--batch 16] [--seq 64]
Writes benchmarks/results/dp_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

MODES = ("nonprivate", "hooks", "ghost", "lora")
RESULTS = Path(__file__).resolve().parent / "results" / "dp_overhead.json"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def worker(mode: str, steps: int, batch: int, seq: int, threads: int) -> dict:
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from transformers import GPT2Config, GPT2LMHeadModel

    from privacy.dpsgd import make_private
    from privacy.hf import position_ids_for, sequence_loss

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=128, bos_token_id=0,
                     eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    data = torch.randint(0, cfg.vocab_size, (batch * 8, seq))
    batches = [data[i * batch:(i + 1) * batch] for i in range(8)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    rss_before = _peak_rss_mb()
    if mode == "nonprivate":
        def step(x):
            loss = sequence_loss(model(input_ids=x, position_ids=position_ids_for(x)).logits, x).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        trainable = sum(p.numel() for p in model.parameters())
    else:
        loader = DataLoader(TensorDataset(data), batch_size=batch)
        trainer = make_private(model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0, mode=mode)
        step = trainer.step
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    model.train()
    for i in range(3):  # warm-up
        step(batches[i % 8])
    block_times = []  # the machine may be shared: time blocks of steps and keep the fastest block
    for _ in range(3):
        start = time.perf_counter()
        for i in range(steps):
            step(batches[i % 8])
        block_times.append((time.perf_counter() - start) / steps)
    per_step = min(block_times)
    return {"mode": mode, "steps": steps, "seconds_per_step": per_step, "steps_per_s": 1.0 / per_step,
            "block_seconds_per_step": block_times,
            "peak_rss_mb": _peak_rss_mb(), "rss_growth_mb": _peak_rss_mb() - rss_before,
            "trainable_params": trainable, "torch_threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="steps per timed block (3 blocks per run)")
    ap.add_argument("--repeats", type=int, default=2, help="fresh-process runs per mode; the fastest is kept")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 resists background load best)")
    ap.add_argument("--worker", choices=MODES)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.seq, args.threads)))
        return
    rows: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleave the modes so that background load hits them alike
        for mode in MODES:
            out = subprocess.run([sys.executable, "-m", "benchmarks.dp_overhead", "--worker", mode, "--steps",
                                  str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                                  "--threads", str(args.threads)],
                                 check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if mode not in rows or row["seconds_per_step"] < rows[mode]["seconds_per_step"]:
                rows[mode] = row
    base = rows["nonprivate"]["seconds_per_step"]
    for row in rows.values():
        row["time_ratio_vs_nonprivate"] = row["seconds_per_step"] / base
    best = min((m for m in MODES if m != "nonprivate"), key=lambda m: rows[m]["time_ratio_vs_nonprivate"])
    print(f"tiny GPT-2 (2 layers, d=64, vocab 512), batch {args.batch} x {args.seq} tokens, "
          f"best of {args.repeats} runs x 3 blocks of {args.steps} steps, {args.threads} torch thread(s)")
    print(f"{'mode':<11}{'steps/s':>9}{'x time':>8}{'peak RSS MB':>13}{'trainable':>11}")
    for mode, r in rows.items():
        print(f"{mode:<11}{r['steps_per_s']:>9.2f}{r['time_ratio_vs_nonprivate']:>8.2f}{r['peak_rss_mb']:>13.0f}"
              f"{r['trainable_params']:>11}")
    print(f"best DP mode: {best} at {rows[best]['time_ratio_vs_nonprivate']:.2f}x non-private time (target <= 1.5x)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"config": vars(args) | {"model": "gpt2 n_layer=2 n_embd=64 vocab=512"},
                                   "machine": platform.platform(), "modes": rows, "best_dp_mode": best,
                                   "best_dp_ratio": rows[best]["time_ratio_vs_nonprivate"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
