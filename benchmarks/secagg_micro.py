"""Secure-aggregation micro-benchmark: pairwise masking (SecAgg+) against its AES-CTR bound, and CKKS.

    python -m benchmarks.secagg_micro [--quick] [--dim 1000000] [--ns 10 100] [--ckks-n 10]

Masking: for each n, full rounds of n clients (every role a separate object, every message as bytes; the driver
calls the roles directly so each call is timed on its own) with 0% and 10% dropout; the 10% (a random set) drop
out after sharing their keys and before their masked input, the costly case for the server (it reconstructs their
mask keys and removes their pairwise masks). A neighbourhood tolerates only k + 1 - t such losses, so a random set
is redrawn until the round can finish; the share of random sets that would end it with DropoutError is reported.
Reported:

* client time: the median over clients, in the 0% round, of the sum of its calls in all five stages (encode and
  key generation, key sharing, masking, consistency, unmask), and its parts;
* the bound (issue 28): the work the protocol requires of one client, (k+1)*D*4 bytes of AES-128-CTR keystream
  plus V = k + min_signers Ed25519 verifications by ``cryptography`` (the k neighbours' signed key advertisements
  and the consistency quorum's signatures). A is the median time of 4*D bytes of keystream (256 KiB
  ``update_into`` calls into a cache-resident buffer) generated right after every timed client call (same load as
  the client work), one verification the median of 50 timed right after the round; the AES-only ratio and the
  ratio to a best-case AES bound (fastest of 15 calls) are recorded too;
* the client's main costs, each timed alone at the same D and k right after the round (same load): fixed-point
  encoding (with its own AES-CTR rounding stream, also timed alone), expanding and adding the k+1 mask keystreams,
  serialising the masked input (CRC-32 and one copy, in ``secagg.messages``), 2k X25519 + HKDF key agreements
  (channel keys and mask seeds), and the k + min_signers Ed25519 verifications of a signed round (the k roster
  key signatures, the min_signers consistency signatures: what a signed round adds to an unsigned one); each
  also as a multiple of the AES time of 4*D bytes sampled right after it;
* server unmask time: the server's time in the unmask stage (receiving every UnmaskResponse, Shamir
  reconstruction, key agreement for dropped clients, re-expanding and removing the masks, decoding);
* bytes per client up and down (all messages), and upload relative to float32 (4*D bytes).

CKKS: ``benchmarks.ckks_micro.run`` with the default parameter set at ``--ckks-n`` clients: per-client encryption
time and bytes, aggregation and decryption time, max error against numpy. Per-client cost does not depend on n;
the aggregation time at n=100 is extrapolated linearly from the measured one (marked as such).

Masking times are CPU seconds of this single-threaded process (``time.process_time``), so other jobs on a shared
machine (the committed results come from a shared 2-core machine) inflate them little; the server's unmask wall
time is recorded too. CKKS times are wall seconds (TenSEAL may use threads). Ratios are measured in the same run.
Each n runs ``--repeats`` times (default 3): the client/AES ratios are the median over repeats with their range; the
other numbers are the median repeat's. Writes benchmarks/results/secagg_micro.json and .png (``--quick``: one
repeat at D = 100,000, written under the temporary directory, never over the committed results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks import ckks_micro
from benchmarks._aes_probe import CLOCK, AesProbe, verify_s
from secagg.hazmat import kex
from secagg.hazmat import sign as ed25519
from secagg.hazmat.prg import U32Stream, add_masks
from secagg.masking import MaskingClient, MaskingConfig, MaskingServer
from secagg.masking.messages import MaskedInput
from secagg.roles import AGGREGATOR, Outbound

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"client_vs_bound": 1.5, "server_unmask_n100_10pct_s": 1.0, "upload_vs_fp32": 1.05,
           "ckks_default_vs_fp32": 14.5, "ckks_max_error": 1e-6}
STAGES = ("encode+keys", "share keys", "mask", "consistency", "unmask")


def recoverable(cfg: MaskingConfig, dropped: set[int]) -> bool:
    """Whether the server can finish when ``dropped`` vanish after sharing keys: every survivor's self-mask needs
    t live holders among itself and its neighbours, every dropped client's mask key t live neighbours."""
    t = cfg.t
    return all(len(cfg.graph[u] - dropped) + (u not in dropped) >= t for u in cfg.participants)


