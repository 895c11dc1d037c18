"""CKKS micro-benchmark: per-client encryption, aggregation, decryption, wire bytes and error for one round.

    python -m benchmarks.ckks_micro [--dim 1000000] [--n 3]

For each vetted parameter set it runs one verified round (clients encrypt and pad [w*x, w, guards] and seal their
pad seeds to the key holder; the aggregator adds; the key holder removes the pads, decrypts and checks the
guards) of ``n`` clients with ``x ~ U(-1, 1)^dim`` and weights ~ U(0.5, 2), and reports the bytes of one
contribution (and of its pad seed) against float32 (4*dim bytes), the key holder's time (seeds, pads, decryption,
guards) and the largest absolute error of the decrypted weighted mean against a float64 numpy computation.
Results go to benchmarks/results/ckks_micro.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import tenseal as ts

from secagg.he_keyholder import granted_tag_key
from secagg.ckks import PARAMS, CKKSAggregator, CKKSClient, KeyHolder
from secagg.roles import AGGREGATOR, KEYHOLDER

RESULTS = Path(__file__).resolve().parent / "results" / "ckks_micro.json"
TARGET_RATIO, TARGET_ERROR = 14.5, 1e-6  # default set: at most 14.5x float32, error at most 1e-6


def _round(kh: KeyHolder, xs: list[np.ndarray], ws: list[float], round_id: int) -> dict:
    ctx, n, dim = kh.public_context(), len(xs), xs[0].shape[0]
    clients = [CKKSClient(i, ctx, round_id=round_id, max_cohort=n, tag_key=granted_tag_key(kh, i)) for i in range(n)]
    t = time.perf_counter()
    sent = [c.start(x, w) for c, x, w in zip(clients, xs, ws)]
    encrypt = (time.perf_counter() - t) / n
    seeds, payloads = [s.payload for s, _ in sent], [p.payload for _, p in sent]
    agg = CKKSAggregator(ctx, range(n), dim=dim, round_id=round_id)
    t = time.perf_counter()
    for i, p in enumerate(payloads):
        outs = agg.receive(i, p)
    aggregate = time.perf_counter() - t
    (to_kh,) = outs
    t = time.perf_counter()
    for i, seed in enumerate(seeds):
        kh.receive(i, seed)
    (back,) = kh.receive(AGGREGATOR, to_kh.payload)
    decrypt = time.perf_counter() - t
    agg.receive(KEYHOLDER, back.payload)
    res = agg.result()
    w = np.array(ws)
    ref = (w[:, None] * np.stack(xs)).sum(0) / w.sum()
    per_client = sum(len(p) for p in payloads) / n
    return {
        "encrypt_s_per_client": encrypt,
        "aggregate_s": aggregate,
        "decrypt_s": decrypt,
        "bytes_per_client": per_client,
        "seed_bytes_per_client": sum(len(s) for s in seeds) / n,
        "ratio_to_fp32": per_client / (4 * dim),
        "aggregate_bytes": len(to_kh.payload),
        "max_abs_error": float(np.max(np.abs(res.mean - ref))),
    }


def run(dim: int = 1_000_000, n: int = 3, params: str = "default") -> dict:
    """One verified round with ``params``; returns timings, sizes and errors (under ``modes``: "pre-weighted")."""
    p = PARAMS[params]
    rng = np.random.default_rng(0)  # test data only; keys and encryption randomness come from SEAL's CSPRNG
    xs = [rng.uniform(-1, 1, dim) for _ in range(n)]
    ws = rng.uniform(0.5, 2.0, n).tolist()
    t = time.perf_counter()
    kh = KeyHolder(params)
    keygen = time.perf_counter() - t
    return {
        "params": params, "poly_modulus_degree": p.poly_modulus_degree,
        "coeff_mod_bit_sizes": list(p.coeff_mod_bit_sizes), "scale_bits": p.scale_bits,
        "dim": dim, "n": n, "keygen_s": keygen, "public_context_bytes": len(kh.public_context()),
        "modes": {"pre-weighted": _round(kh, xs, ws, round_id=1)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1_000_000)
    ap.add_argument("--n", type=int, default=3)
    args = ap.parse_args()
    runs = [run(args.dim, args.n, name) for name in PARAMS]
    print(f"CKKS, D={args.dim:,}, n={args.n} clients ({os.cpu_count()} CPUs, TenSEAL {ts.__version__})")
    print(f"{'params':9} {'weighting':12} {'enc/client s':>12} {'aggregate s':>11} {'key holder s':>12} "
          f"{'MB/client':>9} {'x fp32':>7} {'max err':>9}")
    for r in runs:
        for mode, m in r["modes"].items():
            print(f"{r['params']:9} {mode:12} {m['encrypt_s_per_client']:12.2f} {m['aggregate_s']:11.2f} "
                  f"{m['decrypt_s']:12.2f} {m['bytes_per_client'] / 1e6:9.1f} {m['ratio_to_fp32']:7.2f} "
                  f"{m['max_abs_error']:9.1e}")
    default = runs[0]["modes"]
    ok = all(m["ratio_to_fp32"] <= TARGET_RATIO and m["max_abs_error"] <= TARGET_ERROR for m in default.values())
    print(f"default target (<= {TARGET_RATIO}x fp32, error <= {TARGET_ERROR:g}): {'met' if ok else 'MISSED'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                               "tenseal": ts.__version__},
                                   "targets": {"default_ratio_to_fp32": TARGET_RATIO, "max_abs_error": TARGET_ERROR},
                                   "default_targets_met": ok, "runs": runs}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
