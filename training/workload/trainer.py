"""Local training on one client: a Hugging Face causal LM, E local steps, optional DP-SGD -> ClientUpdate.

The model is a tiny GPT-2 built from a config by default (offline, no weights downloaded), a packaged pretrained
model (``name``, :mod:`training.workload.pretrained`), or any local model directory (``from_pretrained(path,
local_files_only=True)``); ``lora=True`` trains LoRA adapters only (needs ``peft``), the base is frozen and never
leaves the client. Only trainable parameters travel: :func:`get_flat` / :func:`set_flat` map them to one float
vector in ``named_parameters`` order, which is the vector the federation aggregates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.errors import ConfigError
from training.ledgers import RELATION
from training.workload.client_update import ClientUpdate

__all__ = ["ModelSpec", "build_model", "parameter_counts", "get_flat", "set_flat", "evaluate", "LocalTrainer",
           "RELATION", "data_fingerprint", "ClientUpdate"]



def data_fingerprint(blocks: np.ndarray) -> str:
    """sha256 of a client's training blocks (shape and values): what its ledger is keyed by."""
    import hashlib

    a = np.ascontiguousarray(blocks, dtype=np.int64)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """How to build the model: a packaged pretrained ``name`` (:mod:`training.workload.pretrained`), ``path`` (a local HF
    model directory), or a tiny GPT-2 of the given shape; ``lora``: LoRA adapters are the only trainable part."""

    path: str | None = None
    vocab_size: int = 2048
    block_size: int = 64
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    lora: bool = False
    lora_rank: int = 8
    seed: int = 0
    freeze_embeddings: bool = False     # the (tied) token embedding does not train: needed by ghost clipping
    name: str = "tiny"
    lora_alpha: float | None = None     # None: 2 * lora_rank
    lora_targets: tuple[str, ...] | None = None
    cache_dir: str | None = None

    @classmethod
    def from_config(cls, model, vocab_size: int, block_size: int, seed: int,
                    cache_dir: str | None = None) -> "ModelSpec":
        """The spec of a run file's ``[model]`` section (:class:`training.config.ModelConfig`)."""
        return cls(model.path, vocab_size, block_size, model.n_layer, model.n_embd, model.n_head, model.use_lora,
                   model.lora_rank, seed, model.freeze_embeddings, model.name, model.lora_alpha,
                   tuple(model.lora_targets) if model.lora_targets else None, cache_dir)

    @property
    def source(self) -> str | None:
        """The local directory the weights load from (a packaged model's float32 cache entry), or None (tiny)."""
        from training.workload.pretrained import cached_model_dir, is_packaged

        if is_packaged(self.name):
            return str(cached_model_dir(self.name, self.cache_dir))
        return self.path


def build_model(spec: ModelSpec) -> torch.nn.Module:
    """The spec's model in train mode; identical weights for identical specs (seeded init). Never downloads."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch.manual_seed(spec.seed)
    source = spec.source
    if source is not None:
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=True, dtype=torch.float32)
    else:
        cfg = GPT2Config(vocab_size=spec.vocab_size, n_positions=spec.block_size, n_embd=spec.n_embd,
                         n_layer=spec.n_layer, n_head=spec.n_head, bos_token_id=0, eos_token_id=0,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        model = GPT2LMHeadModel(cfg)
    if spec.lora:
        from privacy.errors import PrivacyError
        from privacy.hf import LoraSettings, apply_lora

        targets = spec.lora_targets or (("c_attn", "c_proj") if source is None else None)  # None: attention
        settings = LoraSettings(r=spec.lora_rank, alpha=spec.lora_alpha or 2 * spec.lora_rank,
                                target_modules=targets)
        try:
            model = apply_lora(model, settings)
        except PrivacyError as e:
            raise ConfigError(str(e)) from e
    if spec.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)  # the tied output layer shares this weight
    model.train()
    return model


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(base model parameters, trainable parameters) of ``model``, tied weights counted once. The base is every
    parameter but the LoRA adapters': with LoRA it is the frozen model that is never sent; without, it is the
    model itself, all of it trained."""
    base = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return base, sum(p.numel() for _, p in _trainable(model))


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def get_flat(model: torch.nn.Module) -> np.ndarray:
    """All trainable parameters as one float64 vector (``named_parameters`` order; tied weights once)."""
    with torch.no_grad():
        return torch.cat([p.detach().reshape(-1).to(torch.float64) for _, p in _trainable(model)]).numpy()


