"""The aggregator's durable state, written atomically after every round.

Invariant: the file on disk always holds a model together with the number of rounds already applied to it
(``round``) and the aggregation strategy's server state after those rounds (``strategy``: e.g. Adam's moments),
never one without the others, because it is replaced in a single ``os.replace`` of a fully written
and fsynced temporary file. ``next_round_id`` is written ahead of every attempt, so a restarted aggregator never
reuses a round id (replays of any earlier attempt stay rejectable) and never applies a round twice. Privacy
reports are saved before they are acknowledged, with the id of each client's last report (``reports``), so a
report re-sent after a crash is recognised and composed into the ledger exactly once.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
import numpy as np

from secagg.errors import MalformedMessageError
from training.engine.codec import proofs_in, proofs_out
from training.engine.state import ServerState
from training.errors import TrainingError

__all__ = ["ServerState", "save", "load"]

_STRATEGY = "strategy."  # npz entries holding the strategy's state arrays
_RELEASE = "release."  # npz entries holding the proofs' signed releases, in order


def save(path: str | os.PathLike, state: ServerState) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``, fsync of the directory)."""
    p = pathlib.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    heads, releases = proofs_out(state.proofs)  # releases as their own entries: binary, never in the JSON
    meta = {"round": state.round, "next_round_id": state.next_round_id, "ledgers": state.ledgers,
            "reports": state.reports, "proofs": heads, "verified": state.verified}
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:  # written straight to the file: no in-memory copy of the model
        np.savez(fh, model=np.asarray(state.model, dtype=np.float64),
                 meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                 **{_STRATEGY + k: np.asarray(v) for k, v in state.strategy.items()},
                 **{f"{_RELEASE}{i}": np.frombuffer(r, dtype=np.uint8) for i, r in enumerate(releases)})
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def load(path: str | os.PathLike) -> ServerState | None:
    """The state saved at ``path``, or None when there is none; a damaged file raises TrainingError."""
    p = pathlib.Path(path)
    if not p.exists():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            model = np.array(z["model"], dtype=np.float64)
            meta = json.loads(bytes(z["meta"]).decode())
            strategy = {k[len(_STRATEGY):]: np.array(z[k]) for k in z.files if k.startswith(_STRATEGY)}
            proofs, count = [], 0
            for head in list(meta.get("proofs", [])):  # each release read into its own bytes, once
                release = b""
                if isinstance(head, dict) and head.get("release_bytes") is not None:
                    release, count = z[f"{_RELEASE}{count}"].tobytes(), count + 1
                got, rest = proofs_in([head], release)
                if len(rest):
                    raise ValueError("a checkpoint release does not match its proof")
                proofs += got
        state = ServerState(model, int(meta["round"]), int(meta["next_round_id"]), dict(meta["ledgers"]),
                            {str(k): str(v) for k, v in meta.get("reports", {}).items()}, strategy, proofs,
                            {str(k): int(v) for k, v in meta.get("verified", {}).items()})
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, MalformedMessageError) as exc:
        raise TrainingError(f"checkpoint {p} is damaged: {exc}") from exc
    finite = all(np.isfinite(v).all() for v in strategy.values() if v.dtype.kind in "fiu")
    if model.ndim != 1 or not np.isfinite(model).all() or not finite or state.round < 0 \
            or state.next_round_id <= state.round:
        raise TrainingError(f"checkpoint {p} is inconsistent")
    return state
