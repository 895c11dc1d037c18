"""The central (client-level) ε of distributed DP, round by round, against a coalition: one copy for every driver.

Each released sum carries the noise shares of its m contributors, each of std z·C·w_ref/√n (n: the noise shares
every client is configured for); ``colluders`` = c of them may work with the server and subtract their own
shares, so the sum's noise multiplier against the coalition is z·√((m − c)/n)
(:func:`privacy.distributed.central_noise_multiplier`); rounds compose (q = 1). The clamp of each share
(probability ``clamp_probability`` per client and round) is paid from δ. A sum with m <= c carries no honest
noise: ε is infinite from then on. ``c`` defaults to the masking corruption bound for the cohort
(:func:`default_colluders`). Masking (``integer``) adds discrete Gaussian shares on the integer grid, so each
of its sums is a zCDP event of exactly that mechanism (:func:`privacy.discrete.sum_rho`: m − c honest shares,
the rounding's sensitivity inflation included); CKKS and packed sums are Gaussian events.
"""

from __future__ import annotations

import math

from privacy.accounting import epsilon_of_events
from privacy.discrete import sum_rho
from privacy.distributed import central_noise_multiplier
from privacy.events import PrivacyEvent, zcdp_event
from privacy.noise import clamp_probability
from secagg.masking.config import corruption_bound
from training.engine.metrics import CLIENT_RELATION

__all__ = ["CentralAccount", "default_colluders", "central_account", "central_of"]


def default_colluders(cohort: int, *, neighbors: int | None = None, threshold: int | None = None,
                      share_dropouts: int | None = None, max_corrupt: int | None = None) -> int:
    """The coalition the central ε is stated against when ``[dp] colluders`` is not set: the masking scheme's
    corruption bound for a cohort of this size (the same for every scheme: the colluders know their noise
    shares whatever hides the updates)."""
    return corruption_bound(cohort, neighbors=neighbors, threshold=threshold, share_dropouts=share_dropouts,
                            max_corrupt=max_corrupt)


class CentralAccount:
    """Composes the central ε of each released sum (see the module)."""

    def __init__(self, noise_multiplier: float, *, noise_shares: int, colluders: int, delta: float, dim: int,
                 accountant: str = "prv", integer: bool = False) -> None:
        if colluders >= noise_shares:
            from training.errors import ConfigError

            raise ConfigError(f"dp.colluders = {colluders} leaves no honest noise share of the {noise_shares} "
                              "every sum needs: the central guarantee would be void")
        self.z, self.n, self.c, self.delta, self.dim = noise_multiplier, noise_shares, colluders, delta, dim
        self.accountant, self.integer = accountant, integer
        self.events: list[PrivacyEvent] = []
        self.void = False
        self.epsilon = 0.0  # ε of the sums added so far

    def add(self, survivors: int) -> float:
        """ε after one more sum of ``survivors`` noise shares."""
        if survivors <= self.c:
            self.void = True
        if self.void:
            self.epsilon = math.inf
            return self.epsilon
        m = min(survivors, self.n)
        if self.integer:
            self.events.append(zcdp_event(sum_rho(self.z, n_clients=self.n, honest=m - self.c, dim=self.dim)))
        else:
            self.events.append(PrivacyEvent(central_noise_multiplier(self.z, n_clients=self.n, survivors=m,
                                                                     colluders=self.c), 1.0, 1))
        slack = len(self.events) * self.n * clamp_probability(self.dim)
        self.epsilon = epsilon_of_events(self.events, self.delta - slack, accountant=self.accountant)
        return self.epsilon


def central_account(noise_multiplier: float, *, noise_shares: int, delta: float, dim: int,
                    colluders: int | None = None, accountant: str = "prv", scheme: str = "masking",
                    **masking_options: int | None) -> CentralAccount | None:
    """The account of a deployment of ``scheme`` (None without distributed noise); ``colluders`` None:
    :func:`default_colluders` for ``noise_shares`` clients under ``masking_options`` (neighbors, threshold,
    share_dropouts, max_corrupt)."""
    if not noise_multiplier:
        return None
    c = default_colluders(noise_shares, **masking_options) if colluders is None else colluders
    return CentralAccount(noise_multiplier, noise_shares=noise_shares, colluders=c, delta=delta, dim=dim,
                          accountant=accountant, integer=scheme == "masking")


def central_of(account: CentralAccount | None, record) -> dict:
    """The central-ε fields of a round's metrics row (a :class:`~training.engine.rounds.RoundRecord`): a done
    round's sum is added; an aborted one released no sum."""
    if account is None:
        return {}
    if record.status == "done" and record.result is not None:
        account.add(len(record.result.contributors))
    return {"central_epsilon": account.epsilon, "colluders": account.c, "central_relation": CLIENT_RELATION}