def unrecoverable_rate(cfg: MaskingConfig, count: int, draws: int = 4000) -> float:
    """Share of uniformly random ``count``-client dropout sets (after key sharing) that end the round with
    DropoutError on this graph: each neighbourhood tolerates only k + 1 - t losses."""
    rng = np.random.default_rng(1)
    ids = np.array(cfg.participants)
    return sum(not recoverable(cfg, set(rng.choice(ids, count, replace=False).tolist()))
               for _ in range(draws)) / draws


def masking_round(n: int, dim: int, drop_frac: float, round_id: int, probe: AesProbe,
                  neighbors: int | None = None) -> dict:
    """One timed round of ``n`` clients (graph degree ``neighbors``, default ours); ``round(drop_frac * n)`` random
    ones vanish before their masked input (redrawn until the round can finish: the failure rate of random sets is
    measured by :func:`unrecoverable_rate`)."""
    cfg = MaskingConfig(participants=tuple(range(n)), dim=dim, weight_bound=2.0, round_id=round_id,
                        graph_seed=os.urandom(16), neighbors=neighbors)
    keys = {i: ed25519.generate() for i in range(n)}  # the hardened default: signed rounds
    public = {i: k.public_key() for i, k in keys.items()}
    clients = {i: MaskingClient(i, cfg, identity=keys[i], peer_identities=public) for i in range(n)}
    server = MaskingServer(cfg, peer_identities=public)
    rng, redraws = np.random.default_rng(round_id), 0
    while True:
        dropped = set(rng.choice(n, round(drop_frac * n), replace=False).tolist())
        if recoverable(cfg, dropped):
            break
        redraws += 1
    ctime: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(STAGES, 0.0))
    stime: dict[str, float] = defaultdict(float)
    swall: dict[str, float] = defaultdict(float)
    up: dict[int, int] = defaultdict(int)
    down: dict[int, int] = defaultdict(int)

    def to_server(sender: int, outs: list[Outbound]) -> list[Outbound]:
        got = []
        for o in outs:
            assert o.to == AGGREGATOR
            up[sender] += len(o.payload)
            stage = server.stage
            t, w = CLOCK(), time.perf_counter()
            got += server.receive(sender, o.payload)
            stime[stage] += CLOCK() - t
            swall[stage] += time.perf_counter() - w
        return got

    def to_clients(stage: str, outs: list[Outbound], skip: frozenset[int] | set[int] = frozenset()) -> list[Outbound]:
        back = []
        for o in outs:
            if o.to in skip:
                continue
            down[o.to] += len(o.payload)
            t = CLOCK()
            reply = clients[o.to].receive(o.payload)
            ctime[o.to][stage] += CLOCK() - t
            probe()
            back += to_server(o.to, reply)
        return back

    weighted, total_w = np.zeros(dim), 0.0
    outs: list[Outbound] = []
    for i in range(n):
        x = np.random.default_rng(i).uniform(-1, 1, dim)  # test data only
        w = 0.5 + 1.5 * (i % 7) / 6
        t = CLOCK()
        first = clients[i].start(x, w)
        ctime[i]["encode+keys"] += CLOCK() - t
        probe()
        if i not in dropped:
            weighted += w * x
            total_w += w
        outs += to_server(i, first)
    outs = to_clients("share keys", outs)
    outs = to_clients("mask", outs, skip=dropped)  # the dropped clients vanish here
    if not outs:
        t = CLOCK()
        outs = server.close_stage()
        stime["masked"] += CLOCK() - t
    outs = to_clients("consistency", outs)
    outs = to_clients("unmask", outs)
    assert server.done and not outs
    res = server.result()
    err = float(np.max(np.abs(res.mean - weighted / total_w)))
    totals = {i: sum(c.values()) for i, c in ctime.items()}
    full = [i for i in range(n) if i not in dropped]
    return {
        "n": n, "dim": dim, "k": cfg.neighbors, "t": cfg.t, "min_signers": cfg.min_signers, "dropped": len(dropped), "dropout_redraws": redraws,
        "contributors": len(res.contributors), "max_abs_error": err,
        "client_s_median": statistics.median(totals[i] for i in full),
        "client_s_min": min(totals[i] for i in full),
        "client_s_sum": sum(totals.values()),  # every client's calls, the dropped ones' included
        "client_stage_s_median": {s: statistics.median(ctime[i][s] for i in full) for s in STAGES},
        "server_stage_s": dict(stime),
        "server_unmask_s": stime["unmask"],
        "server_unmask_wall_s": swall["unmask"],
        "bytes_up_per_client": statistics.mean(up[i] for i in full),
        "bytes_down_per_client": statistics.mean(down[i] for i in full),
        "upload_vs_fp32": statistics.mean(up[i] for i in full) / (4 * dim),
    }


