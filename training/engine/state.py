"""The aggregator's durable state: model, rounds applied, next round id, privacy ledgers, strategy state.

Persisting it is the driver's job (:mod:`training.services.checkpoint` writes it atomically); the engine only
says when (a ``Persist`` effect).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from secagg.errors import MalformedMessageError

__all__ = ["ServerState"]


@dataclass
class ServerState:
    """Global model, rounds applied so far, the next unused round id, JSON privacy ledgers by client id, the
    id of the last privacy report recorded from each client, and the strategy's ``state_dict()``."""

    model: np.ndarray
    round: int = 0
    next_round_id: int = 1
    ledgers: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    strategy: dict[str, np.ndarray] = field(default_factory=dict)
    proofs: list[dict] = field(default_factory=list)  # the last applied steps' proofs (training.engine.audit)
    verified: dict[str, int] = field(default_factory=dict)  # each client's last verified version (proofs kept)

    def record_privacy(self, cid: int, events: list, report: str, budget: tuple[float, float]) -> None:
        """Compose client ``cid``'s reported DP events (``PrivacyEvent.to_dict()`` forms) into its ledger (a new
        one with ``budget`` = (ε, δ) if it has none) and remember ``report`` as its last report id. Anything
        malformed, or over the budget, raises MalformedMessageError and changes nothing."""
        from privacy.errors import PrivacyError
        from privacy.ledger import PrivacyLedger
        from training.ledgers import RELATION
        from privacy.events import PrivacyEvent

        try:
            evs = [PrivacyEvent.from_dict(e) for e in events]
            old = self.ledgers.get(str(cid))
            ledger = PrivacyLedger.from_dict(old) if old else PrivacyLedger(*budget, relation=RELATION)
            ledger.spend_events(evs)
        except (PrivacyError, KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"bad privacy report: {type(exc).__name__}: {exc}") from exc
        self.ledgers[str(cid)] = ledger.to_dict()
        self.reports[str(cid)] = report
