"""Per-round public parameters and role construction for each scheme, as the networked parties see them.

Only the aggregator chooses a round's parameters (:meth:`Scheme.plan`); they travel to the cohort as JSON in the
task header, and every client rebuilds its own role from them (:meth:`Scheme.client_role`). No party ever builds
another party's role, so secrets stay where they are created: masking keys in each client, the CKKS secret key in
the key holder. CKKS clients take the public context from the key holder itself (authenticated by mTLS), never
from the aggregator, so the aggregator cannot substitute a key it could decrypt with.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from secagg.errors import ConfigurationError, MalformedMessageError
from secagg.roles import AggregatorRole, ClientRole

__all__ = ["Scheme", "MaskingScheme", "CKKSScheme", "make_scheme"]


@dataclass
class Scheme:
    """Scheme-specific round construction; ``options`` are the deployment's public settings."""

    options: dict[str, Any] = field(default_factory=dict)
    name = ""

    def plan(self, round_id: int, cohort: list[int], weights: dict[int, float], dim: int,
             context: bytes | None) -> tuple[dict[str, Any], AggregatorRole]:
        """Public round parameters (JSON-able) and the aggregator's role built from exactly those."""
        raise NotImplementedError

    def client_role(self, client_id: int, params: dict[str, Any], context: bytes | None) -> ClientRole:
        raise NotImplementedError

    @property
    def needs_keyholder(self) -> bool:
        return False


class MaskingScheme(Scheme):
    """SecAgg+ masking: a fresh graph seed per round; clients pre-weight within the public ``weight_bound``."""

    name = "masking"
    _KEYS = ("threshold", "neighbors", "ring_bits", "clip", "weight_bound", "rounding")

    def _config(self, params: dict[str, Any]):
        from secagg.masking import MaskingConfig

        try:
            seed = bytes.fromhex(params["graph_seed"])
            kwargs = {k: params[k] for k in self._KEYS if params.get(k) is not None}
            return MaskingConfig(participants=[int(p) for p in params["cohort"]], dim=int(params["dim"]),
                                 round_id=int(params["round_id"]), graph_seed=seed, **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedMessageError(f"bad masking round parameters: {exc!r}") from exc

    def plan(self, round_id, cohort, weights, dim, context):
        from secagg.masking import MaskingServer

        opts = dict(self.options)
        if opts.get("weight_bound") is None:
            opts["weight_bound"] = max(weights.values())
        params = {k: opts.get(k) for k in self._KEYS} | {
            "round_id": round_id, "cohort": sorted(cohort), "dim": dim, "graph_seed": secrets.token_hex(16)}
        return params, MaskingServer(self._config(params))

    def client_role(self, client_id, params, context):
        from secagg.masking import MaskingClient

        return MaskingClient(client_id, self._config(params))


class CKKSScheme(Scheme):
    """CKKS: public weights applied by the aggregator; the key holder refuses sums of too few contributors."""

    name = "ckks"

    @property
    def needs_keyholder(self) -> bool:
        return True

    def plan(self, round_id, cohort, weights, dim, context):
        from secagg.ckks import CKKSAggregator

        if context is None:
            raise ConfigurationError("CKKS needs the key holder's public context")
        params = {"round_id": round_id, "cohort": sorted(cohort), "dim": dim}
        agg = CKKSAggregator(context, sorted(cohort), dim=dim, round_id=round_id,
                             weights={c: float(weights[c]) for c in cohort},
                             min_contributors=int(self.options.get("min_contributors", 2)))
        return params, agg

    def client_role(self, client_id, params, context):
        from secagg.ckks import CKKSClient

        if context is None:
            raise ConfigurationError("CKKS needs the key holder's public context")
        return CKKSClient(client_id, context, round_id=int(params["round_id"]), preweight=False)


def make_scheme(name: str, options: dict[str, Any] | None = None) -> Scheme:
    """The scheme called ``name`` ("masking" or "ckks") with public ``options``."""
    table = {"masking": MaskingScheme, "ckks": CKKSScheme}
    if name not in table:
        raise ConfigurationError(f"unknown scheme {name!r}; expected 'masking' or 'ckks'")
    return table[name](dict(options or {}))
