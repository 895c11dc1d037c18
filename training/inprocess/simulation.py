"""A whole simulated cross-cloud run: data, one trainer per cloud, the federation, rounds, metrics.

Synchronous strategies run every client each round. ``async`` is an event simulation: every cloud trains
continuously; its finish time advances by its *modelled* round time (measured compute / platform speed +
modelled transfer time), and the server steps whenever any ``buffer_size`` updates have arrived — each buffer is
one secure-aggregation cohort. With ``partition = "capacity"`` the data shares and local steps follow each
platform's throughput (declared speeds at first, then the measured step times of every round, paper §3.1). Under
DP-SGD a client's data set is fixed for its life (its sample rate is accounted), so re-balancing then moves only
the number of local steps. (Under ``async`` the shares stay at the declared speeds; faster clouds simply
contribute more often.)

``train.threads`` sets torch's intra-op threads for the process (tiny models run fastest on one thread, and far
faster than with several threads on a shared machine).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import numpy as np
import torch

from privacy.errors import BudgetExceededError
from privacy.noise import noise_range

from training.engine.rules import make_strategy
from training.config import RunConfig
from training.workload.corpus import Prepared, prepare
from training.engine.central import central_account
from training.engine.metrics import CLIENT_RELATION, RoundMetrics, metrics_of
from training.inprocess.federation import Federation, RoundReport
from training.workload.trainer import LocalTrainer, ModelSpec, build_model, evaluate, get_flat, set_flat
from training.workload.partition import CapacityPartitioner
from training.workload.platforms import profiles_for
from training.workload.pretrained import tokenizer_dir
from training.inprocess.secure_sum import SecureSum
from training.workload.client_update import ClientUpdate

__all__ = ["Runner", "RoundMetrics", "Tick"]

Tick = Callable[[int, str], None]
"""Progress callback ``tick(round, what)``: called after each client's local training and each secure round."""


class _Stop(Exception):
    """Too few clients can go on: the run ends cleanly after the rounds it completed."""


