"""Round terms: the server half of a strategy as the engine drives it, and the rule the client half encodes by.

Every driver runs the same :class:`~training.engine.rules.base.Strategy` objects as ``secagg run``: each client
process encodes with ``strategy.encode`` and the aggregator applies ``strategy.apply`` to the secure aggregate.
What the two halves must agree on travels as public *round terms* in the task (``params["strategy"]``):

* ``name``: the strategy's name (a client refuses a round of another strategy);
* ``private_weights``: the weight is secret (loss-weighted): clients pre-weight ``[w·x, w]`` inside the secure
  sum and never announce ``w``; ``weight_bound`` is then the public bound every ``w`` stays within;
* ``loss_reference``: the aggregator's validation loss of the round's global model (public; the loss-weighted
  shift), or ``None``;
* asynchronous (buffered) rounds also carry ``version`` (the global version the buffer is applied to) and
  ``base_versions`` (the version each member trained from; staleness = version − base): the aggregator alone
  chose them, from what each client announced when it checked in with a trained update.

Invariant: :meth:`StrategyStep.apply` sees only the aggregate and these public terms; the strategy's server state
(e.g. Adam's moments) is exposed through ``state_dict``/``load_state_dict`` so the coordinator checkpoints it in the
same atomic write as the model it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from secagg.errors import MalformedMessageError
from secagg.roles import AggregateResult
from training.engine.rules import FedAvg
from training.engine.rules.base import Contribution, RoundInfo, Strategy
from training.workload.client_update import ClientUpdate

__all__ = ["StrategyStep", "round_info", "encode_update"]


def round_info(round_no: int, terms: Mapping[str, Any]) -> RoundInfo:
    """The public RoundInfo of server step ``round_no`` (0-based: rounds already applied) under ``terms``."""
    ref = terms.get("loss_reference")
    if ref is not None and not (isinstance(ref, (int, float)) and np.isfinite(ref)):
        raise MalformedMessageError(f"loss_reference must be a finite number or null, got {ref!r}")
    bases = terms.get("base_versions", {})
    try:
        bases = {int(c): int(b) for c, b in bases.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise MalformedMessageError(f"bad base_versions {bases!r}") from exc
    if any(not 0 <= b <= round_no for b in bases.values()):
        raise MalformedMessageError("a base version lies outside [0, the round's version]")
    return RoundInfo(round_no + 1, round_no, bases, None if ref is None else float(ref))


def encode_update(strategy: Strategy, update: ClientUpdate, round_no: int, terms: Mapping[str, Any]) -> Contribution:
    """Client side: the strategy's contribution for a round announced with ``terms`` (checked to be this
    strategy's: a client never lets the aggregator switch its weights between public and private)."""
    if terms.get("name", strategy.name) != strategy.name:
        raise MalformedMessageError(f"the round runs strategy {terms.get('name')!r}; this client runs "
                                    f"{strategy.name!r}")
    if bool(terms.get("private_weights", False)) != strategy.private_weights:
        raise MalformedMessageError("the round's private_weights flag contradicts this client's strategy")
    return strategy.encode(update, round_info(round_no, terms))


class StrategyStep:
    """Server step = ``strategy.apply`` on the aggregate; ``reference(model)`` (optional) is the public
    validation loss that becomes each round's ``loss_reference``."""

    def __init__(self, strategy: Strategy | None = None,
                 reference: Callable[[np.ndarray], float] | None = None) -> None:
        self.strategy = FedAvg() if strategy is None else strategy
        self.reference = reference

    @property
    def private_weights(self) -> bool:
        return self.strategy.private_weights

    @property
    def buffer_size(self) -> int | None:
        """K of a buffered asynchronous strategy (the server steps after K arrivals); None for synchronous ones."""
        k = getattr(self.strategy, "buffer_size", None)
        return None if k is None else int(k)

    def fresh_enough(self, base: int, version: int) -> bool:
        """Whether an update trained from ``base`` may still join a buffer applied to ``version``."""
        return version - base <= int(getattr(self.strategy, "max_staleness", 0))

    def public_weights(self, bases: Mapping[int, int], version: int) -> dict[int, float]:
        """Asynchronous rounds: each member's public staleness weight α·s(version − base)."""
        return {c: float(self.strategy.mixing_weight(version - b)) for c, b in bases.items()}  # type: ignore

    def start(self, model: np.ndarray, version: int) -> None:
        """The coordinator's model at start-up (or resume): published as ``version`` (async keeps recent ones)."""
        self.strategy.observe_version(version, model)

    def terms(self, model: np.ndarray, round_no: int, bases: Mapping[int, int] | None = None) -> dict[str, Any]:
        """The public terms of the round that starts from ``model`` after ``round_no`` applied rounds (``bases``:
        the members' base versions, for an asynchronous round)."""
        ref = None if self.reference is None else self.reference(model)
        ref = None if ref is None else float(ref)
        terms: dict[str, Any] = {"name": self.strategy.name, "private_weights": self.strategy.private_weights,
                                 "loss_reference": ref if ref is not None and np.isfinite(ref) else None}
        if bases is not None:
            terms |= {"version": round_no, "base_versions": {str(c): int(b) for c, b in sorted(bases.items())}}
        if self.strategy.private_weights:
            terms["weight_bound"] = float(self.strategy.weight_bound(round_info(round_no, terms)))
        return terms

    def apply(self, model: np.ndarray, result: AggregateResult, round_no: int,
              terms: Mapping[str, Any]) -> np.ndarray:
        """The new model; it is published as version ``round_no + 1``."""
        new = self.strategy.apply(model, result, round_info(round_no, terms))
        self.strategy.observe_version(round_no + 1, np.asarray(new, dtype=np.float64))
        return new

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.strategy.state_dict()

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.strategy.load_state_dict(state)
