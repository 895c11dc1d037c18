"""DP-SGD overhead: time per step and peak RSS of each DP mode against its own non-private counterpart.

Every mode runs in its own fresh subprocess (so peak RSS is per mode) on the same fixed full batches
(per-sequence loss, explicit position ids, SGD). DP modes use the default CSPRNG noise. Each DP mode is compared
with non-private training of **the same trainable set**, measured in the same run: hooks with the full model,
ghost with the full model with its embedding untied (what ghost clipping trains), LoRA with the same adapters
trained without DP. On a shared machine the fastest of 3 timed blocks per run and of ``--repeats`` interleaved
runs per mode is reported.

    python -m benchmarks.dp_overhead [--model tiny|smollm2-135m] [--steps 10] [--repeats 2] [--threads 1]
                                     [--batch 16] [--seq 64]

``tiny``: a 2-layer GPT-2 (d=64, vocab 512), every mode; writes benchmarks/results/dp_overhead.json.
``smollm2-135m``: the packaged pretrained SmolLM2-135M with LoRA r=8 on q/v (460,800 adapter parameters), DP
LoRA against non-private LoRA (full-model DP on 134.5M parameters is not a mode anyone runs on 2 cores); writes
benchmarks/results/dp_overhead_smollm2-135m.json.
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

COUNTERPART = {"hooks": "nonprivate", "ghost": "nonprivate-untied", "lora": "nonprivate-lora"}
MODES = ("nonprivate", "nonprivate-untied", "nonprivate-lora", "hooks", "ghost", "lora")
MODEL_MODES = {"tiny": MODES, "smollm2-135m": ("nonprivate-lora", "lora")}
RESULTS = Path(__file__).resolve().parent / "results"


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _model(name: str):
    from transformers import GPT2Config, GPT2LMHeadModel

    if name == "tiny":
        cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=128, bos_token_id=0,
                         eos_token_id=0)
        return GPT2LMHeadModel(cfg), 512
    from training.workload.trainer import ModelSpec, build_model

    model = build_model(ModelSpec(name=name, lora=False))
    return model, model.config.vocab_size


def worker(mode: str, steps: int, batch: int, seq: int, threads: int, model_name: str = "tiny") -> dict:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from privacy.dpsgd import make_private
    from privacy.hf import LoraSettings, apply_lora, position_ids_for, sequence_loss, untie_embeddings

    warnings.simplefilter("ignore")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, vocab = _model(model_name)
    data = torch.randint(0, vocab, (batch * 8, seq))
    batches = [data[i * batch:(i + 1) * batch] for i in range(8)]
    lora = LoraSettings()  # r=8, alpha 16, the attention projections: what mode="lora" uses
    if mode == "nonprivate-untied":
        untie_embeddings(model)
    elif mode == "nonprivate-lora":
        model = apply_lora(model, lora)
    rss_before = _peak_rss_mb()
    if mode.startswith("nonprivate"):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)

        def step(x):
            loss = sequence_loss(model(input_ids=x, position_ids=position_ids_for(x)).logits, x).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        loader = DataLoader(TensorDataset(data), batch_size=batch)
        trainer = make_private(model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0, mode=mode,
                               lora=lora if mode == "lora" else None)
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
    ap.add_argument("--model", choices=sorted(MODEL_MODES), default="tiny")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed block, 3 blocks per run "
                                                             "(default 10; smollm2-135m: 2)")
    ap.add_argument("--repeats", type=int, default=2, help="fresh-process runs per mode; the fastest is kept")
    ap.add_argument("--batch", type=int, default=None, help="default 16 (smollm2-135m: 8)")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 1; smollm2-135m: 2)")
    ap.add_argument("--worker", choices=MODES)
    args = ap.parse_args()
    big = args.model != "tiny"
    args.steps = args.steps or (2 if big else 10)
    args.batch = args.batch or (8 if big else 16)
    args.threads = args.threads or (2 if big else 1)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.batch, args.seq, args.threads, args.model)))
        return
    modes = MODEL_MODES[args.model]
    rows: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleave the modes so that background load hits them alike
        for mode in modes:
            out = subprocess.run([sys.executable, "-m", "benchmarks.dp_overhead", "--worker", mode, "--steps",
                                  str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                                  "--threads", str(args.threads), "--model", args.model],
                                 check=True, capture_output=True, text=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            if mode not in rows or row["seconds_per_step"] < rows[mode]["seconds_per_step"]:
                rows[mode] = row
    for mode, row in rows.items():
        if mode in COUNTERPART:
            ref = rows[COUNTERPART[mode]]
            assert ref["trainable_params"] == row["trainable_params"], (mode, ref["trainable_params"])
            row["counterpart"] = COUNTERPART[mode]
            row["time_ratio_vs_counterpart"] = row["seconds_per_step"] / ref["seconds_per_step"]
    dp_modes = [m for m in modes if m in COUNTERPART]
    best = min(dp_modes, key=lambda m: rows[m]["time_ratio_vs_counterpart"])
    print(f"{args.model}, batch {args.batch} x {args.seq} tokens, best of {args.repeats} runs x 3 blocks of "
          f"{args.steps} steps, {args.threads} torch thread(s)")
    print(f"{'mode':<19}{'s/step':>9}{'x counterpart':>15}{'peak RSS MB':>13}{'trainable':>11}")
    for mode, r in rows.items():
        ratio = f"{r['time_ratio_vs_counterpart']:.2f}" if "counterpart" in r else "-"
        print(f"{mode:<19}{r['seconds_per_step']:>9.4f}{ratio:>15}{r['peak_rss_mb']:>13.0f}{r['trainable_params']:>11}")
    print(f"best DP mode: {best} at {rows[best]['time_ratio_vs_counterpart']:.2f}x its non-private counterpart "
          "(target <= 1.5x)")
    path = RESULTS / ("dp_overhead.json" if args.model == "tiny" else f"dp_overhead_{args.model}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "python -m benchmarks.dp_overhead --model " + args.model,
                                "config": vars(args), "machine": platform.platform(), "modes": rows,
                                "best_dp_mode": best,
                                "best_dp_ratio": rows[best]["time_ratio_vs_counterpart"]}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
