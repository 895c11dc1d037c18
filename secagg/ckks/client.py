"""CKKS client: encrypts its update under the key holder's public key and sends it to the aggregator once.

Invariants: the client holds public material only (a context with a secret key raises ``KeyMisuseError``, so the
key never spreads to clients). It sends exactly one :class:`~secagg.ckks.messages.CKKSContribution` and receives
nothing. With ``preweight=True`` it encrypts ``[w*x_1, ..., w*x_D, w]`` so that the aggregator, which only adds,
never learns ``w``; otherwise it encrypts ``x`` and the aggregator applies the public weight.

Range: a decrypted sum wraps silently past the parameter set's bound, so the client refuses any slot that could
push the sum past it: ``|x| <= weighted_value_bound`` (the aggregator normalises public weights to sum to at
most 1), or, pre-weighted, ``max(|w*x|, w) <= fresh_value_bound / max_cohort`` for a sum of at most
``max_cohort`` clients.
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from secagg.ckks.messages import CKKSContribution
from secagg.ckks.params import PublicContext, load_public_context, np_chunks
from secagg.errors import ConfigurationError, KeyMisuseError, MalformedUpdateError
from secagg.he_round import HEClient, check_int
from secagg.roles import AGGREGATOR, Outbound

__all__ = ["CKKSClient", "DEFAULT_MAX_COHORT"]

DEFAULT_MAX_COHORT = 1024


class CKKSClient(HEClient):
    """One client of one round. Stages: ``"ready"`` -> ``start`` -> ``"done"``."""

    def __init__(self, client_id: int, public_context: bytes | PublicContext, *, round_id: int = 0,
                 preweight: bool = False, max_cohort: int = DEFAULT_MAX_COHORT) -> None:
        self.client_id, self.round_id = check_int("client_id", client_id), check_int("round_id", round_id)
        check_int("max_cohort", max_cohort, 1)
        self.preweight = bool(preweight)
        self._pc = public_context if isinstance(public_context, PublicContext) else \
            load_public_context(public_context, need_public_key=True)
        if self._pc.context.is_private():
            raise KeyMisuseError("clients must never hold the secret key")
        if not self._pc.context.has_public_key():
            raise ConfigurationError("public context has no public key; clients cannot encrypt")
        p = self._pc.params
        if not (self.preweight or p.supports_multiply):
            raise ConfigurationError(f"parameter set {p.name!r} cannot weight at the aggregator; use preweight=True")
        self.slot_bound = p.fresh_value_bound / max_cohort if self.preweight else p.weighted_value_bound
        self._stage = "ready"

    def start(self, update: np.ndarray, weight: float) -> list[Outbound]:
        """Encrypt ``update`` (and, pre-weighted, ``weight``); a refused input leaves the client ready to retry."""
        x, w = self._begin(update, weight)
        if not w > 0:
            raise MalformedUpdateError(f"weight must be a positive finite number, got {w}")
        lanes = np.append(w * x, w) if self.preweight else x
        peak = float(np.max(np.abs(lanes)))
        if not peak <= self.slot_bound:
            raise MalformedUpdateError(f"largest encrypted value {peak:.4g} exceeds {self.slot_bound:.4g}; the "
                                       f"decrypted sum could overflow the {self._pc.params.name!r} parameter set")
        ctx = self._pc.context
        chunks = tuple(ts.ckks_vector(ctx, part).serialize() for part in np_chunks(lanes, self._pc.params.slots))
        msg = CKKSContribution(round_id=self.round_id, client_id=self.client_id, context_id=self._pc.context_id,
                               dim=int(x.shape[0]), preweighted=self.preweight, chunks=chunks)
        self._stage = "done"
        return [Outbound(AGGREGATOR, msg.to_bytes())]
