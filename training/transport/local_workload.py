"""The ``local`` workload: every client process trains the real model (:class:`training.local.LocalTrainer`) on
its own shard of the run file's corpus; the aggregator applies the run's strategy and evaluates on held-out data.

Each process derives the same data split from the run file and seed (``training.corpus.prepare``), then keeps
only its part: client i its shard, the aggregator the validation blocks. Contributions are encoded exactly as in
the in-process federation (strategy encode, L2 clip to ``update_clip``, optional distributed-noise share, clamp).
Public weights only (FedAvg, gradient): private-weight strategies need a per-round weight bound not carried yet.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from secagg.roles import AggregateResult
from training.errors import ConfigError
from training.transport.config import TransportConfig

__all__ = ["LocalWorkload", "run_config"]


def run_config(path: str | None, cfg: TransportConfig):
    """The run file's RunConfig, parsed and validated exactly as ``secagg run`` does, with clients, scheme, rounds
    and seed taken from ``cfg`` (which read them from the same file unless a flag overrode them)."""
    from training.config import RunConfig, load_config

    run = load_config(path) if path else RunConfig()
    run.federation = dataclasses.replace(run.federation, clients=cfg.clients, scheme=cfg.scheme)
    run.train = dataclasses.replace(run.train, rounds=cfg.rounds, seed=cfg.seed)
    return run.validate()


class _TrainerSource:
    def __init__(self, work: "LocalWorkload", client_id: int) -> None:
        from training.local import LocalTrainer

        r = work.run
        self.work, self.client_id = work, client_id
        self.trainer = LocalTrainer(client_id, work.spec, work.data.clients[client_id], batch_size=r.train.batch_size,
                                    lr=r.train.lr, local_steps=r.train.local_steps, optimizer=r.train.optimizer,
                                    dp=r.dp if r.dp.enabled else None, seed=r.train.seed)
        self.weight = float(self.trainer.num_samples)
        self.events: tuple = ()

    def compute(self, model: np.ndarray, round_no: int) -> np.ndarray:
        from training.aggregation.base import RoundInfo

        update = self.trainer.train(model, round_no)
        self.events = tuple(update.privacy)
        c = self.work.strategy.encode(update, RoundInfo(round_no + 1, round_no))
        if float(c.weight) != self.weight:
            raise ConfigError("the strategy's weight differs from the one announced at check-in")
        x = np.asarray(c.vector, dtype=np.float64)
        f = self.work.run.federation
        if f.update_clip is not None:
            from privacy.clipping import clip_update

            x, _ = clip_update(x, f.update_clip)
            if f.noise_multiplier > 0:
                from privacy.noise import gaussian_share

                share = gaussian_share(x.size, noise_multiplier=f.noise_multiplier, clip_norm=f.update_clip,
                                       n_clients=self.work.cohort)
                x = np.clip(x + share, -f.update_clip, f.update_clip)
        return x


class LocalWorkload:
    """A tiny GPT-2 (or a local HF model) trained by every client; see the module docstring."""

    def __init__(self, cfg: TransportConfig) -> None:
        from training.aggregation import make_strategy
        from training.corpus import prepare
        from training.local import ModelSpec

        self.run = run = run_config(cfg.run_config, cfg)
        if run.train.threads:  # as in `secagg run`: tiny models are fastest on one thread per process
            import torch

            torch.set_num_threads(run.train.threads)
        self.strategy = make_strategy(run.federation.aggregator, **run.aggregator_options)
        if self.strategy.private_weights or self.strategy.name == "async":
            raise ConfigError(f"strategy {self.strategy.name!r} is not supported over gRPC yet (needs public weights)")
        if cfg.scheme == "masking" and run.federation.update_clip is None:
            raise ConfigError("masking needs a public value bound: set federation.update_clip")
        self.data = prepare(run.data, cfg.clients, np.random.default_rng(run.train.seed), None)
        m = run.model
        self.spec = ModelSpec(m.path, self.data.vocab_size, run.data.block_size, m.n_layer, m.n_embd, m.n_head,
                              m.lora, m.lora_rank, run.train.seed)
        self.cohort = cfg.cohort_size
        self.ledger_budget = (run.dp.epsilon_budget or 1e9, run.dp.delta)
        self._eval_model = None
        self._initial = None

    @property
    def dim(self) -> int:
        return int(self.initial_model().size)

    def initial_model(self) -> np.ndarray:
        if self._initial is None:
            from training.local import build_model, get_flat

            self._eval_model = build_model(self.spec)
            self._initial = get_flat(self._eval_model)
        return self._initial

    def source(self, client_id: int) -> _TrainerSource:
        return _TrainerSource(self, client_id)

    def apply(self, model: np.ndarray, result: AggregateResult, round_no: int) -> np.ndarray:
        from training.aggregation.base import RoundInfo

        return self.strategy.apply(model, result, RoundInfo(round_no + 1, round_no))

    def evaluate(self, model: np.ndarray) -> dict[str, float]:
        from training.local import evaluate, set_flat

        self.initial_model()
        set_flat(self._eval_model, model)
        return {"loss": float(evaluate(self._eval_model, self.data.val))}
