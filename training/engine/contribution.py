"""The client-side contribution: strategy encode under the round's public terms, L2 clip, distributed-noise share.

The only copy: every driver's client (in-process, gRPC client process, Flower ClientApp) calls
:func:`contribute`. Invariants: the vector has L2 norm at most ``update_clip`` before noise; with
``noise_multiplier`` z > 0 it carries this client's share of N(0, (z·C·w_ref)²) for a sum over
``noise_shares`` clients (:func:`privacy.noise.weighted_share`), where ``noise_shares`` is the client's own
configuration, never the aggregator's word: a task whose cohort is smaller is refused, because fewer shares than
configured would carry less noise than the accounting assumes. ``w_ref`` is the cohort's largest public weight
(``max_weight`` in the terms; a smaller value than this client's weight is refused by ``weighted_share``).

Masking sums integers, so there the noise is integer too (:class:`IntegerNoise`, the distributed discrete
Gaussian of :mod:`privacy.discrete`): :func:`contribute` is then called without a noise multiplier, and the
masking role is wrapped so that its value lane is the rounded update plus N_Z noise on the round's own grid;
the central ε is computed for exactly that (:mod:`training.engine.central`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from privacy.clipping import clip_update
from privacy.noise import weighted_share
from secagg.errors import ConfigurationError
from training.engine.rules.base import Contribution, Strategy
from training.engine.terms import encode_update
from training.errors import ConfigError
from training.workload.client_update import ClientUpdate

__all__ = ["contribute", "IntegerNoise", "NoisyMaskingClient"]


def check_cohort(cohort: int, noise_shares: int) -> None:
    """Fewer shares than configured would carry less noise than the accounting assumes: refuse the round."""
    if cohort < noise_shares:
        raise ConfigurationError(f"the round's cohort of {cohort} is smaller than the {noise_shares} noise shares "
                                 "this client is configured for; refusing the round")


def contribute(strategy: Strategy, update: ClientUpdate, round_no: int, terms: Mapping[str, Any], *,
               update_clip: float | None, noise_multiplier: float = 0.0, noise_shares: int = 1,
               cohort: int | None = None, announced: float | None = None, min_cohort: int = 1) -> Contribution:
    """This client's (vector, weight) for server step ``round_no`` under ``terms``; ``cohort`` is the size of the
    task's cohort, ``announced`` the public weight the client checked in with (a public-weight synchronous
    strategy must encode exactly that weight). ``min_cohort``: the fewest contributions this client's
    accounting assumes a released sum has (distributed placement: its ``min_survivors``); a task whose cohort
    is smaller is refused before anything is encoded."""
    if cohort is not None and cohort < min_cohort:
        raise ConfigurationError(f"the round's cohort of {cohort} is smaller than the {min_cohort} contributions "
                                 "this client's privacy accounting assumes a released sum has; refusing the round")
    c = encode_update(strategy, update, round_no, terms)
    weight = float(c.weight)
    if announced is not None and not strategy.private_weights and "base_versions" not in terms \
            and weight != float(announced):
        raise ConfigError("the strategy's weight differs from the one announced at check-in")
    x = np.asarray(c.vector, dtype=np.float64)
    if update_clip is not None:
        x, _ = clip_update(x, update_clip)
        if noise_multiplier > 0:
            if cohort is not None:
                check_cohort(cohort, noise_shares)
            reference = float(terms.get("max_weight", weight))
            x = weighted_share(x, weight, clip_norm=update_clip, noise_multiplier=noise_multiplier,
                               n_clients=noise_shares, reference_weight=reference)
    return Contribution(x, weight)


@dataclass(frozen=True)
class IntegerNoise:
    """A client's own distributed-noise configuration: multiplier z, clip C, the n shares it is configured for."""

    noise_multiplier: float
    update_clip: float
    noise_shares: int


class NoisyMaskingClient:
    """A :class:`secagg.masking.MaskingClient` whose value lane carries this client's discrete Gaussian share,
    scaled to the round's public ``max_weight`` (the task's terms, bound into the session id)."""

    def __init__(self, inner, noise: IntegerNoise, terms: Mapping[str, Any], cohort: int) -> None:
        check_cohort(cohort, noise.noise_shares)
        self.inner, self.noise, self.reference = inner, noise, terms.get("max_weight")
        self.client_id = inner.client_id

    @property
    def stage(self) -> str:
        return self.inner.stage

    @property
    def done(self) -> bool:
        return self.inner.done

    def start(self, update: np.ndarray, weight: float):
        from privacy.discrete import discrete_levels

        codec, n = self.inner.config.value_codec, self.noise
        reference = float(weight if self.reference is None else self.reference)
        levels = discrete_levels(update, float(weight), scale=codec.scale, max_level=codec.max_level,
                                 clip_norm=n.update_clip, noise_multiplier=n.noise_multiplier,
                                 n_clients=n.noise_shares, reference_weight=reference)
        return self.inner.start_levels(levels, weight)

    def receive(self, payload: bytes):
        return self.inner.receive(payload)
