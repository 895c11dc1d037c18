"""Example-level DP-SGD noise placed under secure aggregation: n clients each add a share, the sum carries σC.

Mechanism (one round = one release = one DP-SGD step on the union of the clients' data): client i
Poisson-samples its examples at rate q_i, clips each example's gradient to L2 norm C, sums them, projects the sum
to L2 norm <= ``sum_bound`` (a projection onto a ball is 1-Lipschitz, so one example still moves it by <= C) and
adds a share N(0, (σC)²/(n − c)) per coordinate. Only the secure sum of the contributions is ever released
(CKKS/packed: the key holder decrypts one verified sum per round of >= ``min_survivors`` named clients; no
contribution is part of two released sums).

Guarantee (:attr:`DistributedNoise.effective_multiplier`). A released sum holds m >= m_min contributions; a
coalition of the server and c clients knows (and subtracts) at most c shares, so at least m − c independent
honest shares remain: Gaussian noise of std σC·√((m − c)/(n − c)) >= σC·√((m_min − c)/(n − c)). Conditioned on
everything else (other examples, the coalition's data and shares), the view is a Poisson-subsampled Gaussian
mechanism on the honest client's examples with multiplier σ_eff = σ·√((m_min − c)/(n − c)) and rate q_i: the
event each client records in its own ledger before its contribution leaves. With no dropouts below n and
m_min = n, σ_eff = σ: the noise of a trusted curator's DP-SGD step, once, instead of once per client.

Why one noisy step per round: the analysis needs every data-dependent quantity that leaves a client to be part
of a noised sum. A second local step would start from weights moved by the client's own, individually
un-noised (only σ/√(n − c)) gradient; its output is then a function of that gradient that the sum does not
cover. :class:`DistributedNoise` therefore states the guarantee of exactly one step, and the DP-SGD trainer
refuses a round of more (:class:`~privacy.errors.ConfigurationError`).

Against anyone who sees one client's contribution alone (the secure sum broken), the same step is a
(σ/√(n − c), q_i) Gaussian step: :attr:`DistributedNoise.share_multiplier`, the fallback, reported alongside.

Written here because neither Opacus nor ``dp_accounting`` splits DP-SGD noise among parties; the composition of
the events is ``dp_accounting``'s (:mod:`privacy.accounting`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from privacy.errors import ConfigurationError

__all__ = ["DistributedNoise"]


def _count(name: str, v: object, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigurationError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


@dataclass(frozen=True)
class DistributedNoise:
    """Example-level noise split among ``clients`` (n): the sum carries N(0, (σC)²) against the server and
    ``colluders`` (c) clients whenever it has ``clients`` contributions, and at least the σ_eff noise whenever
    it has ``min_survivors`` (m_min, the fewest a released sum can have). Invariant: 0 <= c < m_min <= n.

    ``sum_bound``: the L2 bound the sum of a client's clipped per-example gradients is projected to before its
    share is added (None: no projection); it bounds the values the secure sum must encode."""

    noise_multiplier: float
    clients: int
    colluders: int
    min_survivors: int
    sum_bound: float | None = None

    def __post_init__(self) -> None:
        z = self.noise_multiplier
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not (math.isfinite(z) and z > 0):
            raise ConfigurationError(f"noise_multiplier must be a finite number > 0, got {z!r}")
        n = _count("clients", self.clients, 1)
        c = _count("colluders", self.colluders, 0)
        m = _count("min_survivors", self.min_survivors, 1)
        if m > n:
            raise ConfigurationError(f"min_survivors ({m}) cannot exceed the {n} clients")
        if c >= m:
            raise ConfigurationError(f"{c} colluding clients in a sum of as few as {m} contributions leave no "
                                     "honest noise share: distributed placement can state no guarantee; raise "
                                     "the minimum of contributors above the colluders")
        b = self.sum_bound
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or
                              not (math.isfinite(b) and b > 0)):
            raise ConfigurationError(f"sum_bound must be a finite number > 0 or None, got {b!r}")
        object.__setattr__(self, "noise_multiplier", float(z))

    @property
    def share_multiplier(self) -> float:
        """σ/√(n − c): the multiplier of the noise one client adds (std σC/√(n − c) per coordinate)."""
        return self.noise_multiplier / math.sqrt(self.clients - self.colluders)

    def sum_multiplier(self, survivors: int) -> float:
        """σ·√((m − c)/(n − c)): the honest noise in a sum of ``survivors`` (m) contributions, against the
        coalition (m in [min_survivors, clients]; a smaller sum is never released)."""
        m = _count("survivors", survivors, 1)
        if not self.min_survivors <= m <= self.clients:
            raise ConfigurationError(f"a released sum has between {self.min_survivors} and {self.clients} "
                                     f"contributions, not {m}")
        return self.noise_multiplier * math.sqrt((m - self.colluders) / (self.clients - self.colluders))

    @property
    def effective_multiplier(self) -> float:
        """σ_eff = σ·√((m_min − c)/(n − c)): the multiplier every client's ledger records per round."""
        return self.sum_multiplier(self.min_survivors)

    @property
    def adversary(self) -> str:
        """Whom the recorded ε holds against."""
        return f"server + {self.colluders} colluding clients (secure sum of >= {self.min_survivors})"
