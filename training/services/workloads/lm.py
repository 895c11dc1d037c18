"""The ``local`` workload: every client process trains the real model (:class:`training.workload.trainer.LocalTrainer`) on
its own shard of the run file's corpus; the aggregator applies the run's strategy and evaluates on held-out data.

Each process derives the same data split from the run file and seed (``training.workload.corpus.prepare``), then keeps
only its part: client i its shard, the aggregator the validation blocks. Contributions are encoded by the engine's one
:func:`~training.engine.contribution.contribute`, as in-process (strategy encode, L2 clip, noise share, clamp).
Loss-weighted rounds use the aggregator's validation loss of the round's model as the public reference loss, as
``secagg run`` does; each client's own loss stays inside its process and only its secret weight e^{-(L-s)/T}
enters the client's encrypted or masked lane.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from training.engine.contribution import IntegerNoise, contribute
from training.engine.terms import StrategyStep
from training.deployment import TransportConfig

__all__ = ["LocalWorkload", "run_config"]


def run_config(path: str | None, cfg: TransportConfig):
    """The run file's RunConfig, parsed and validated exactly as ``secagg run`` does, with clients, scheme,
    aggregator (and its options), update clip, rounds and seed taken from ``cfg`` (which read them from the same
    file unless a flag or ``[transport]`` overrode them). The packed scheme exists only over the network, so the
    RunConfig keeps the file's own scheme then (it is not used by the trainer)."""
    from training.config import RunConfig, load_config

    run = load_config(path) if path else RunConfig()
    scheme = run.federation.scheme if cfg.scheme == "packed" else cfg.scheme
    run.federation = dataclasses.replace(run.federation, clients=cfg.clients, scheme=scheme,
                                         aggregator=cfg.aggregator, update_clip=cfg.clip)
    run.aggregator_options = dict(cfg.aggregator_options)
    run.train = dataclasses.replace(run.train, rounds=cfg.rounds, seed=cfg.seed)
    return run.validate()


