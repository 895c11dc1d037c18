"""In-process federation: the server state and one secure round over a cohort of client updates.

Every role is a separate object exchanging bytes (:class:`training.secure.SecureSum` drives the real ``secagg``
roles). The parties and what each holds:

* client i: its data, its :class:`~training.update.ClientUpdate` (delta, loss) and its contribution in the clear;
  it clips its contribution in L2 to ``update_clip``, optionally adds its distributed-DP noise share, and encodes;
* aggregator (and CKKS key holder): ciphertexts / masked vectors, then only the aggregate Σ w_i x_i, Σ w_i;
* server: the aggregate, the public round information, and the new global model it publishes.

:class:`Federation` counts bytes up/down per client per round (secure-protocol messages, the global-model
download as float32, and the one-time CKKS public context) and models each platform's round time from them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from privacy.clipping import clip_update
from privacy.noise import weighted_share

from training.aggregation.base import Contribution, RoundInfo, Strategy
from training.errors import ConfigError
from training.platforms import PlatformProfile, profiles_for
from training.secure import Observer, SecureSum
from training.update import ClientUpdate

__all__ = ["Federation", "RoundReport"]


@dataclass
class RoundReport:
    """What one server step cost and who took part (no individual update or loss is recorded here)."""

    round: int
    version: int
    contributors: tuple[int, ...]
    dropped: tuple[int, ...]
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    compute_seconds: dict[int, float]
    modelled_seconds: dict[int, float]
    secure_seconds: float
    update_norm: float
    extra: dict = field(default_factory=dict)
    comm_seconds: dict[int, float] = field(default_factory=dict)  # modelled transfer time per client

    @property
    def total_up(self) -> int:
        return sum(self.bytes_up.values())

    @property
    def total_down(self) -> int:
        return sum(self.bytes_down.values())


class Federation:
    """Server state (global vector, version) plus the client-side encoding rule and the secure round.

    Invariant: :meth:`aggregate` changes the global model only through ``strategy.apply`` on the secure
    aggregate; individual contributions exist only inside :meth:`contribution` (client side).
    """

    def __init__(self, initial: np.ndarray, strategy: Strategy, secure: SecureSum, clients: Sequence[int], *,
                 platforms: Sequence[PlatformProfile] | None = None, update_clip: float | None = None,
                 noise_multiplier: float = 0.0, observer: Observer | None = None) -> None:
        if update_clip is None and secure.scheme == "masking":
            raise ConfigError("masking needs a public value bound: set update_clip")
        if noise_multiplier and update_clip is None:
            raise ConfigError("distributed DP noise needs update_clip (its sensitivity)")
        if noise_multiplier and strategy.private_weights:
            raise ConfigError(f"distributed DP noise covers the update lanes only; the {strategy.name} rule's weight "
                              "lane (a function of private losses) would be released unnoised: use a public-weight "
                              "rule (fedavg, gradient, async)")
        self.global_vec = np.asarray(initial, dtype=np.float64).copy()
        self.strategy, self.secure = strategy, secure
        self.clients = list(clients)
        self.platforms = dict(zip(self.clients, profiles_for(len(self.clients), platforms)))
        self.update_clip, self.noise_multiplier = update_clip, float(noise_multiplier)
        self.observer = observer
        self.version = 0
        self.round = 0
        self.loss_reference: float | None = None  # public reference loss (the runner's validation loss)
        self._joined: set[int] = set()
        self.history: list[RoundReport] = []
        strategy.observe_version(0, self.global_vec)

    def info(self, base_versions: Mapping[int, int] | None = None) -> RoundInfo:
        """Public facts for the next server step."""
        return RoundInfo(self.round + 1, self.version, dict(base_versions or {}), self.loss_reference)

    def contribution(self, c: Contribution, cohort_size: int, reference_weight: float) -> Contribution:
        """Client side: the strategy's contribution ``c``, L2-clipped to ``update_clip`` and (optionally) noised
        with this client's share of the distributed Gaussian noise, scaled so the weighted sum carries
        z·C·w_ref·√(m/n) (:func:`privacy.noise.weighted_share`; ``reference_weight`` is the cohort's largest
        public weight)."""
        x = np.asarray(c.vector, dtype=np.float64)
        if self.update_clip is not None:
            x, _ = clip_update(x, self.update_clip)
            if self.noise_multiplier > 0:
                x = weighted_share(x, float(c.weight), clip_norm=self.update_clip,
                                   noise_multiplier=self.noise_multiplier, n_clients=cohort_size,
                                   reference_weight=reference_weight)
        return Contribution(x, c.weight)

    def aggregate(self, updates: Mapping[int, ClientUpdate], *, drop: Sequence[int] = ()) -> RoundReport:
        """One secure round over ``updates`` (clients in ``drop`` vanish before submitting) and one server step."""
        unknown = [c for c in updates if c not in self.platforms]
        if unknown:
            raise ConfigError(f"updates from unknown clients {unknown}")
        info = self.info({c: u.base_version for c, u in updates.items()})
        encoded = {c: self.strategy.encode(u, info) for c, u in updates.items()}
        reference = max(float(e.weight) for e in encoded.values())
        contribs = {c: self.contribution(e, len(updates), reference) for c, e in encoded.items()}
        t0 = time.perf_counter()
        res, traffic = self.secure.aggregate(contribs, private=self.strategy.private_weights,
                                             weight_bound=self.strategy.weight_bound(info), drop=tuple(drop),
                                             observer=self.observer)
        secure_seconds = time.perf_counter() - t0
        new = self.strategy.apply(self.global_vec, res, info)
        norm = float(np.linalg.norm(new - self.global_vec))
        self.global_vec = new
        self.version += 1
        self.round = info.round
        self.strategy.observe_version(self.version, self.global_vec)
        report = self._report(info, updates, res.contributors, res.dropped, traffic, secure_seconds, norm)
        report.extra["noise_shares"] = (len(updates), len(res.contributors))  # (n, m): who added, who survived
        self.history.append(report)
        return report

    def _report(self, info, updates, contributors, dropped, traffic, secure_seconds, norm) -> RoundReport:
        model_bytes = 4 * self.global_vec.size  # the published global model, float32 on the wire
        up, down, comp, modelled, comm = {}, {}, {}, {}, {}
        for c, u in updates.items():
            setup = self.secure.setup_bytes if c not in self._joined else 0
            self._joined.add(c)
            up[c] = int(traffic.up.get(c, 0))
            down[c] = int(traffic.down.get(c, 0)) + model_bytes + setup
            comp[c] = u.seconds
            p = self.platforms[c]
            comm[c] = p.comm_seconds(up[c], down[c], traffic.messages.get(c, 0) + 1)
            modelled[c] = p.compute_seconds(u.seconds) + comm[c]
        return RoundReport(info.round, self.version, tuple(contributors), tuple(dropped), up, down, comp, modelled,
                           secure_seconds, norm, {"keyholder_bytes": traffic.keyholder}, comm)
