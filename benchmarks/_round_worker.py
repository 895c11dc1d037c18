"""One timed secure-aggregation round of the ``secagg`` found at ``--root`` (a checkout of any version), as JSON.

Run by :mod:`benchmarks.hardening` in a fresh process per round, once with the current tree and once with the
baseline commit, so both protocols are timed by the same code on the same machine in one run. It only uses the
interface every version has: ``<scheme>.setup.build_round``, the roles' ``start``/``receive``/``close_stage`` and
``secagg.simulation.run_round``. Times are CPU seconds of this single-threaded process (``time.process_time``);
process start-up (imports, and where they exist the fused kernels' cached compiles, 0.3-0.6 s) is not timed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--scheme", choices=["masking", "ckks", "packed"], required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--dim", type=int, required=True)
    ap.add_argument("--drop", type=float, default=0.0, help="fraction of clients vanishing before their input")
    ap.add_argument("--options", default="{}", help="JSON keyword options for build_round")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sys.path.insert(0, args.root)
    import numpy as np

    import secagg
    from secagg.simulation import run_round

    try:  # process start-up, like the imports: the fused kernels' cached compiles load once per process
        from secagg import kernels
    except ImportError:  # a version before the kernels
        kernels = None
    if hasattr(kernels, "encode_fixed32_block"):
        kernels.encode_fixed32_block(np.zeros(1), 1.0, 1.0, False, np.zeros(1, np.uint32), np.zeros(1, np.uint32))
    if hasattr(kernels, "pad_block"):  # the HE kernels (issue 28)
        kernels.pad_block(np.zeros((1, 1), np.uint64), np.zeros((1, 1), np.uint64), 2, 3, subtract=True)
        kernels.tag_columns(np.zeros((1, 1, 1, 1), np.uint64), 0, np.zeros((1, 1), np.uint64),
                            np.zeros((1, 1), np.uint64), limbs=1, limb_bits=20, sub_bits=16)

    if args.scheme == "masking":
        from secagg.masking.messages import MaskedInput as Drop
        from secagg.masking.setup import build_round
    elif args.scheme == "ckks":
        from secagg.ckks.messages import CKKSContribution as Drop
        from secagg.ckks.setup import build_round
    else:
        from secagg.packed.messages import PackedContribution as Drop
        from secagg.packed.setup import build_round

    class Timed:
        """A role proxy counting its CPU seconds and the bytes of the messages it sends."""

        def __init__(self, role):
            self.role, self.cpu, self.up, self.down = role, 0.0, 0, 0

        def __getattr__(self, name):
            return getattr(self.role, name)

        def _call(self, fn, *a):
            t = time.process_time()
            outs = fn(*a)
            self.cpu += time.process_time() - t
            self.up += sum(len(o.payload) for o in outs)
            return outs

        def start(self, update, weight):
            return self._call(self.role.start, update, weight)

        def receive(self, *a):
            self.down += len(a[-1])
            return self._call(self.role.receive, *a)

        def close_stage(self):
            return self._call(self.role.close_stage)

    rng = np.random.default_rng(args.seed)  # benchmark data only
    n, dim = args.n, args.dim
    base = [rng.uniform(-1, 1, dim) for _ in range(min(n, 3))]
    xs = {i: base[i % len(base)] for i in range(n)}
    ws = {i: float(0.5 + 1.5 * (i % 7) / 6) for i in range(n)}
    t = time.process_time()
    rnd = build_round(list(range(n)), dim=dim, weights=ws, graph_seed=rng.bytes(16), **json.loads(args.options))
    setup = time.process_time() - t
    clients = {i: Timed(c) for i, c in rnd.clients.items()}
    agg = Timed(rnd.aggregator)
    kh = None if rnd.finalizer is None else Timed(rnd.finalizer)
    dropped = sorted(range(0, n, max(1, round(1 / args.drop))))[:round(args.drop * n)] if args.drop else []
    res = run_round(clients, agg, xs, ws, finalizer=kh, drop_at={d: Drop.TAG for d in dropped})
    alive = [i for i in range(n) if i not in dropped]
    w = np.array([ws[i] for i in alive])
    ref = (w[:, None] * np.stack([xs[i] for i in alive])).sum(0) / w.sum()
    print(json.dumps({
        "version": getattr(secagg, "__file__", ""), "scheme": args.scheme, "n": n, "dim": dim,
        "dropped": len(dropped), "contributors": len(res.contributors), "setup_cpu_s": setup,
        "client_cpu_s_median": statistics.median(clients[i].cpu for i in alive),
        "client_up_bytes_mean": statistics.mean(clients[i].up for i in alive),
        "client_down_bytes_mean": statistics.mean(clients[i].down for i in alive),
        "server_cpu_s": agg.cpu, "server_up_bytes": agg.up,
        "keyholder_cpu_s": 0.0 if kh is None else kh.cpu, "keyholder_up_bytes": 0 if kh is None else kh.up,
        "max_abs_error": float(np.max(np.abs(res.mean - ref))),
    }))


if __name__ == "__main__":
    main()
