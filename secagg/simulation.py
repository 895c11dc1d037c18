"""In-process driver for one round: every role a separate object, every message passed as bytes.

``run_round`` is the reference transport: it delivers :class:`~secagg.roles.Outbound` messages in FIFO order and,
when nothing is in flight and the aggregator is not done, declares the stage's deadline passed
(``close_stage()``), exactly as a networked deployment does when silent clients time out.
"""

from __future__ import annotations

import inspect
import itertools
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from secagg.encoding import check_weight
from secagg.errors import BackpressureError, ConfigurationError, MalformedUpdateError, SecAggError, StageError
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
    rejected: list[tuple[int, SecAggError]] | None = None,
    part_chunks: int | None = None,
) -> AggregateResult:
    """Run one round to completion and return the aggregator's result.

    ``drop_at[i] = tag`` makes client ``i`` vanish instead of sending its first message with wire tag ``tag``:
    that message and everything after it is lost, and the client receives nothing more. A client message the
    aggregator or key holder refuses (a named ``SecAggError``) is dropped, as a networked deployment drops it, and
    the round goes on without it; a client that refuses a message leaves the round. ``rejected`` (if given)
    collects ``(party, error)``. Errors of the
    aggregator's own stage transitions (too few survivors, a dealer's inconsistent shares) end the round.

    ``part_chunks``: clients stream (``client.stream``) their contributions in parts of that many ciphertexts (HE)
    or ``PART_VALUES`` chunks (masking), made only when the driver takes them; the driver takes one message from
    every client in turn, and a part the aggregator's window refuses (``BackpressureError``) is held and offered
    again after the others moved, so no role ever holds a whole contribution. A turn in which nothing was accepted
    counts as a deadline.
    """
    drop_at = dict(drop_at or {})
    gone: set[int] = set()
    streams: dict[int, Iterator[Outbound]] = {}
    held: dict[int, Outbound] = {}
    queue: deque[tuple[int, Outbound]] = deque()

    def emit(sender: int, outs: Iterable[Outbound]) -> None:
        if not isinstance(outs, list):  # a streamed answer: taken one message a turn
            streams[sender] = itertools.chain(streams.get(sender, iter(())), outs)
            return
        for out in outs:
            if sender in gone:
                return
            if sender in drop_at and message_tag(out.payload) == drop_at[sender]:
                gone.add(sender)
                return
            queue.append((sender, out))

    for cid, client in clients.items():
        if part_chunks is None:
            emit(cid, client.start(updates[cid], weights[cid]))
        else:
            emit(cid, client.stream(updates[cid], weights[cid], part_chunks=part_chunks))  # type: ignore[attr-defined]

    deadlines, accepted = 0, False
    while not aggregator.done:
        if not queue and (streams or held) and (accepted or not held):
            accepted = False  # a new turn: one message from every streaming client
            for cid in list(streams) + [c for c in held if c not in streams]:
                if cid in held:
                    queue.append((cid, held.pop(cid)))
                elif (out := next(streams[cid], None)) is None or cid in gone:
                    del streams[cid]
                else:
                    emit(cid, [out])
            continue
        if not queue:
            accepted = True  # after the deadline, held parts are offered again
            deadlines += 1
            if deadlines > max_deadlines:
                raise StageError(f"round stalled in stage {aggregator.stage!r}")
            emit(AGGREGATOR, aggregator.close_stage())
            continue
        sender, out = queue.popleft()
        if out.to == AGGREGATOR:
            try:
                outs = aggregator.receive(sender, out.payload)
                accepted = True
            except BackpressureError:
                held[sender] = out  # offered again next turn
                continue
            except SecAggError as exc:
                if sender < 0 or aggregator.stage == "failed":
                    raise
                if rejected is not None:
                    rejected.append((sender, exc))
                continue
            emit(AGGREGATOR, outs)
        elif out.to == KEYHOLDER:
            if finalizer is None:
                raise StageError("a message was addressed to the key holder but this scheme has none")
            try:
                outs = finalizer.receive(sender, out.payload)
                accepted = True
            except SecAggError as exc:
                if sender < 0:
                    raise
                if rejected is not None:
                    rejected.append((sender, exc))
                continue
            emit(KEYHOLDER, outs)
        elif out.to in clients and out.to not in gone:
            try:
                outs = clients[out.to].receive(out.payload)
            except SecAggError as exc:  # a client refusing a message leaves the round, as it would on a network
                gone.add(out.to)
                if rejected is not None:
                    rejected.append((out.to, exc))
                continue
            emit(out.to, outs)
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
    return list(updates), [check_weight(w) for w in weights]


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
    (ckks: ``params``, ``min_contributors``, ``sign``; masking: ``threshold``, ``neighbors``, ``max_corrupt``,
    ``share_dropouts``, ``ring_bits``, ``clip``, ``rounding``, ``sign``; packed: ``max_cohort``,
    ``min_value_bits``, ``clip``, ``rounding``, ``min_contributors``, ``sign``). Every scheme runs its hardened
    protocol by default (signed, verified); ``sign=False`` opts out for a trusted server. Too few survivors raise a
    ``SecAggError`` subclass.
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
    allowed = set(inspect.signature(build_round).parameters) - {"participants", "dim", "weights", "graph_seed"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigurationError(f"unknown {scheme} options {unknown}; this scheme takes {sorted(allowed)}")
    graph_seed = secrets.token_bytes(16) if seed is None else int(seed).to_bytes(16, "little", signed=True)
    rnd = build_round(list(range(n)), dim=ups[0].shape[0], weights=dict(enumerate(ws)), graph_seed=graph_seed,
                      **options)
    result = run_round(rnd.clients, rnd.aggregator, dict(enumerate(ups)), dict(enumerate(ws)),
                       finalizer=rnd.finalizer, drop_at={d: rnd.drop_tag for d in dropped})
    return result.mean