class _TrainerSource:
    def __init__(self, work: "LocalWorkload", client_id: int) -> None:
        from training.workload.trainer import LocalTrainer

        r = work.run
        self.work, self.client_id = work, client_id
        self.trainer = LocalTrainer(client_id, work.spec, work.data.clients[client_id], batch_size=r.train.batch_size,
                                    lr=r.train.lr, local_steps=r.train.local_steps, optimizer=r.train.optimizer,
                                    dp=r.dp if r.dp.enabled else None, seed=r.train.seed,
                                    release_loss=r.federation.aggregator == "loss-weighted",
                                    ledger_dir=work.ledger_dir, placement=r.placement_noise())
        self.weight = float(self.trainer.public_weight)
        self.strategy = work.make_strategy()  # this client's own instance (encode side)
        self.events: tuple = ()

    def ready(self) -> None:
        """BudgetExceededError (spent, needed, budget) unless this client's ledger affords its next whole round:
        asked before every check-in, so a client that cannot afford a round never receives its task."""
        self.trainer.round_fits()

    def state(self) -> bytes:
        """The trainer's carried state (:meth:`training.workload.trainer.LocalTrainer.state`), for sealed node state."""
        return self.trainer.state()

    def load_state(self, raw: bytes) -> None:
        self.trainer.load_state(raw)

    def update(self, model: np.ndarray, version: int):
        """Local training from global ``version`` (its DP events are reported at the next check-in)."""
        update = self.trainer.train(model, version)
        self.events = tuple(update.privacy)
        return update

    def contribute(self, model: np.ndarray, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        return self.encode(self.update(model, round_no), round_no, terms)

    def encode(self, update, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
        """The engine's client-side contribution (as in-process): strategy encode, L2 clip, noise share."""
        f = self.work.run.federation
        z = 0.0 if self.integer_noise is not None else f.noise_multiplier  # masking: the role adds it
        distributed = self.trainer.placement is not None  # the share is in the update: no clip after it
        c = contribute(self.strategy, update, round_no, terms, update_clip=None if distributed else f.update_clip,
                       noise_multiplier=z, noise_shares=self.work.cohort,
                       cohort=terms.get("cohort_size"), announced=self.weight,
                       min_cohort=self.trainer.placement.min_survivors if distributed else 1)
        return c.vector, c.weight

    @property
    def integer_noise(self) -> IntegerNoise | None:
        """Masking sums integers: this client's distributed-noise share is a discrete Gaussian its masking role
        adds on the round's grid (None for the other schemes, or without distributed noise)."""
        f = self.work.run.federation
        if self.work.scheme != "masking" or not f.noise_multiplier or f.update_clip is None:
            return None
        return IntegerNoise(f.noise_multiplier, f.update_clip, self.work.cohort)

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray:
        return self.contribute(model, round_no, {})[0]

    def placement_report(self) -> dict:
        """Distributed placement: this client's exposed ε and its ledger's adversary, for the aggregator's rows
        (``{}`` otherwise)."""
        p, exposed = self.trainer.placement, self.trainer.exposed_epsilon()  # one accountant run per check-in
        if p is None or exposed is None:
            return {}
        return {"exposed_epsilon": float(exposed), "adversary": p.adversary}


class LocalWorkload:
    """The run file's model (tiny GPT-2, packaged or local HF model) trained by every client; see the module
    docstring."""

    def __init__(self, cfg: TransportConfig) -> None:
        from training.workload.corpus import prepare
        from training.workload.trainer import ModelSpec
        from training.workload.pretrained import tokenizer_dir

        self.run = run = run_config(cfg.run_config, cfg)
        if run.train.threads:  # as in `secagg run`: tiny models are fastest on one thread per process
            import torch

            torch.set_num_threads(run.train.threads)
        self.make_strategy = cfg.strategy
        m = run.model
        self.data = prepare(run.data, cfg.clients, np.random.default_rng(run.train.seed), None,
                            tokenizer_dir(m.name, m.path, run.data.cache_dir))
        self.spec = ModelSpec.from_config(m, self.data.vocab_size, run.data.block_size, run.train.seed,
                                          run.data.cache_dir)
        self.cohort = cfg.cohort_size
        self.scheme = cfg.scheme  # the deployment's (packed too), not the run file's
        from training.ledgers import default_ledger_dir

        self.ledger_dir = default_ledger_dir(cfg.ledger or run.dp.ledger, None)
        self.ledger_budget = (run.dp.epsilon_budget, run.dp.delta)
        self.colluders = run.dp.colluders  # the coalition the central ε is stated against (None: the default)
        self._eval_model = None
        self._initial = None
        self._last: tuple[bytes, dict[str, float]] | None = None

    @property
    def dim(self) -> int:
        return int(self.initial_model().size)

    def initial_model(self) -> np.ndarray:
        if self._initial is None:
            from training.workload.trainer import build_model, get_flat

            self._eval_model = build_model(self.spec)
            self._initial = get_flat(self._eval_model)
        return self._initial

    def source(self, client_id: int) -> _TrainerSource:
        return _TrainerSource(self, client_id)

    def step(self) -> StrategyStep:
        """The aggregator's strategy instance; each round's reference loss is the validation loss of its model."""
        return StrategyStep(self.make_strategy(), reference=lambda m: self.evaluate(m)["loss"])

    def evaluate(self, model: np.ndarray) -> dict[str, float]:
        """Validation loss of ``model`` on the held-out blocks (the last model's value is remembered)."""
        import hashlib

        from training.workload.trainer import evaluate, set_flat

        key = hashlib.sha256(np.ascontiguousarray(model, dtype=np.float64).tobytes()).digest()
        if self._last is None or self._last[0] != key:
            self.initial_model()
            set_flat(self._eval_model, model)
            self._last = (key, {"loss": float(evaluate(self._eval_model, self.data.val))})
        return dict(self._last[1])