def set_flat(model: torch.nn.Module, vec: np.ndarray) -> None:
    """Load a vector produced by :func:`get_flat` (same architecture) into the trainable parameters."""
    params = _trainable(model)
    total = sum(p.numel() for _, p in params)
    if vec.ndim != 1 or vec.size != total:
        raise ConfigError(f"parameter vector of size {vec.size} does not match the model ({total} trainable)")
    pos = 0
    with torch.no_grad():
        for _, p in params:
            n = p.numel()
            p.copy_(torch.from_numpy(np.ascontiguousarray(vec[pos:pos + n])).reshape(p.shape).to(p.dtype))
            pos += n


@torch.no_grad()
def evaluate(model: torch.nn.Module, blocks: np.ndarray, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy of ``model`` over LM ``blocks`` (n, L) (token-weighted)."""
    if len(blocks) == 0:
        raise ConfigError("no evaluation blocks")
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = torch.from_numpy(np.asarray(blocks[i:i + batch_size], dtype=np.int64))
        loss = model(input_ids=x, labels=x).loss
        k = x.shape[0] * (x.shape[1] - 1)
        total += float(loss) * k
        count += k
    model.train(was_training)
    return total / count


class LocalTrainer:
    """One client's trainer for the life of the federation (model, optimizer and DP engine persist).

    ``train(global_vec, version)`` loads the global weights, runs ``local_steps`` minibatch steps on the client's
    blocks, and returns Δ = local − global with the client's sample count and mean training loss. With
    ``dp`` (a :class:`training.config.DPConfig`), steps are DP-SGD through :mod:`privacy.dpsgd` (one
    ``DPTrainer`` per client for life, Poisson batches, per-sequence clipping, CSPRNG noise); the update carries
    the round's privacy events and ``epsilon()`` reports the client's spent budget. ``release_loss`` (set when the
    rule needs the loss, i.e. loss-weighted) makes the reported loss a DP release (``[dp] loss_*``) accounted in
    the same ledger; otherwise the loss never leaves the client.

    Ledger: with ``ledger_dir`` the client's durable :class:`privacy.durable.ClientLedger` there (identity
    ``client-<id>``, keyed by a fingerprint of its blocks; every driver passes one), else an in-memory ledger.
    Each round is reserved on it (write-ahead) before its first step; :meth:`round_fits` is the check a driver
    makes before it checks in. ε is labelled :data:`RELATION`.

    ``placement`` (a :class:`privacy.placement.DistributedNoise`, from :meth:`training.config.RunConfig.placement_noise`):
    the round is one SGD step whose noise is this client's share of the secure sum's; the ledger records σ_eff
    against the placement's adversary, and the public weight is the expected batch (``batch_size``), the same
    for every client, so the weighted mean the gradient rule applies is the noisy sum over the expected total
    batch (q·N summed over the contributors).
    """

    def __init__(self, client_id: int, spec: ModelSpec, blocks: np.ndarray, *, batch_size: int = 8,
                 lr: float = 1e-3, local_steps: int = 4, optimizer: str = "adamw", dp=None, seed: int = 0,
                 model_factory: Callable[[ModelSpec], torch.nn.Module] = build_model,
                 release_loss: bool = False, ledger_dir: str | Path | None = None, placement=None) -> None:
        if len(blocks) == 0:
            raise ConfigError(f"client {client_id} has no training data")
        if local_steps < 1 or batch_size < 1 or not lr > 0:
            raise ConfigError("local_steps and batch_size must be >= 1 and lr > 0")
        self.client_id, self.spec = client_id, spec
        self.release_loss = bool(release_loss)
        self.blocks = np.asarray(blocks, dtype=np.int64)
        self.batch_size, self.lr, self.local_steps = batch_size, lr, local_steps
        self.model = model_factory(spec)
        params = [p for _, p in _trainable(self.model)]
        if optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        elif optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr)
        else:
            raise ConfigError(f"unknown local optimizer {optimizer!r}; expected 'adamw' or 'sgd'")
        self._gen = torch.Generator().manual_seed(seed * 7919 + client_id)
        self.dp = dp if dp is not None and dp.enabled else None
        self.placement = placement if self.dp is not None else None
        if self.placement is not None and (optimizer != "sgd" or local_steps != 1):
            raise ConfigError("distributed placement takes one SGD step per round (local_steps = 1, optimizer sgd)")
        self.private = None
        self._exposed: list[tuple[float, int]] = []  # (q, steps) of each release under distributed placement
        self.ledger = None
        if self.dp is not None:
            self.ledger = self._ledger(ledger_dir)
            self.private = self._make_private(self.blocks)
            self.model, self.optimizer = self.private.model, self.private.optimizer

    @property
    def identity(self) -> str:
        return f"client-{self.client_id}"

    def _ledger(self, directory: str | Path | None):
        d = self.dp
        if directory is None:
            from privacy.ledger import PrivacyLedger

            return PrivacyLedger(d.epsilon_budget, d.delta, d.accountant, RELATION)
        from privacy.durable import ClientLedger, ledger_file
        from privacy.errors import PrivacyError

        try:
            against = {} if self.placement is None else {"adversary": self.placement.adversary}
            return ClientLedger(ledger_file(directory, self.identity), client=self.identity,
                                data=data_fingerprint(self.blocks), epsilon_budget=d.epsilon_budget,
                                delta=d.delta, accountant=d.accountant, relation=RELATION, **against)
        except OSError as e:
            raise ConfigError(f"cannot open the privacy ledger in {directory}: {e}") from e
        except PrivacyError as e:
            raise ConfigError(str(e)) from e

    def _loss_releases(self) -> list[tuple[float, int]]:
        return [(self.dp.loss_noise_multiplier, self.dp.loss_batches)] if self.release_loss else []

    def round_fits(self) -> None:
        """BudgetExceededError (spent, needed, budget) unless the next whole round (its steps and loss release)
        fits the ledger; records nothing. A no-op without DP."""
        if self.private is not None:
            self.ledger.refresh().check_events(self.private.plan_events(self.local_steps,
                                                                        self._loss_releases()))

    def _make_private(self, blocks: np.ndarray):
        """One :class:`privacy.dpsgd.DPTrainer` for this client's life (Poisson batches of rate batch/N)."""
        from privacy.dpsgd import make_private
        from torch.utils.data import DataLoader, TensorDataset

        d = self.dp
        tied = None
        if d.mode == "ghost":  # ghost clipping cannot clip a weight used twice; untying would change the shared model
            if self.model.get_input_embeddings().weight.requires_grad:
                raise ConfigError("dp.mode = 'ghost' in a federation needs [model] freeze_embeddings = true or "
                                  "lora = true (untying the tied embedding would change the model every client shares)")
            tied = "freeze"
        loader = DataLoader(TensorDataset(torch.from_numpy(blocks)), batch_size=min(self.batch_size, len(blocks)))
        return make_private(self.model, self.optimizer, loader, max_grad_norm=d.max_grad_norm,
                            noise_multiplier=d.noise_multiplier, delta=d.delta, ledger=self.ledger,
                            accountant=d.accountant, mode=d.mode, tied=tied, placement=self.placement)

    @property
    def num_samples(self) -> int:
        return len(self.blocks)

    @property
    def public_weight(self) -> int:
        """The weight this client announces and its updates carry: its example count, or under distributed
        placement the expected batch every client shares (its example count then never leaves it)."""
        return self.batch_size if self.placement is not None else self.num_samples

    def set_data(self, blocks: np.ndarray) -> None:
        """Replace this client's training blocks (capacity-aware re-partitioning between rounds).

        Under DP-SGD the data set (and so the sample rate of every accounted step) is fixed for the client's
        life; re-partitioning is then refused and only the number of local steps may change.
        """
        if len(blocks) == 0:
            raise ConfigError(f"client {self.client_id} would have no training data")
        if self.private is not None:
            raise ConfigError("a DP-SGD client's data set is fixed for its life (its sample rate is accounted)")
        self.blocks = np.asarray(blocks, dtype=np.int64)

    def _batches(self):
        """Endless shuffled epochs of ``batch_size`` blocks (the non-private path)."""
        bs = min(self.batch_size, len(self.blocks))
        while True:
            order = torch.randperm(len(self.blocks), generator=self._gen).numpy()
            for i in range(0, len(order) - bs + 1, bs):
                yield torch.from_numpy(self.blocks[order[i:i + bs]])

    def train(self, global_vec: np.ndarray, version: int = 0) -> ClientUpdate:
        """E local steps from ``global_vec``; returns the delta and the mean training loss (client-private).

        Under DP the whole round is first reserved on the ledger: if it does not fit,
        ``privacy.errors.BudgetExceededError`` before anything runs or is recorded.
        """
        if self.private is not None:
            self.private.begin_round(self.local_steps, loss_releases=self._loss_releases(),
                                     what=f"round from model version {version}")
        set_flat(self.model, global_vec)
        start = time.perf_counter()
        self.model.train()
        events: tuple = ()
        if self.private is not None:
            losses = [x for x in self.private.train(self.local_steps) if not math.isnan(x)]
            if self.release_loss:  # the loss leaves the client (loss-weighted rule): a DP release, accounted
                d = self.dp
                bound = d.loss_bound if d.loss_bound is not None else math.log(self.spec.vocab_size)
                losses = [self.private.release_loss(noise_multiplier=d.loss_noise_multiplier, bound=bound,
                                                    batches=d.loss_batches)]
            events = self.private.end_round()
            if self.placement is not None:  # what exposed_epsilon() composes (carried in state(), like the rest)
                self._exposed += [(float(e.sample_rate), int(e.steps)) for e in events]
        else:
            losses, batches = [], self._batches()
            for _ in range(self.local_steps):
                x = next(batches)
                self.optimizer.zero_grad(set_to_none=True)
                loss = self.model(input_ids=x, labels=x).loss
                loss.backward()
                self.optimizer.step()
                losses.append(float(loss.detach()))
        seconds = time.perf_counter() - start
        delta = get_flat(self.model) - global_vec
        mean_loss = float(np.mean(losses)) if losses else math.log(self.spec.vocab_size)
        return ClientUpdate(self.client_id, delta, self.public_weight, mean_loss, base_version=version,
                            seconds=seconds, steps=self.local_steps, privacy=events)

    def state(self) -> bytes:
        """What this client carries from round to round besides the global model and its ledger (the optimizer's
        moments, the shuffle generator), for a runtime that keeps no process alive between rounds;
        :meth:`load_state` in a fresh trainer of the same client takes it over. The DP history is not in it: the
        ledger on the client's disk holds it; the (q, steps) of this run's placed releases are, for
        :meth:`exposed_epsilon`."""
        import io

        buf = io.BytesIO()
        torch.save({"optimizer": self.optimizer.state_dict(), "generator": self._gen.get_state(),
                    "exposed": list(self._exposed)}, buf)
        return buf.getvalue()

    def load_state(self, raw: bytes) -> None:
        import io

        saved = torch.load(io.BytesIO(raw), weights_only=True)  # tensors and plain data only
        self.optimizer.load_state_dict(saved["optimizer"])
        self._exposed = [(float(q), int(k)) for q, k in saved.get("exposed", [])]
        self._gen.set_state(saved["generator"])

    def epsilon(self) -> float | None:
        """The client's privacy spent so far per its ledger, at the configured δ (None without DP)."""
        return None if self.ledger is None else self.ledger.spent()

    def exposed_epsilon(self) -> float | None:
        """Distributed placement: the ε of this trainer's closed rounds against anyone who sees its contribution
        alone (the secure sum broken, e.g. the key holder colluding), where each release carries only this
        client's share σ/√(n − c): the per-client guarantee beside the ledger's central one. None otherwise."""
        if self.placement is None or self.ledger is None:
            return None
        from privacy.accounting import epsilon_of_events
        from privacy.events import PrivacyEvent

        share = self.placement.share_multiplier
        events = [PrivacyEvent(share, q, steps) for q, steps in self._exposed]
        return epsilon_of_events(events, self.ledger.delta, accountant=self.dp.accountant, relation=RELATION) \
            if events else 0.0
