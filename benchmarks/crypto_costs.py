"""Crypto costs per scheme: per-client and server time and bytes of one round, with Flower and NVFlare references.

    python -m benchmarks.crypto_costs [--quick] [--max-work 1e7] [--no-flower]

Schemes: plaintext (float32 upload, weighted sum), masking with 32- and 16-bit rings (SecAgg+ graph, default
degree k), CKKS "default" and "add-only" (secagg.ckks), and packed BFV (secagg.packed). Grid: D in {1e5, 1e6,
1e7}, n in {3, 10, 100} (``--quick``: D in {1e4, 1e5}, n in {3, 10}). Every measured point is one real round
through the sans-I/O roles (every message as bytes), with each role's time and output bytes counted by a proxy.
A point whose work n*D exceeds the scheme's cap is **derived**, not run: times and bytes are scaled from the
largest measured D of the same scheme and n, linearly in the values per client (plaintext, masking: per-client
masking cost depends on the graph degree k, which n fixes) or in the ciphertexts per client (CKKS, packed).
JSON rows say ``"measured"`` or ``"derived from D=..."``.

References in the same run:
* Flower SecAgg+: ``flwr`` installed into a throwaway virtualenv under /tmp created here (never a project
  dependency); a subprocess times its client-side masking primitives (quantize, factor_combine, self mask and k
  pairwise masks from ``pseudo_rand_gen``, mod, ``ndarray_to_bytes``) at Flower's defaults, for the same D and k.
  Compared with our client's masked-input stage (``time_ratio``) and with our **whole** client, every stage:
  encoding, key agreement, signatures, Shamir shares and commitments, masking, unmasking
  (``whole_client_time_ratio``). Flower's figure leaves out its key agreement, Shamir sharing and unmasking, so
  the whole-client ratio is conservative (it flatters Flower). Skipped with a message if pip fails. The
  like-for-like comparison (Flower's whole client, server and round, every stage, same cohort, D, degree and
  threshold, one run) is ``benchmarks.secaggplus_whole``.
* NVFlare's published CKKS parameters in plain TenSEAL: N=8192, coeff [60, 40, 40], scale 2^40, 4096-value chunks.

Timings were taken on a shared 2-core machine; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tenseal as ts

from secagg.roles import AGGREGATOR, KEYHOLDER, Outbound, message_tag
from secagg.simulation import run_round

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMES = ("plaintext", "masking32", "masking16", "ckks-default", "ckks-add-only", "packed")
# largest n*D run for real per scheme; beyond it the point is derived (see module docstring)
WORK_CAP = {"plaintext": 1e9, "masking32": 1e8, "masking16": 1e8, "ckks-default": 1e7, "ckks-add-only": 1e7,
            "packed": 2e7}
QUICK_OUT = Path(tempfile.gettempdir()) / "secagg-bench"
FLWR_VENV = Path(tempfile.gettempdir()) / "secagg-bench-flwr"
NOTE = "timings on a shared 2-core machine (other jobs running); ratios are measured in the same run"


class _Timed:
    """Proxy around a role: total seconds in its methods, bytes it emits (by destination) and per-tag seconds."""

    def __init__(self, role: object) -> None:
        self.role, self.seconds, self.bytes_out, self.by_tag = role, 0.0, 0, {}
        self.bytes_to: dict[int, int] = {}

    def __getattr__(self, name: str):
        return getattr(self.role, name)

    def _call(self, fn: Callable, *args) -> list[Outbound]:
        t = time.perf_counter()
        outs = fn(*args)
        dt = time.perf_counter() - t
        self.seconds += dt
        if not isinstance(outs, list):  # a streamed answer: each message timed as it is taken
            return self._timed(iter(outs))  # type: ignore[return-value]
        for o in outs:
            self.bytes_out += len(o.payload)
            self.bytes_to[o.to] = self.bytes_to.get(o.to, 0) + len(o.payload)
        for tag in {message_tag(o.payload) for o in outs}:
            self.by_tag[tag] = self.by_tag.get(tag, 0.0) + dt
        return outs

    def start(self, update, weight):
        return self._call(self.role.start, update, weight)

    def stream(self, update, weight, *, part_chunks):
        """The role's streamed messages, each one's making timed and counted as it is taken."""
        return self._call(lambda: self.role.stream(update, weight, part_chunks=part_chunks))

    def _timed(self, parts):
        while True:
            got = self._call(lambda: [o] if (o := next(parts, None)) is not None else [])
            if not got:
                return
            yield from got

    def receive(self, *args):
        return self._call(self.role.receive, *args)

    def close_stage(self):
        return self._call(self.role.close_stage)


def _data(n: int, dim: int, seed: int = 0) -> tuple[dict[int, np.ndarray], dict[int, float], np.ndarray]:
    """Updates cycling through min(n, 3) distinct U(-1, 1) vectors (memory), weights U(0.5, 2), exact mean."""
    rng = np.random.default_rng(seed)  # benchmark data only; all secrets come from the CSPRNG inside the roles
    base = [rng.uniform(-1, 1, dim) for _ in range(min(n, 3))]
    ws = rng.uniform(0.5, 2.0, n)
    per = np.array([ws[i::len(base)].sum() for i in range(len(base))])
    mean = sum(p * b for p, b in zip(per, base)) / ws.sum()
    return {i: base[i % len(base)] for i in range(n)}, dict(enumerate(ws.tolist())), mean


def _plaintext_round(updates: dict[int, np.ndarray], weights: dict[int, float]) -> dict:
    client_s = server_s = 0.0
    up = 0
    acc = None
    for i, x in updates.items():
        t = time.perf_counter()
        payload = np.append(x, weights[i]).astype("<f4").tobytes()
        client_s += time.perf_counter() - t
        up += len(payload)
        t = time.perf_counter()
        v = np.frombuffer(payload, dtype="<f4")
        if acc is None:
            acc = np.zeros(v.size - 1)
        acc += float(v[-1]) * v[:-1]  # float64 accumulator, in place
        server_s += time.perf_counter() - t
    n = len(updates)
    return {"mean": acc / sum(weights.values()), "client_s": client_s / n, "client_stage_s": client_s / n,
            "up_bytes": up / n, "down_bytes": 0.0, "server_s": server_s, "keyholder_s": 0.0,
            "server_to_keyholder_bytes": 0}


def _build(scheme: str, n: int, dim: int, weights: dict[int, float]):
    seed = os.urandom(16)
    if scheme.startswith("masking"):
        from secagg.masking.messages import MaskedInput
        from secagg.masking.setup import build_round
        return build_round(range(n), dim=dim, weights=weights, graph_seed=seed, ring_bits=int(scheme[7:])), \
            MaskedInput.TAG
    if scheme.startswith("ckks"):
        from secagg.ckks.messages import CKKSContribution
        from secagg.ckks.setup import build_round
        return build_round(range(n), dim=dim, weights=weights, graph_seed=seed, params=scheme[5:]), \
            CKKSContribution.TAG
    from secagg.packed.messages import PackedContribution
    from secagg.packed.setup import build_round
    return build_round(range(n), dim=dim, weights=weights, graph_seed=seed), PackedContribution.TAG


def measure_round(scheme: str, n: int, dim: int, seed: int = 0) -> dict:
    """One real round of ``scheme``: per-client time (all stages, and the stage that makes the upload), bytes up
    and down per client, aggregator and key-holder time, and the max error of the mean against numpy."""
    updates, weights, ref = _data(n, dim, seed)
    t0 = time.perf_counter()
    if scheme == "plaintext":
        r = _plaintext_round(updates, weights)
    else:
        rnd, upload_tag = _build(scheme, n, dim, weights)
        clients = {i: _Timed(c) for i, c in rnd.clients.items()}
        agg = _Timed(rnd.aggregator)
        kh = _Timed(rnd.finalizer) if rnd.finalizer is not None else None
        res = run_round(clients, agg, updates, weights, finalizer=kh)  # type: ignore[arg-type]
        r = {"mean": res.mean,
             "client_s": sum(c.seconds for c in clients.values()) / n,
             "client_stage_s": sum(c.by_tag.get(upload_tag, 0.0) for c in clients.values()) / n,
             "up_bytes": sum(c.bytes_out for c in clients.values()) / n,
             "down_bytes": sum(v for k, v in agg.bytes_to.items() if k >= 0) / n,
             "server_s": agg.seconds, "keyholder_s": kh.seconds if kh else 0.0,
             "server_to_keyholder_bytes": agg.bytes_to.get(KEYHOLDER, 0)}
        assert set(agg.bytes_to) <= set(range(n)) | {KEYHOLDER, AGGREGATOR}
    err = float(np.max(np.abs(r.pop("mean") - ref)))
    return {**r, "max_abs_error": err, "wall_s": time.perf_counter() - t0, "fp32_bytes": 4 * dim,
            "up_ratio_fp32": r["up_bytes"] / (4 * dim)}


def work_units(scheme: str, n: int, dim: int) -> int:
    """What one client's cost is linear in: ciphertexts for the HE schemes (chunk padding included), else values."""
    if scheme.startswith("ckks"):
        from secagg.ckks.params import GUARD_SLOTS, PARAMS, chunk_count
        return chunk_count(dim + 1 + GUARD_SLOTS, PARAMS[scheme[5:]].slots)
    if scheme == "packed":
        from secagg.packed.params import PackedParams
        return PackedParams(max_cohort=max(2, n)).chunk_count(dim + 1)
    return dim


