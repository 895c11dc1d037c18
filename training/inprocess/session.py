"""Wrap an existing training loop in a federated round with a few lines:

    fed = FederatedSession(model, clients=3, scheme="ckks", aggregator="fedavg", update_clip=1.0)
    for rnd in range(rounds):
        for i in range(3):
            with fed.client(i).round(model) as r:
                ...                                   # the user's unchanged loop on client i's data
                r.report(num_samples=n_i, loss=last_loss)

On enter the client's model is loaded with the current global weights. On exit the client's delta is computed,
clipped/noised per the session's config, encoded by the secure-aggregation client and submitted. When the
cohort is complete (sync: every client; async: any ``buffer_size`` arrivals) the secure round runs, the server
applies the strategy, and (sync) the model of the client that closed the round is loaded with the new global
weights. With one thread per client, ``round(model, block=True)`` waits on exit until its round completed and
then loads the new global model. A loop that raises inside the block submits nothing (and the exception
propagates); ``fed.close_round()`` runs the open round with the clients that did submit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import torch

from training.engine.rules import Strategy, make_strategy
from training.errors import SessionError
from training.inprocess.federation import Federation, RoundReport
from training.workload.trainer import get_flat, set_flat
from training.workload.platforms import PlatformProfile
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate

__all__ = ["FederatedSession", "ClientHandle", "RoundContext"]


class RoundContext:
    """One client's participation in one round (the object bound by ``with ... as r``)."""

    def __init__(self, handle: ClientHandle, model: torch.nn.Module, block: bool) -> None:
        self._h, self.model, self._block = handle, model, block
        self._reported: tuple[int, float] | None = None
        self.base_version = -1
        self.report_result: RoundReport | None = None

    def report(self, *, num_samples: int, loss: float) -> None:
        """Declare this round's sample count and mean training loss. The loss is never sent, but the
        loss-weighted rule turns it into this client's (hidden) weight inside the released sum: a private loop
        should pass a DP loss release (``privacy.dpsgd.DPTrainer.release_loss``), not its raw loss."""
        if self._reported is not None:
            raise SessionError("report() called twice in one round")
        self._reported = (int(num_samples), float(loss))

    def __enter__(self) -> RoundContext:
        s = self._h.session
        with s._lock:
            model, self.base_version = s.federation.model_for(self._h.client_id)
            set_flat(self.model, model)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            return False
        if self._reported is None:
            raise SessionError(f"client {self._h.client_id}: call r.report(num_samples=..., loss=...) in the round")
        s = self._h.session
        with s._lock:
            base = s._versions[self.base_version]
        n, loss = self._reported
        update = ClientUpdate(self._h.client_id, get_flat(self.model) - base, n, loss,
                              base_version=self.base_version, seconds=time.perf_counter() - self._t0)
        done_round = s._submit(update)
        if self._block:
            self.report_result = s._wait_for(done_round)
        else:
            self.report_result = s._completed.get(done_round)
        if self.report_result is not None:
            with s._lock:
                set_flat(self.model, s.federation.model_for(self._h.client_id)[0])
        return False


class ClientHandle:
    """A client of the session; ``round(model)`` opens one participation."""

    def __init__(self, session: FederatedSession, client_id: int) -> None:
        self.session, self.client_id = session, client_id

    def round(self, model: torch.nn.Module, *, block: bool = False) -> RoundContext:
        return RoundContext(self, model, block)


class FederatedSession:
    """All parties of a federation in-process, driven from the user's own loop.

    ``aggregator`` is a strategy name or a :class:`Strategy`; for ``"async"`` a round closes after any
    ``buffer_size`` submissions, otherwise when every client of ``clients`` submitted.
    """

    def __init__(self, model: torch.nn.Module, clients: int | Sequence[int], *, scheme: str = "ckks",
                 aggregator: str | Strategy = "fedavg", update_clip: float | None = None,
                 noise_multiplier: float = 0.0, platforms: Sequence[PlatformProfile] | None = None,
                 secure_options: dict | None = None, aggregator_options: dict | None = None) -> None:
        ids = list(range(clients)) if isinstance(clients, int) else list(clients)
        if len(set(ids)) != len(ids) or not ids:
            raise SessionError("clients must be distinct ids")
        strategy = aggregator if isinstance(aggregator, Strategy) else \
            make_strategy(aggregator, **(aggregator_options or {}))
        defaults = {"clip": update_clip} if scheme in ("masking", "packed") and update_clip else {}
        if scheme == "packed":
            defaults["max_cohort"] = len(ids)
        secure = SecureSum(scheme, **(defaults | (secure_options or {})))
        self.federation = Federation(get_flat(model), strategy, secure, ids, platforms=platforms,
                                     update_clip=update_clip, noise_multiplier=noise_multiplier)
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._submitted: set[int] = set()
        self._versions: dict[int, np.ndarray] = {0: self.federation.global_vec.copy()}
        self._completed: dict[int, RoundReport] = {}

    @property
    def _pending(self) -> dict[int, ClientUpdate]:
        return self.federation.pending

    @property
    def reports(self) -> list[RoundReport]:
        return list(self.federation.history)

    def client(self, client_id: int) -> ClientHandle:
        if client_id not in self.federation.platforms:
            raise SessionError(f"unknown client {client_id}")
        return ClientHandle(self, client_id)

    def load_global(self, model: torch.nn.Module) -> None:
        """Copy the current global weights into ``model``."""
        with self._lock:
            set_flat(model, self.federation.global_vec)

    def _submit(self, update: ClientUpdate) -> int:
        with self._cond:
            if update.client_id in self._submitted:
                raise SessionError(f"client {update.client_id} already submitted to round {self.federation.round + 1}")
            round_no = self.federation.round + 1
            self._submitted.add(update.client_id)
            report = self.federation.submit(update)  # the engine's cohort policy decides when the round runs
            if report is not None:
                self._completed_locked(round_no, report)
            return round_no

    def close_round(self) -> RoundReport:
        """Run the open round now with the clients that have submitted (the others are dropouts of this round).

        Raises what the secure layer raises when too few have submitted (CKKS: fewer than ``min_contributors``;
        masking: fewer than 2); the submissions then stay pending.
        """
        with self._cond:
            if not self._submitted:
                raise SessionError("no client has submitted to the open round")
            round_no = self.federation.round + 1
            return self._completed_locked(round_no, self.federation.close())

    def _completed_locked(self, round_no: int, report: RoundReport) -> RoundReport:
        self._submitted = set()
        self._versions[self.federation.version] = self.federation.global_vec.copy()
        self._completed[round_no] = report
        self._cond.notify_all()
        return report

    def _wait_for(self, round_no: int, timeout: float = 600.0) -> RoundReport:
        with self._cond:
            if not self._cond.wait_for(lambda: round_no in self._completed, timeout=timeout):
                raise SessionError(f"round {round_no} did not complete within {timeout} s")
            return self._completed[round_no]