def client_parts(n: int, dim: int, repeats: int = 7) -> tuple[dict[str, float], float]:
    """Median CPU seconds of the masking client's main costs at this D and k, each timed alone, and the median
    AES-CTR time of 4*D bytes sampled right after each of them (the unit they are compared with)."""
    cfg = MaskingConfig(participants=tuple(range(n)), dim=dim, weight_bound=2.0)
    k = int(cfg.neighbors)  # type: ignore[arg-type]
    x = np.random.default_rng(0).uniform(-1, 1, dim)  # test data only
    enc = np.empty(dim + 1, dtype=cfg.dtype)
    seeds = [os.urandom(16) for _ in range(k + 1)]
    sk, pk = kex.generate(), kex.public_bytes(kex.generate())
    ident = ed25519.generate()
    signed = os.urandom(8 * n + 64)  # about the size of a survivor-list payload
    sig, vk = ed25519.sign(ident, signed), ident.public_key()
    checks = k + int(cfg.min_signers)  # the roster's k key signatures and min_signers consistency signatures

    def rounding_stream() -> None:
        words = U32Stream(1 << 15)
        for lo in range(0, dim, 1 << 15):
            words.next(min(1 << 15, dim - lo))

    parts = {"encode": lambda: cfg.value_codec.encode(x, factor=0.7, out=enc[:-1]),
             "rounding stream (in encode)": rounding_stream,
             "masks": lambda: add_masks(enc, seeds[:k // 2 + 1], seeds[k // 2 + 1:]),
             "serialise": lambda: MaskedInput(round_id=0, client_id=0, first=0, masked=enc).to_bytes(),
             "key agreement": lambda: [kex.mask_seed(sk, pk, session=bytes(32), u=0, v=1) for _ in range(2 * k)],
             "signature checks": lambda: [ed25519.verify(vk, sig, signed) for _ in range(checks)]}
    times: dict[str, list[float]] = defaultdict(list)
    probe = AesProbe(4 * dim)
    for _ in range(repeats):
        for name, fn in parts.items():
            t = CLOCK()
            fn()
            times[name].append(CLOCK() - t)
            probe()
    return {name: statistics.median(v) for name, v in times.items()}, statistics.median(probe.samples)


def run_masking(ns: list[int], dim: int, repeats: int = 3) -> list[dict]:
    """Per n, ``repeats`` times: a 0% and a 10% dropout round, client time against (k+1) x the AES time sampled
    during the 0% round. The ratios are the median over repeats, their range kept; the rest is the median repeat's."""
    out = []
    for r, n in enumerate(ns):
        reps = []
        for j in range(repeats):
            probe = AesProbe(4 * dim)
            clean = masking_round(n, dim, 0.0, round_id=2 * (r * repeats + j), probe=probe)
            aes_4d = statistics.median(probe.samples)  # AES of 4*D bytes, sampled next to every client call
            best = probe.best_speed()
            drop = masking_round(n, dim, 0.1, round_id=2 * (r * repeats + j) + 1, probe=probe)
            k1, checks, one = clean["k"] + 1, clean["k"] + clean["min_signers"], verify_s()
            bound, best_bound = k1 * aes_4d, k1 * 4 * dim / best
            client, encode = clean["client_s_median"], clean["client_stage_s_median"]["encode+keys"]
            reps.append({"n": n, "dim": dim, "aes_ctr_bytes_per_s": 4 * dim / aes_4d,
                         "aes_ctr_best_bytes_per_s": best, "aes_bound_s": bound, "aes_bound_best_s": best_bound,
                         "signature_checks": checks, "verify_s": one, "bound_s": bound + checks * one,
                         "client_vs_bound": client / (bound + checks * one),
                         "client_vs_aes_bound": client / bound, "client_vs_best_aes_bound": client / best_bound,
                         "masking_only_vs_aes_bound": (client - encode) / bound,
                         "no_dropout": clean, "dropout_10pct": drop})
        ratios = sorted(x["client_vs_bound"] for x in reps)
        row = dict(sorted(reps, key=lambda x: x["client_vs_bound"])[len(reps) // 2])  # the median repeat
        row["repeats"] = {"count": repeats, **{key: [x[key] for x in reps] for key in (
            "client_vs_bound", "client_vs_aes_bound", "client_vs_best_aes_bound", "masking_only_vs_aes_bound")},
            "client_s_median": [x["no_dropout"]["client_s_median"] for x in reps],
            "server_unmask_10pct_s": [x["dropout_10pct"]["server_unmask_s"] for x in reps]}
        row["client_vs_bound_range"] = [ratios[0], ratios[-1]]
        parts, aes_parts = client_parts(n, dim)
        cfg = MaskingConfig(participants=tuple(range(n)), dim=1, graph_seed=os.urandom(16))
        row["random_10pct_dropout_unrecoverable_rate"] = unrecoverable_rate(cfg, round(0.1 * n))
        row.update(client_parts_s=parts, client_parts_vs_aes_4d={p: v / aes_parts for p, v in parts.items()})
        out.append(row)
    return out


def run_ckks(dim: int, n: int) -> dict:
    res = ckks_micro.run(dim=dim, n=n, params="default")
    for m in res["modes"].values():
        m["aggregate_s_n100_extrapolated"] = m["aggregate_s"] * 100 / n
    return res


def verdicts(masking: list[dict], ckks: dict) -> list[tuple[str, str, float, bool]]:
    rows = []
    for m in masking:
        r = m["client_vs_bound"]
        rows.append((f"masking client n={m['n']} (k={m['no_dropout']['k']}) / (k+1)·AES + V·Ed25519",
                     f"<= {TARGETS['client_vs_bound']}x", r, r <= TARGETS["client_vs_bound"]))
    for m in masking:
        if m["n"] == 100:
            s = m["dropout_10pct"]["server_unmask_s"]
            rows.append(("server unmask n=100, 10% dropout [s]", f"< {TARGETS['server_unmask_n100_10pct_s']} s", s,
                         s < TARGETS["server_unmask_n100_10pct_s"]))
    for m in masking:
        u = m["no_dropout"]["upload_vs_fp32"]
        rows.append((f"masking upload n={m['n']} / fp32 (32-bit ring)", f"<= {TARGETS['upload_vs_fp32']}x", u,
                     u <= TARGETS["upload_vs_fp32"]))
    for mode, c in ckks["modes"].items():
        rows.append((f"CKKS default ({mode}, verified) bytes / fp32", f"<= {TARGETS['ckks_default_vs_fp32']}x",
                     c["ratio_to_fp32"], c["ratio_to_fp32"] <= TARGETS["ckks_default_vs_fp32"]))
        rows.append((f"CKKS default ({mode}, verified) max error", f"<= {TARGETS['ckks_max_error']:g}",
                     c["max_abs_error"], c["max_abs_error"] <= TARGETS["ckks_max_error"]))
    return rows


def plot(masking: list[dict], ckks: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    labels = [f"n={m['n']}\nk={m['no_dropout']['k']}" for m in masking]
    xs = np.arange(len(masking))
    bottom = np.zeros(len(masking))
    for s in STAGES:
        v = np.array([m["no_dropout"]["client_stage_s_median"][s] * 1e3 for m in masking])
        ax.bar(xs - 0.2, v, 0.4, bottom=bottom, label=s)
        bottom += v
    aes = np.array([m["aes_bound_s"] * 1e3 for m in masking])
    ax.bar(xs + 0.2, aes, 0.4, color="k", label="(k+1) AES-CTR passes")
    ax.bar(xs + 0.2, [m["bound_s"] * 1e3 - a for m, a in zip(masking, aes)], 0.4, bottom=aes, color="0.55",
           label="V Ed25519 verifications")
    limit = [TARGETS["client_vs_bound"] * 1e3 * m["bound_s"] for m in masking]
    ax.plot(xs + 0.2, limit, "r_", ms=30, mew=2, label=f"{TARGETS['client_vs_bound']}x bound (target)")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("CPU ms per client (median)")
    ax.set_title(f"masking client, D={masking[0]['dim']:,}")
    ax.set_ylim(0, 1.5 * max(max(bottom), max(limit)))
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    ax = axes[1]
    for j, key in enumerate(("no_dropout", "dropout_10pct")):
        ax.bar(xs + (j - 0.5) * 0.4, [m[key]["server_unmask_s"] for m in masking], 0.4,
               label="0% dropout" if j == 0 else "10% dropout")
    ax.axhline(TARGETS["server_unmask_n100_10pct_s"], color="r", ls="--", label="target (n=100, 10%)")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("CPU s")
    ax.set_title("server unmask stage")
    ax.legend(fontsize=8)
    ax = axes[2]
    names = [f"masking n={m['n']}" for m in masking] + [f"CKKS {k}" for k in ckks["modes"]]
    vals = [m["no_dropout"]["upload_vs_fp32"] for m in masking] + [c["ratio_to_fp32"] for c in ckks["modes"].values()]
    ax.bar(range(len(vals)), vals, color=["C0"] * len(masking) + ["C1"] * len(ckks["modes"]))
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(vals)), names, rotation=15, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("upload bytes / float32 bytes")
    ax.set_title("bytes per client (upload)")
    fig.suptitle("secagg micro-benchmark (shared 2-core machine; ratios measured in the same run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="D=100,000, CKKS with 3 clients (a smoke run)")
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--ns", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--ckks-n", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="masking rounds per n (default 3; --quick: 1)")
    args = ap.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    dim = args.dim or (100_000 if args.quick else 1_000_000)
    ckks_n = args.ckks_n or (3 if args.quick else 10)
    print(f"secagg micro-benchmark: D={dim:,}, masking n in {args.ns}, CKKS n={ckks_n} "
          f"({os.cpu_count()} CPUs, shared machine: ratios are measured in the same run)")
    masking = run_masking(args.ns, dim, repeats)
    ckks = run_ckks(dim, ckks_n)

    print(f"\n{'masking':10} {'k':>3} {'t':>3} {'client ms':>9} {'bound ms':>12} {'ratio':>6} {'mask-only':>9} "
          f"{'unmask 0% s':>11} {'unmask 10% s':>12} {'up KB':>8} {'down KB':>8} {'up/fp32':>8} {'max err':>8}")
    for m in masking:
        c, d = m["no_dropout"], m["dropout_10pct"]
        print(f"n={m['n']:<8} {c['k']:3d} {c['t']:3d} {c['client_s_median'] * 1e3:9.1f} {m['bound_s'] * 1e3:12.2f} "
              f"{m['client_vs_bound']:6.2f} {m['masking_only_vs_aes_bound']:9.2f} {c['server_unmask_s']:11.3f} "
              f"{d['server_unmask_s']:12.3f} {c['bytes_up_per_client'] / 1e3:8.1f} "
              f"{c['bytes_down_per_client'] / 1e3:8.1f} {c['upload_vs_fp32']:8.4f} "
              f"{max(c['max_abs_error'], d['max_abs_error']):8.1e}")
        lo, hi = m["client_vs_bound_range"]
        print(f"{'':10} random 10% dropout sets (after key sharing) that end the round with DropoutError at "
              f"k={c['k']}, t={c['t']}: {100 * m['random_10pct_dropout_unrecoverable_rate']:.1f}%")
        print(f"{'':10} client / bound over {m['repeats']['count']} repeats: median {m['client_vs_bound']:.2f}"
              f" [{lo:.2f}, {hi:.2f}] (the row above is the median repeat); bound = {c['k'] + 1} AES passes "
              f"{m['aes_bound_s'] * 1e3:.2f} ms + V={m['signature_checks']} x {m['verify_s'] * 1e6:.0f} us; "
              f"client / AES alone {m['client_vs_aes_bound']:.2f}")
        parts = ", ".join(f"{s} {v * 1e3:.1f}" for s, v in c["client_stage_s_median"].items())
        print(f"{'':10} client stages (ms, median): {parts}")
        parts = ", ".join(f"{p} {v * 1e3:.2f} ({m['client_parts_vs_aes_4d'][p]:.2f})"
                          for p, v in m["client_parts_s"].items())
        print(f"{'':10} client parts timed alone (ms, x AES of 4D bytes; masks: k+1={c['k'] + 1} streams): {parts}")
        print(f"{'':10} AES-128-CTR {m['aes_ctr_bytes_per_s'] / 1e9:.2f} GB/s during the round (best "
              f"{m['aes_ctr_best_bytes_per_s'] / 1e9:.2f} GB/s: client / best-case bound "
              f"{m['client_vs_best_aes_bound']:.2f}); server unmask wall s: {c['server_unmask_wall_s']:.3f} (0%), "
              f"{d['server_unmask_wall_s']:.3f} (10%)")
    print("  client and server times are CPU seconds; ratio = client / bound; mask-only leaves out the first "
          "stage (fixed-point encoding and key generation)")
    print(f"\n{'CKKS default':14} {'enc/client s':>12} {'agg s (n=' + str(ckks_n) + ')':>12} {'agg s n=100*':>12} "
          f"{'decrypt s':>9} {'MB/client':>9} {'x fp32':>7} {'max err':>8}")
    for mode, c in ckks["modes"].items():
        print(f"{mode:14} {c['encrypt_s_per_client']:12.2f} {c['aggregate_s']:12.2f} "
              f"{c['aggregate_s_n100_extrapolated']:12.1f} {c['decrypt_s']:9.2f} {c['bytes_per_client'] / 1e6:9.1f} "
              f"{c['ratio_to_fp32']:7.2f} {c['max_abs_error']:8.1e}")
    print("  * extrapolated linearly from the measured aggregation; per-client cost does not depend on n")
    rows = verdicts(masking, ckks)
    print(f"\n{'target':58} {'goal':>10} {'measured':>10}  verdict")
    for name, goal, value, ok in rows:
        print(f"{name:58} {goal:>10} {value:10.3g}  {'PASS' if ok else 'MISS'}")
    out_dir = Path(tempfile.gettempdir()) / "secagg-bench" if args.quick else RESULTS  # smoke runs: never results/
    out_dir.mkdir(parents=True, exist_ok=True)
    out = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "note": "shared machine"},
           "command": "python -m benchmarks.secagg_micro" + (" --quick" if args.quick else ""),
           "dim": dim, "quick": args.quick, "repeats": repeats, "targets": TARGETS,
           "verdicts": [{"target": n, "goal": g, "measured": v, "pass": ok} for n, g, v, ok in rows],
           "masking": masking, "ckks": ckks}
    (out_dir / "secagg_micro.json").write_text(json.dumps(out, indent=2) + "\n")
    plot(masking, ckks, out_dir / "secagg_micro.png")
    print(f"wrote {out_dir / 'secagg_micro.json'} and .png")


if __name__ == "__main__":
    main()