def _derive(row: dict, dim: int) -> dict:
    f = work_units(row["scheme"], row["n"], dim) / work_units(row["scheme"], row["n"], row["dim"])
    out = {k: (v * f if k in ("client_s", "client_stage_s", "up_bytes", "down_bytes", "server_s", "keyholder_s",
                              "server_to_keyholder_bytes", "wall_s") else v) for k, v in row.items()}
    out.update(dim=dim, fp32_bytes=4 * dim, up_ratio_fp32=out["up_bytes"] / (4 * dim), max_abs_error=None,
               source=f"derived from D={row['dim']:.0e} (linear in the values/ciphertexts per client)")
    return out


def run_grid(dims: list[int], ns: list[int], cap_scale: float = 1.0) -> list[dict]:
    rows: list[dict] = []
    for scheme in SCHEMES:
        measure_round(scheme, 3, 1000)  # warm-up: first-use costs (imports, TenSEAL set-up) stay out of the rows
        for n in ns:
            last = None
            for dim in sorted(dims):
                if n * dim <= WORK_CAP[scheme] * cap_scale or last is None:
                    row = {"scheme": scheme, "n": n, "dim": dim, **measure_round(scheme, n, dim), "source": "measured"}
                    last = row
                else:
                    row = _derive(last, dim)
                rows.append(row)
                print(f"  {scheme:13} n={n:<4} D={dim:<9.0e} client {row['client_s']:8.3f}s  server "
                      f"{row['server_s'] + row['keyholder_s']:8.3f}s  up {row['up_ratio_fp32']:6.2f}x fp32  "
                      f"err {'not measured' if row['max_abs_error'] is None else format(row['max_abs_error'], '.1e')}  "
                      f"[{row['source']}]", flush=True)
    return rows