class Runner:
    """Builds everything from a :class:`RunConfig` and runs ``train.rounds`` server steps."""

    def __init__(self, cfg: RunConfig, *, observer=None) -> None:
        self.cfg = cfg.validate()
        self.stop_reason: str | None = None
        f, t = cfg.federation, cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.rng = np.random.default_rng(t.seed)
        self.platforms = profiles_for(f.clients, cfg.platforms)
        self.capacity = CapacityPartitioner([p.speed for p in self.platforms]) \
            if cfg.data.partition == "capacity" else None
        shares = list(self.capacity.shares()) if self.capacity else None
        m = cfg.model
        self.data: Prepared = prepare(cfg.data, f.clients, self.rng, shares,
                                      tokenizer_dir(m.name, m.path, cfg.data.cache_dir))
        self.spec = ModelSpec.from_config(m, self.data.vocab_size, cfg.data.block_size, t.seed, cfg.data.cache_dir)
        self.eval_model = build_model(self.spec)
        dp = cfg.dp if cfg.dp.enabled else None
        self.placement = placement = cfg.placement_noise()
        self.trainers = [LocalTrainer(i, self.spec, self.data.clients[i], batch_size=t.batch_size, lr=t.lr,
                                      local_steps=self._steps(i), optimizer=t.optimizer, dp=dp, seed=t.seed,
                                      release_loss=f.aggregator == "loss-weighted", ledger_dir=cfg.dp.ledger,
                                      placement=placement)
                         for i in range(f.clients)]
        self.refused: dict[int, str] = {}  # clients that withdrew because their next round does not fit
        clip = f.update_clip or 1.0
        self.shares = min(f.clients, int(cfg.aggregator_options.get("buffer_size", f.clients))) \
            if f.aggregator == "async" else f.clients  # the fewest noise shares a cohort splits into
        if f.noise_multiplier:  # the encoders' bound leaves room for each client's noise share
            clip = noise_range(clip, noise_multiplier=f.noise_multiplier, n_clients=self.shares)
        clip += cfg.placement_margin()  # lr·(projected sum + share)/B: the share's tail on top of update_clip
        self.central = central_account(f.noise_multiplier, noise_shares=self.shares, delta=cfg.dp.delta,
                                       dim=get_flat(self.eval_model).size, colluders=cfg.dp.colluders,
                                       accountant=cfg.dp.accountant, scheme=f.scheme, neighbors=f.neighbors,
                                       threshold=f.threshold, share_dropouts=f.share_dropouts,
                                       max_corrupt=f.max_corrupt)
        secure = SecureSum(f.scheme, params=f.ckks_params, min_contributors=f.min_contributors,
                           clip=clip, ring_bits=f.ring_bits, threshold=f.threshold,
                           neighbors=f.neighbors, max_cohort=f.clients, max_corrupt=f.max_corrupt,
                           share_dropouts=f.share_dropouts, sign=f.sign)
        strategy = make_strategy(f.aggregator, **cfg.aggregator_options)
        self.fed = Federation(get_flat(self.eval_model), strategy, secure, list(range(f.clients)),
                              platforms=self.platforms, update_clip=None if placement else f.update_clip,
                              noise_multiplier=f.noise_multiplier, observer=observer, noise_shares=self.shares,
                              min_cohort=1 if placement is None else placement.min_survivors)
        self.initial_loss = self.evaluate()
        self.fed.loss_reference = self.initial_loss

    def _steps(self, i: int) -> int:
        if self.capacity is None:
            return self.cfg.train.local_steps
        return max(1, round(self.cfg.train.local_steps * len(self.platforms) * self.capacity.shares()[i]))

    def evaluate(self) -> float:
        """Validation loss of the current global model on the server's held-out blocks."""
        set_flat(self.eval_model, self.fed.global_vec)
        return evaluate(self.eval_model, self.data.val)

    def _epsilons(self) -> dict[int, float | None]:
        return {tr.client_id: tr.epsilon() for tr in self.trainers}

    def _central_epsilon(self, rep: RoundReport) -> float | None:
        """Client-level ε of the distributed-DP sums so far against :attr:`central`'s colluders
        (:mod:`training.engine.central`); None without distributed noise."""
        return None if self.central is None else self.central.add(rep.extra["noise_shares"][1])

    def _metrics(self, rep: RoundReport, wall: float, sim_time: float, staleness: dict[int, int]) -> RoundMetrics:
        loss = self.evaluate()
        self.fed.loss_reference = loss
        eps = self._epsilons()
        central = self._central_epsilon(rep)
        return metrics_of(rep.record, loss=loss, epsilon_per_client=eps, bytes_up=rep.total_up,
                          bytes_down=rep.total_down, bytes_up_per_client=rep.bytes_up,
                          bytes_down_per_client=rep.bytes_down, seconds=wall,
                          compute_seconds=sum(rep.compute_seconds.values()), secure_seconds=rep.secure_seconds,
                          modelled_seconds=max(rep.modelled_seconds.values()) + rep.secure_seconds,
                          sim_time=sim_time, staleness=staleness, comm_seconds_per_client=dict(rep.comm_seconds),
                          central_epsilon=central, colluders=None if self.central is None else self.central.c,
                          central_relation=None if self.central is None else CLIENT_RELATION,
                          **self._placement_relation(eps))

    def _placement_relation(self, eps: dict[int, float | None]) -> dict:
        """Under distributed placement each client's ε is example-level on the union of the clients' data,
        against the placement's adversary: the row says so."""
        if self.placement is None or not any(e is not None for e in eps.values()):
            return {}
        return {"epsilon_relation": f"replace-one record of the clients' union, against {self.placement.adversary}",
                "exposed_epsilon_per_client": {tr.client_id: tr.exposed_epsilon() for tr in self.trainers}}

    def rebalance(self, updates: dict[int, ClientUpdate]) -> None:
        """Capacity partitioning: fold each client's observed throughput (local steps per modelled compute
        second on its platform) into the shares, then re-partition the data (not under DP) and the local steps."""
        if self.capacity is None:
            return
        ids = sorted(updates)
        work = [updates[i].steps for i in ids]
        secs = [self.platforms[i].compute_seconds(updates[i].seconds) for i in ids]
        self.capacity.observe(work, secs)
        if not self.cfg.dp.enabled:
            parts = self.capacity.assign(len(self.data.pool), self.rng)
            for i, tr in enumerate(self.trainers):
                tr.set_data(self.data.pool[parts[i]])
        for i, tr in enumerate(self.trainers):
            tr.local_steps = self._steps(i)

    @property
    def ticks_per_round(self) -> int:
        """How many ``tick`` calls one server step makes (trainings in it, plus its secure round)."""
        k = self.fed.strategy.buffer_size if self.fed.strategy.name == "async" else len(self.trainers)
        return min(k, len(self.trainers)) + 1

    def run(self, progress: Callable[[RoundMetrics], None] | None = None, tick: Tick | None = None
            ) -> list[RoundMetrics]:
        """Run ``train.rounds`` server steps; ``progress`` gets each round's metrics, ``tick`` finer progress.

        Before each round a client checks the whole round against its ledger; one that does not fit sends
        nothing and withdraws (a dropout, listed in :attr:`refused`). The run ends early, cleanly, when too few
        clients can go on for a round: the rounds completed so far are returned and :attr:`stop_reason` says why.
        """
        tick = tick or (lambda _r, _w: None)
        out: list[RoundMetrics] = []
        self.stop_reason = None
        try:
            if self.fed.strategy.name == "async":
                self._run_async(progress, tick, out)
            else:
                self._run_sync(progress, tick, out)
        except _Stop as e:
            self.stop_reason = f"privacy budget reached after {len(out)} rounds: {e}"
        return out

    def _min_cohort(self) -> int:
        """The fewest clients a round can run with: the noise shares each client is configured for under
        distributed noise (a smaller cohort would carry less noise than accounted), else two (a sum of one is
        that client's update)."""
        return self.shares if self.cfg.federation.noise_multiplier else 2

    def _train(self, tr: LocalTrainer) -> ClientUpdate | None:
        """``tr``'s update, or None when its round does not fit its ledger (it withdraws; nothing leaves it)."""
        if tr.client_id in self.refused:
            return None
        try:
            tr.round_fits()
            return tr.train(*self.fed.model_for(tr.client_id))
        except BudgetExceededError as e:
            self.refused[tr.client_id] = str(e)
            return None

    def _check_cohort(self, ready: int) -> None:
        if ready < self._min_cohort():
            why = "; ".join(f"client {c}: {e}" for c, e in sorted(self.refused.items()))
            raise _Stop(f"{ready} clients can go on, a round needs {self._min_cohort()} ({why})")

    def _run_sync(self, progress, tick: Tick, out: list[RoundMetrics]) -> None:
        sim = 0.0
        for r in range(1, self.cfg.train.rounds + 1):
            t0 = time.perf_counter()
            drop = [int(c) for c in self.cfg.federation.dropouts.get(str(r), [])]
            self._check_cohort(sum(c not in self.refused for c in range(len(self.trainers))))
            updates = {}
            for tr in self.trainers:
                u = self._train(tr)
                if u is not None:
                    updates[tr.client_id] = u
                tick(r, f"client {tr.client_id} trained" if u is not None else f"client {tr.client_id} withdrew")
            self._check_cohort(len(updates))
            rep = self.fed.aggregate(updates, drop=drop)
            tick(r, "secure aggregation")
            self.rebalance(updates)
            wall = time.perf_counter() - t0
            sim += max(rep.modelled_seconds.values()) + rep.secure_seconds
            out.append(self._metrics(rep, wall, sim, {c: 0 for c in rep.contributors}))
            if progress:
                progress(out[-1])

    def _run_async(self, progress, tick: Tick, out: list[RoundMetrics]) -> None:
        k = self.fed.strategy.buffer_size
        events: list[tuple[float, int, ClientUpdate]] = []
        seq = 0
        model_bytes = 4 * self.fed.global_vec.size
        traffic: dict[int, tuple[int, int]] = {}  # client -> real (up, down) bytes of its latest round

        def launch(tr: LocalTrainer, now: float, r: int) -> None:
            """Train now; the update arrives after the modelled compute and transfer time (the client's real bytes
            of its previous round; the float32 model size before its first)."""
            nonlocal seq
            u = self._train(tr)
            if u is None:
                tick(r, f"client {tr.client_id} withdrew")
                return
            tick(r, f"client {tr.client_id} trained")
            p = self.platforms[tr.client_id]
            up, down = traffic.get(tr.client_id, (model_bytes, model_bytes))
            finish = now + p.compute_seconds(u.seconds) + p.comm_seconds(up, down)
            heapq.heappush(events, (finish, seq, u))
            seq += 1

        for tr in self.trainers:
            launch(tr, 0.0, 0)
        for r in range(1, self.cfg.train.rounds + 1):
            t0 = time.perf_counter()
            self._check_cohort(min(len(events), k))
            batch = [heapq.heappop(events) for _ in range(min(k, len(events)))]
            now = batch[-1][0]
            updates = {u.client_id: u for _, _, u in batch}
            staleness = {c: self.fed.version - u.base_version for c, u in updates.items()}
            rep = self.fed.aggregate(updates)
            tick(r, "secure aggregation")
            traffic.update({c: (rep.bytes_up[c], rep.bytes_down[c]) for c in updates})
            for c in updates:
                launch(self.trainers[c], now + rep.secure_seconds, r)
            wall = time.perf_counter() - t0
            out.append(self._metrics(rep, wall, now + rep.secure_seconds, staleness))
            if progress:
                progress(out[-1])
