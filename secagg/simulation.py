"""In-process driver for one round: every role a separate object, every message passed as bytes.

``run_round`` is the reference transport: it delivers :class:`~secagg.roles.Outbound` messages in FIFO order and,
when nothing is in flight and the aggregator is not done, declares the stage's deadline passed
(``close_stage()``), exactly as a networked deployment does when silent clients time out.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from secagg.errors import ConfigurationError, MalformedUpdateError, StageError
from secagg.roles import AGGREGATOR, KEYHOLDER, AggregateResult, AggregatorRole, ClientRole, FinalizerRole, \
    Outbound, message_tag

__all__ = ["run_round", "simulate"]


def run_round(
    clients: Mapping[int, ClientRole],
    aggregator: AggregatorRole,
    updates: Mapping[int, np.ndarray],
    weights: Mapping[int, float],
    *,
    finalizer: FinalizerRole | None = None,
    drop_at: Mapping[int, int] | None = None,
    max_deadlines: int = 16,
) -> AggregateResult:
    """Run one round to completion and return the aggregator's result.

    ``drop_at[i] = tag`` makes client ``i`` vanish instead of sending its first message with wire tag ``tag``:
    that message and everything after it is lost, and the client receives nothing more.
    """
    drop_at = dict(drop_at or {})
    gone: set[int] = set()
    queue: deque[tuple[int, Outbound]] = deque()

    def emit(sender: int, outs: list[Outbound]) -> None:
        for out in outs:
            if sender in gone:
                return
            if sender in drop_at and message_tag(out.payload) == drop_at[sender]:
                gone.add(sender)
                return
            queue.append((sender, out))

    for cid, client in clients.items():
        emit(cid, client.start(updates[cid], weights[cid]))

    deadlines = 0
    while not aggregator.done:
        if not queue:
            deadlines += 1
            if deadlines > max_deadlines:
                raise StageError(f"round stalled in stage {aggregator.stage!r}")
            emit(AGGREGATOR, aggregator.close_stage())
            continue
        sender, out = queue.popleft()
        if out.to == AGGREGATOR:
            emit(AGGREGATOR, aggregator.receive(sender, out.payload))
        elif out.to == KEYHOLDER:
            if finalizer is None:
                raise StageError("a message was addressed to the key holder but this scheme has none")
            emit(KEYHOLDER, finalizer.receive(sender, out.payload))
        elif out.to in clients and out.to not in gone:
            emit(out.to, clients[out.to].receive(out.payload))
    return aggregator.result()


def _check_inputs(updates: Sequence[np.ndarray], weights: Sequence[float]) -> tuple[list[np.ndarray], list[float]]:
    if len(updates) == 0 or len(updates) != len(weights):
        raise MalformedUpdateError(f"need one weight per update, got {len(updates)} updates, {len(weights)} weights")
    dim = None
    for i, u in enumerate(updates):
        if not isinstance(u, np.ndarray) or u.ndim != 1:
            raise MalformedUpdateError(f"update {i} must be a 1-D numpy array")
        dim = u.shape[0] if dim is None else dim
        if u.shape[0] != dim:
            raise MalformedUpdateError(f"update {i} has length {u.shape[0]}, expected {dim}")
    ws = [float(w) for w in weights]
    if not all(np.isfinite(w) and w > 0 for w in ws):
        raise MalformedUpdateError("weights must be positive finite numbers")
    return list(updates), ws


def simulate(
    updates: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    scheme: str,
    dropped: Sequence[int] = (),
    seed: int | None = None,
    **options: object,
) -> np.ndarray:
    """Run one full secure-aggregation round in-process and return Σ w_i x_i / Σ w_i over surviving clients.

    ``scheme`` is ``"ckks"``, ``"masking"`` or ``"packed"`` (BFV lane packing). ``dropped`` clients vanish after
    sending their keys and shares but before their masked input (masking), or never submit (ckks, packed). ``seed`` fixes only public choices (the SecAgg+
    graph); keys, masks and rounding always come from the OS CSPRNG. Other keyword options go to the scheme
    (ckks: ``params``, ``weighting``, ``min_contributors``; masking: ``threshold``, ``neighbors``,
    ``ring_bits``, ``clip``, ``rounding``, ``sign``; packed: ``max_cohort``, ``min_value_bits``, ``clip``,
    ``rounding``, ``min_contributors``). Too few survivors raise a ``SecAggError`` subclass.
    """
    ups, ws = _check_inputs(updates, weights)
    n = len(ups)
    bad = [d for d in dropped if not 0 <= d < n]
    if bad:
        raise ConfigurationError(f"dropped indices {bad} are not clients 0..{n - 1}")
    if scheme == "ckks":
        from secagg.ckks.setup import build_round
    elif scheme == "masking":
        from secagg.masking.setup import build_round
    elif scheme == "packed":
        from secagg.packed.setup import build_round
    else:
        raise ConfigurationError(f"unknown scheme {scheme!r}; expected 'ckks', 'masking' or 'packed'")
    graph_seed = secrets.token_bytes(16) if seed is None else int(seed).to_bytes(16, "little", signed=True)
    rnd = build_round(list(range(n)), dim=ups[0].shape[0], weights=dict(enumerate(ws)), graph_seed=graph_seed,
                      **options)
    result = run_round(rnd.clients, rnd.aggregator, dict(enumerate(ups)), dict(enumerate(ws)),
                       finalizer=rnd.finalizer, drop_at={d: rnd.drop_tag for d in dropped})
    return result.mean