def default_degree(n: int) -> int:
    from secagg.masking.config import MaskingConfig
    return int(MaskingConfig(participants=tuple(range(n)), dim=1).neighbors)  # type: ignore[arg-type]


def nvflare_reference(dims: list[int], max_measured: int) -> list[dict]:
    """Plain TenSEAL CKKS with NVFlare's published parameters: encrypt + serialize time and bytes per client."""
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 40, 40])
    ctx.global_scale = 2.0 ** 40
    out, last = [], None
    for dim in sorted(dims):
        if dim <= max_measured or last is None:
            x = np.random.default_rng(0).uniform(-1, 1, dim)
            best = float("inf")
            for _ in range(2 if dim <= 100_000 else 1):  # best of 2 where cheap
                t = time.perf_counter()
                size = sum(len(ts.ckks_vector(ctx, x[i:i + 4096].tolist()).serialize()) for i in range(0, dim, 4096))
                best = min(best, time.perf_counter() - t)
            last = {"dim": dim, "client_s": best, "up_bytes": size, "source": "measured"}
            out.append(last)
        else:
            f = -(-dim // 4096) / -(-last["dim"] // 4096)
            out.append({"dim": dim, "client_s": last["client_s"] * f, "up_bytes": last["up_bytes"] * f,
                        "source": f"derived from D={last['dim']:.0e} (linear in ciphertexts)"})
    return out


_FLWR_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import flwr
    from flwr.common import ndarray_to_bytes
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    try:
        from flwr.supercore.primitives.asymmetric import generate_key_pairs  # flwr >= 1.2x
    except ImportError:
        from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_key_pairs
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (factor_combine, parameters_addition,
        parameters_mod, parameters_multiply, parameters_subtraction)
    from flwr.common.secure_aggregation.quantization import quantize
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
    import os
    clip, target, mod = 8.0, 4194304, 4294967296          # Flower's SecAgg+ defaults
    out = {"flwr": flwr.__version__, "rows": []}
    def mask(dim, k):
        x = [np.random.default_rng(0).uniform(-1, 1, dim).astype(np.float32)]
        sk, _ = generate_key_pairs()
        peers = [generate_key_pairs()[1] for _ in range(k)]
        t = time.perf_counter()
        q_ratio = round(0.5 * target)
        p = quantize(parameters_multiply(x, q_ratio / target), clip, target)
        p = factor_combine(q_ratio, p)
        dims = [a.shape for a in p]
        p = parameters_addition(p, pseudo_rand_gen(os.urandom(32), mod, dims))
        for j, pk in enumerate(peers):
            mask = pseudo_rand_gen(generate_shared_key(sk, pk), mod, dims)
            p = parameters_addition(p, mask) if j % 2 else parameters_subtraction(p, mask)
        p = parameters_mod(p, mod)
        payload = [ndarray_to_bytes(a) for a in p]
        return time.perf_counter() - t, sum(len(b) for b in payload)
    mask(1000, 2)  # warm-up
    for dim, k in json.loads(sys.argv[1]):
        runs = [mask(dim, k) for _ in range(3 if dim * k <= 2e7 else 1)]  # best of 3 where cheap
        out["rows"].append({"dim": dim, "k": k, "client_s": min(r[0] for r in runs), "up_bytes": runs[0][1]})
    print(json.dumps(out))
""")


def flower_reference(points: list[tuple[int, int]], timeout: float = 1200) -> dict:
    """Time Flower's client-side SecAgg+ masking for each (D, k) in a throwaway virtualenv; ``{"skipped": why}``
    if it cannot be installed."""
    py = FLWR_VENV / "bin" / "python"
    try:
        if not py.exists():
            print(f"creating a throwaway virtualenv for flwr at {FLWR_VENV} (not a project dependency) ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(FLWR_VENV)], check=True, capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "flwr"], check=True, capture_output=True,
                           timeout=timeout)
        done = subprocess.run([str(py), "-c", _FLWR_SCRIPT, json.dumps(points)], check=True, capture_output=True,
                              text=True, timeout=timeout)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
        why = getattr(exc, "stderr", b"") or str(exc)
        why = why.decode() if isinstance(why, bytes) else why
        print(f"Flower reference SKIPPED: {why.strip()[-400:]}", flush=True)
        return {"skipped": why.strip()[-2000:]}


def _plot(rows: list[dict], refs: dict, path: Path, n_plot: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    panels = (("client_s", "per-client time, all stages (s)"), ("server_s", "server + key holder time (s)"),
              ("up_bytes", "upload bytes per client"))
    for ax, (key, label) in zip(axes, panels):
        for scheme in SCHEMES:
            pts = sorted((r for r in rows if r["scheme"] == scheme and r["n"] == n_plot), key=lambda r: r["dim"])
            ys = [r[key] + (r["keyholder_s"] if key == "server_s" else 0) for r in pts]
            line, = ax.plot([r["dim"] for r in pts], ys, "-", label=scheme)
            for r, y in zip(pts, ys):
                ax.plot(r["dim"], y, "o", color=line.get_color(),
                        mfc=line.get_color() if r["source"] == "measured" else "none")
        if key != "server_s":
            nv = refs["nvflare"]
            ax.plot([r["dim"] for r in nv], [r[key] for r in nv], "k--", label="NVFlare CKKS (TenSEAL)")
            fl = [r for r in refs.get("flower", {}).get("rows", []) if r["k"] == default_degree(n_plot)]
            if fl:
                ax.plot([r["dim"] for r in fl], [r[key] for r in fl], "k:", label="Flower SecAgg+ (masking)")
        ax.set(xscale="log", yscale="log", xlabel="D (values per update)", ylabel=label, title=f"{label}, n={n_plot}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"secagg crypto costs (filled: measured, hollow: derived, linear in values/ciphertexts); {NOTE}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ratios(rows: list[dict], refs: dict) -> list[dict]:
    out = []
    nv = {r["dim"]: r for r in refs["nvflare"]}
    fl = {(r["dim"], r["k"]): r for r in refs.get("flower", {}).get("rows", [])}
    for r in rows:
        if r["scheme"].startswith(("ckks", "packed")) and r["dim"] in nv:
            ref = nv[r["dim"]]
            out.append({"ours": r["scheme"], "theirs": "NVFlare CKKS", "n": r["n"], "dim": r["dim"],
                        "time_ratio": r["client_stage_s"] / ref["client_s"],
                        "whole_client_time_ratio": r["client_s"] / ref["client_s"],
                        "bytes_ratio": r["up_bytes"] / ref["up_bytes"],
                        "source": "measured" if r["source"] == ref["source"] == "measured" else "derived"})
        if r["scheme"] == "masking32" and (r["dim"], default_degree(r["n"])) in fl:
            ref = fl[(r["dim"], default_degree(r["n"]))]
            out.append({"ours": r["scheme"], "theirs": "Flower SecAgg+", "n": r["n"], "dim": r["dim"],
                        "k": ref["k"], "time_ratio": r["client_stage_s"] / ref["client_s"],
                        "whole_client_time_ratio": r["client_s"] / ref["client_s"],
                        "bytes_ratio": r["up_bytes"] / ref["up_bytes"], "source": r["source"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid: D in {1e4, 1e5}, n in {3, 10}")
    ap.add_argument("--max-work", type=float, default=1.0, help="scale every scheme's n*D measuring cap")
    ap.add_argument("--out", type=Path, default=None, help=f"output folder (default {RESULTS}; --quick: {QUICK_OUT})")
    ap.add_argument("--no-flower", action="store_true", help="skip the Flower reference (no virtualenv)")
    args = ap.parse_args()
    dims, ns = ([10_000, 100_000], [3, 10]) if args.quick else ([100_000, 1_000_000, 10_000_000], [3, 10, 100])
    t0 = time.perf_counter()
    print(f"crypto costs, D={dims}, n={ns} ({os.cpu_count()} CPUs; {NOTE})", flush=True)
    rows = run_grid(dims, ns, args.max_work)
    refs: dict = {"nvflare": nvflare_reference(dims, max_measured=1_000_000)}
    if args.no_flower:
        refs["flower"] = {"skipped": "--no-flower"}
    else:
        points = sorted({(d, default_degree(n)) for d in dims for n in ns})
        refs["flower"] = flower_reference([p for p in points if p[0] * p[1] <= 1e8])
    ratios = _ratios(rows, refs)
    print("\nours / theirs (per-client upload stage time; our whole client, every stage; upload bytes):")
    for r in ratios:
        print(f"  {r['ours']:13} / {r['theirs']:15} n={r['n']:<4} D={r['dim']:<8.0e} time {r['time_ratio']:6.2f}x  "
              f"whole client {r['whole_client_time_ratio']:6.2f}x  bytes {r['bytes_ratio']:6.2f}x  [{r['source']}]")
    for ref in refs["nvflare"]:
        print(f"  NVFlare CKKS D={ref['dim']:.0e}: {ref['client_s']:.2f}s, {ref['up_bytes'] / (4 * ref['dim']):.2f}x fp32"
              f" [{ref['source']}]")
    for ref in refs["flower"].get("rows", []):
        print(f"  Flower SecAgg+ D={ref['dim']:.0e} k={ref['k']}: {ref['client_s']:.3f}s, "
              f"{ref['up_bytes'] / (4 * ref['dim']):.2f}x fp32")
    out = args.out or (QUICK_OUT if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crypto_costs.json").write_text(json.dumps({
        "command": "python -m benchmarks.crypto_costs" + (" --quick" if args.quick else ""),
        "note": NOTE, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "tenseal": ts.__version__},
        "work_cap_n_times_D": {k: v * args.max_work for k, v in WORK_CAP.items()}, "rows": rows,
        "references": refs, "ratios": ratios, "total_s": time.perf_counter() - t0}, indent=1) + "\n")
    _plot(rows, refs, out / "crypto_costs.png", n_plot=ns[1])
    print(f"wrote {out / 'crypto_costs'}.json and .png in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
