"""DP-SGD for Hugging Face causal LMs via Opacus (with :mod:`privacy.opacus_ext`, the only modules that import it).

Entry point: :func:`make_private` returns a :class:`DPTrainer`, which a client keeps for its whole life (the role of
Opacus' ``PrivacyEngine``, from its hooks, DP optimizers and ``BatchMemoryManager``). It fixes what breaks when HF
models meet Opacus:

* per-example ``position_ids`` of shape (B, T) are always passed (HF's (1, T) default breaks the hooks);
* the loss is per SEQUENCE (:func:`privacy.hf.sequence_loss`), never HF's batch-mean ``labels=`` loss;
* tied input/output embeddings: ``mode="hooks"`` keeps them tied (per-example gradients of both uses are summed);
  ``mode="ghost"`` cannot handle a parameter used twice, so it unties (default) or freezes them — the choice is
  recorded in :attr:`DPTrainer.tied_embeddings`;
* ``mode="lora"`` wraps the model with ``peft`` LoRA and runs DP only on the adapters (base model frozen);
* GPT-2's ``Conv1D`` and Llama-style ``*RMSNorm`` get exact per-example gradient (and ghost-norm) samplers;
* the model is never wrapped (``wrap_model=False``): ``trainer.model.state_dict()`` keys are the plain HF keys;
* batches are Poisson-sampled (rate q = batch_size/N, CSPRNG), physical batches capped by ``BatchMemoryManager``;
  an empty Poisson batch still takes a noise-only step.

Noise: ``noise="csprng"`` (default): :func:`privacy.noise.gaussian`, AES-256-CTR keyed from ``os.urandom`` (Opacus'
``secure_mode`` needs ``torchcsprng``, unavailable for current torch); ``noise="torch"``: torch's PRNG (experiments
only; :class:`~privacy.errors.InsecureRNGWarning` once per process).

Accounting: each round's steps form one :class:`~privacy.events.PrivacyEvent` (σ, q, steps); each DP release of
the training loss (:meth:`DPTrainer.release_loss`, what the loss-weighted rule needs) is one more
(σ_L, q, batches). With a ledger (:class:`~privacy.ledger.PrivacyLedger`, or the client's durable
:class:`~privacy.durable.ClientLedger`) attached, :meth:`DPTrainer.begin_round` spends the whole round on it
before the first step (:class:`~privacy.errors.BudgetExceededError` if it does not fit: nothing runs), and a
step or release beyond that reservation raises :class:`~privacy.errors.PlanExceededError`.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping
from torch import nn
from torch.utils.data import DataLoader

from privacy.accounting import noise_multiplier_for_epsilon
from privacy.ledger import PrivacyLedger
from privacy.errors import ConfigurationError, InsecureRNGWarning, PlanExceededError, UnsupportedModelError
from privacy.events import PrivacyEvent
from privacy.batches import Batch, PoissonBatchSampler, collate_or_none, unpack_batch
from privacy.dp_inspect import GradientInspection
from privacy.dp_rounds import RoundAccounting
from privacy.hf import (LoraSettings, apply_lora, freeze_embeddings, position_ids_for, sequence_loss,
                        tied_embeddings, untie_embeddings)
from privacy.noise import CSPRNG, gaussian
from privacy.placement import DistributedNoise
from privacy.opacus_ext import CsprngDPOptimizer, CsprngGhostDPOptimizer, register_model_layers

__all__ = ["Mode", "TieStrategy", "NoiseSource", "DPTrainer", "make_private"]

Mode = Literal["hooks", "ghost", "lora"]
TieStrategy = Literal["keep", "untie", "freeze"]
NoiseSource = Literal["csprng", "torch"]
_EXHAUSTED = object()
_warned_insecure = False


def _warn_insecure() -> None:
    global _warned_insecure
    if not _warned_insecure:
        _warned_insecure = True
        warnings.warn("DP-SGD noise comes from torch's non-cryptographic PRNG (noise='torch'): the DP guarantee "
                      "does not hold against an adversary who can predict it. Use noise='csprng' for real runs.",
                      InsecureRNGWarning, stacklevel=3)


class DPTrainer(RoundAccounting, GradientInspection):
    """A client's private model, optimizer and loader for its whole life; records its privacy events.

    Create with :func:`make_private`. Invariants: every optimizer update is one DP-SGD step of a Poisson batch of
    rate :attr:`sample_rate` with per-sequence gradients clipped to :attr:`max_grad_norm` and N(0, (σC)²) noise;
    each such step is counted exactly once in the current round; with a ledger, no step runs past the budget.
    Under distributed placement (:attr:`placement`, :mod:`privacy.placement`) the step adds only this client's
    share (multiplier :attr:`share_multiplier`), a round is one step, and :attr:`noise_multiplier` is the σ_eff
    of the secure sum that the events record.
    """

    def __init__(self, *, model: nn.Module, optimizer: DPOptimizer, hooks: Any, data_loader: DataLoader,
                 noise_multiplier: float, max_grad_norm: float, sample_rate: float, mode: Mode,
                 tied_embeddings: str, noise: NoiseSource, max_physical_batch_size: int | None,
                 ledger: PrivacyLedger | None, placement: DistributedNoise | None = None) -> None:
        self.model, self.optimizer, self.data_loader = model, optimizer, data_loader
        self.placement = placement
        self.share_multiplier = noise_multiplier if placement is None else placement.share_multiplier
        if placement is not None:
            noise_multiplier, self.max_round_steps = placement.effective_multiplier, 1
        self._hooks = hooks
        self.noise_multiplier, self.max_grad_norm, self.sample_rate = noise_multiplier, max_grad_norm, sample_rate
        self.mode, self.tied_embeddings, self.noise = mode, tied_embeddings, noise
        self.max_physical_batch_size, self.ledger = max_physical_batch_size, ledger
        self._init_rounds()
        optimizer.attach_step_hook(self._count_step)

    def release_loss(self, *, noise_multiplier: float, bound: float, batches: int = 1) -> float:
        """A DP estimate of the mean per-sequence training loss, and its cost recorded like a step's.

        Each of ``batches`` Poisson batches of rate q (drawn as a step's are) gives the sum of its per-sequence
        losses clipped to ``[0, bound]`` plus N(0, (σ_L·bound)²) CSPRNG noise: a Poisson-subsampled Gaussian
        release (σ_L, q) of a sum with sensitivity ``bound``. The estimate is their total over the expected
        count ``batches·q·N`` (post-processing). Within a round it must be one the round reserved
        (PlanExceededError otherwise, before any data is touched)."""
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0 and math.isfinite(bound) and bound > 0):
            raise ConfigurationError("loss releases need a noise multiplier > 0 and a finite bound > 0")
        if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
            raise ConfigurationError(f"batches must be an integer >= 1, got {batches!r}")
        if self._plan is not None:
            if (float(noise_multiplier), batches) not in self._plan[1]:
                raise PlanExceededError(f"this round reserved no loss release (σ_L={noise_multiplier:g}, "
                                        f"batches={batches}); nothing was released")
            self._plan[1].remove((float(noise_multiplier), batches))
        elif self.ledger is not None:
            raise PlanExceededError("with a ledger, every release is part of a round reserved by begin_round()")
        total = 0.0
        self.model.eval()
        for _ in range(batches):
            parts = unpack_batch(next(iter(self.data_loader)))
            if parts is not None:
                ids, mask, labels = parts
                with torch.no_grad():
                    out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(ids, mask),
                                     use_cache=False)
                    total += float(sequence_loss(out.logits, labels).clamp(0.0, bound).sum())
            total += float(gaussian(1, noise_multiplier * bound)[0])
        self._releases.append(PrivacyEvent(noise_multiplier, self.sample_rate, batches))
        return total / (batches * self.sample_rate * len(self.data_loader.dataset))

    # -- training ----------------------------------------------------------------------------------------------
    def _backward(self, parts: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None) -> torch.Tensor:
        """Forward + backward of one physical batch; leaves per-example data for the optimizer."""
        if parts is None:  # empty Poisson batch: zero contribution, the step still adds noise
            for p in self.optimizer.params:
                if self.mode == "ghost":
                    p.grad = torch.zeros_like(p)
                else:
                    p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            return torch.zeros(0)
        ids, mask, labels = parts
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(ids, mask),
                             use_cache=False)
            per_seq = sequence_loss(out.logits, labels)
            if self.mode == "ghost":
                DPTensorFastGradientClipping(self._hooks, self.optimizer, per_seq, "mean").backward()
            else:
                per_seq.mean().backward()
        return per_seq.detach()

    def step(self) -> float:
        """One DP-SGD step on a Poisson batch of rate q that this trainer draws itself (a batch chosen by the
        caller would be accounted as Poisson-sampled without being so).

        Split into physical batches of at most ``max_physical_batch_size``. Returns the mean per-sequence loss
        (nan for an empty batch). Raises PlanExceededError before doing anything if the open round forbids it.
        """
        self._check_plan()
        return self._step(next(iter(self.data_loader)))

    def _step(self, batch: Batch) -> float:
        self.model.train()
        parts = unpack_batch(batch)
        chunks: list = [None]
        if parts is not None:
            ids, mask, labels = parts
            size = self.max_physical_batch_size or ids.shape[0]
            chunks = [(ids[i:i + size], None if mask is None else mask[i:i + size], labels[i:i + size])
                      for i in range(0, ids.shape[0], size)]
        losses = []
        for i, chunk in enumerate(chunks):
            self.optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
            losses.append(self._backward(chunk))
            self.optimizer.step()
            self.optimizer.zero_grad()
        all_losses = torch.cat(losses)
        return float(all_losses.mean()) if all_losses.numel() else math.nan

    def train(self, steps: int | None = None) -> list[float]:
        """Run ``steps`` logical steps (default: one epoch, 1/q batches) on Poisson batches from the loader,
        through Opacus' ``BatchMemoryManager`` (physical batches <= ``max_physical_batch_size``).
        Returns the mean per-sequence loss of each step (nan for an empty batch)."""
        target = len(self.data_loader) if steps is None else steps
        losses: list[float] = []
        while len(losses) < target:
            with BatchMemoryManager(data_loader=self.data_loader, optimizer=self.optimizer,
                                    max_physical_batch_size=self.max_physical_batch_size or sys.maxsize) as loader:
                physical, pending = iter(loader), []
                while len(losses) < target:
                    if not pending:
                        self._check_plan()  # before the next logical batch is drawn
                    batch = next(physical, _EXHAUSTED)
                    if batch is _EXHAUSTED:
                        break
                    self.model.train()
                    pending.append(self._backward(unpack_batch(batch)))
                    self.optimizer.step()
                    done = not self.optimizer._is_last_step_skipped
                    self.optimizer.zero_grad()
                    if done:
                        joined = torch.cat(pending)
                        losses.append(float(joined.mean()) if joined.numel() else math.nan)
                        pending = []
        return losses

    # -- weights -----------------------------------------------------------------------------------------------
    def _named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable weights under their plain model names (adapters only in lora mode)."""
        return {n: p.detach().clone() for n, p in self._named_trainable()}

    def load_trainable_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Copy ``state`` into the trainable weights in place (parameter identity, hooks and optimizer kept)."""
        params = dict(self._named_trainable())
        if set(state) != set(params):
            raise ConfigurationError(f"state keys differ from the trainable parameters: "
                                     f"missing {sorted(set(params) - set(state))[:3]}, "
                                     f"unexpected {sorted(set(state) - set(params))[:3]}")
        with torch.no_grad():
            for name, p in params.items():
                if tuple(state[name].shape) != tuple(p.shape):
                    raise ConfigurationError(f"{name}: shape {tuple(state[name].shape)} != {tuple(p.shape)}")
                p.copy_(state[name])

    def close(self) -> None:
        """Remove the Opacus hooks; the model becomes an ordinary (non-private) module again."""
        self._hooks.cleanup()
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model  # peft
        for m in (self.model, base):
            m.__dict__.pop("_privacy_dp_trainer", None)


def _make_optimizer(optimizer: torch.optim.Optimizer | Callable, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        current = [p for g in optimizer.param_groups for p in g["params"]]
        if {id(p) for p in current} == {id(p) for p in params}:
            return optimizer
        return type(optimizer)(params, **optimizer.defaults)  # params changed (LoRA/untie): same class and defaults
    if callable(optimizer):
        return optimizer(params)
    raise ConfigurationError("optimizer must be a torch Optimizer or a callable params -> Optimizer")


def make_private(model: nn.Module, optimizer: torch.optim.Optimizer | Callable[[list], torch.optim.Optimizer],
                 data_loader: DataLoader, *, max_grad_norm: float, noise_multiplier: float | None = None,
                 target_epsilon: float | None = None, delta: float = 1e-5, target_steps: int | None = None,
                 mode: Mode = "hooks", tied: TieStrategy | None = None, lora: LoraSettings | None = None,
                 max_physical_batch_size: int | None = None, noise: NoiseSource = "csprng",
                 ledger: PrivacyLedger | None = None, accountant: Literal["prv", "rdp"] = "prv",
                 placement: DistributedNoise | None = None) -> DPTrainer:
    """Make an HF causal LM, its optimizer and its data loader private; return the client's :class:`DPTrainer`.

    Call ONCE per client and keep the trainer across rounds (a second call on the same model is refused).

    * ``model``: a ``transformers`` causal LM (GPT-2, Llama family, ...), in place; see :func:`load_causal_lm`.
    * ``optimizer``: an instance (reused if it holds exactly the trainable parameters, else re-created with the
      same class and ``defaults`` — LoRA and untying change the parameters) or a factory ``params -> Optimizer``.
    * ``data_loader``: gives the dataset (one record = one sequence), ``batch_size`` (expected logical batch)
      and ``collate_fn``; the trainer's own loader Poisson-samples with q = batch_size / len(dataset).
    * Exactly one of ``noise_multiplier`` (σ) and ``target_epsilon``; with the latter, σ is the smallest value
      (within 1%) such that ε(ledger history + ``target_steps`` steps) <= target at ``delta`` (the ledger's δ
      if a ledger is given); ``target_steps`` defaults to one epoch (round(1/q) steps).
    * ``max_grad_norm``: per-sequence L2 clipping bound C. Noise std is σ·C on the sum of clipped gradients.
    * ``mode``: "hooks" (per-example gradients), "ghost" (ghost clipping, no per-example gradients), "lora"
      (peft adapters ``lora`` or :class:`LoraSettings` defaults, hooks on adapters only).
    * ``tied``: tied-embedding strategy, default "keep" (hooks) / "untie" (ghost); ghost + "keep" is refused.
    * ``max_physical_batch_size``: cap on rows per forward/backward (virtual batches); None = no cap.
    * ``noise``: "csprng" (AES-CTR, default) or "torch" (fast, insecure, warns once).
    * ``placement``: a :class:`~privacy.placement.DistributedNoise`: the noise is split among the clients of a
      secure sum (its ``noise_multiplier`` is σ; give no other); each step adds this client's share, the sum is
      projected to ``sum_bound`` first, rounds are one step and record σ_eff.
    * ``ledger``: optional :class:`PrivacyLedger` (or :class:`~privacy.durable.ClientLedger`); each round is
      reserved on it by :meth:`DPTrainer.begin_round` before its first step. Spend it only through the trainer.
    """
    if getattr(model, "_privacy_dp_trainer", False):
        raise ConfigurationError("model is already private: keep one DPTrainer per client for its whole life")
    if mode not in ("hooks", "ghost", "lora"):
        raise ConfigurationError(f"unknown mode {mode!r}; use 'hooks', 'ghost' or 'lora'")
    if noise not in ("csprng", "torch"):
        raise ConfigurationError(f"unknown noise source {noise!r}")
    if not (isinstance(max_grad_norm, (int, float)) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigurationError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
    if placement is not None:
        if noise != "csprng":
            raise ConfigurationError("distributed placement needs noise='csprng' (the shares are the guarantee)")
        if target_epsilon is not None or noise_multiplier not in (None, placement.noise_multiplier):
            raise ConfigurationError("distributed placement: σ is the placement's noise_multiplier; give no other")
        noise_multiplier = placement.noise_multiplier
    if (noise_multiplier is None) == (target_epsilon is None):
        raise ConfigurationError("give exactly one of noise_multiplier and target_epsilon")
    if max_physical_batch_size is not None and max_physical_batch_size < 1:
        raise ConfigurationError("max_physical_batch_size must be >= 1")
    n, batch_size = len(data_loader.dataset), data_loader.batch_size
    if not batch_size or n < 1:
        raise ConfigurationError("data_loader needs a dataset with a length and a batch_size")
    sample_rate = min(1.0, batch_size / n)
    steps_per_epoch = max(1, round(1 / sample_rate))
    if target_epsilon is not None:
        history = list(ledger.events) if ledger is not None else []
        noise_multiplier = noise_multiplier_for_epsilon(target_epsilon, sample_rate, target_steps or steps_per_epoch,
                                                        ledger.delta if ledger else delta, accountant=accountant,
                                                        history=history,
                                                        relation=ledger.relation if ledger else "add-remove")
    PrivacyEvent(noise_multiplier, sample_rate, 0)  # validate σ

    original, tie_used = model, "n/a"
    if mode == "lora":
        model = apply_lora(model, lora or LoraSettings())
        tie_used = "frozen (lora)"
    elif tied_embeddings(model):
        tie_used = tied or ("untie" if mode == "ghost" else "keep")
        if tie_used not in ("keep", "untie", "freeze"):
            raise ConfigurationError(f"unknown tied-embedding strategy {tie_used!r}")
        if mode == "ghost" and tie_used == "keep":
            raise UnsupportedModelError("ghost clipping cannot clip a parameter used twice: untie or freeze")
        if tie_used == "untie":
            untie_embeddings(model)
        elif tie_used == "freeze":
            freeze_embeddings(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UnsupportedModelError("model has no trainable parameters")
    register_model_layers(model)
    grad_mode = "ghost" if mode == "ghost" else "hooks"
    extra = {"max_grad_norm": max_grad_norm} if grad_mode == "ghost" else {}
    hooks = prepare_module(model, grad_mode, wrap_model=False, batch_first=True, loss_reduction="mean",
                           strict=False, **extra)
    base = _make_optimizer(optimizer, params)
    if noise == "csprng":
        cls = CsprngGhostDPOptimizer if grad_mode == "ghost" else CsprngDPOptimizer
    else:
        cls = DPOptimizerFastGradientClipping if grad_mode == "ghost" else DPOptimizer
        _warn_insecure()
    share = noise_multiplier if placement is None else placement.share_multiplier
    dp_opt = cls(base, noise_multiplier=share, max_grad_norm=max_grad_norm,
                 expected_batch_size=batch_size, loss_reduction="mean")
    if noise == "csprng":
        dp_opt._rng = CSPRNG()
    dp_opt.sum_bound = None if placement is None else placement.sum_bound
    loader = DataLoader(data_loader.dataset, batch_sampler=PoissonBatchSampler(n, sample_rate, steps_per_epoch),
                        collate_fn=collate_or_none(data_loader.collate_fn), num_workers=0)
    original._privacy_dp_trainer = model._privacy_dp_trainer = True
    return DPTrainer(model=model, optimizer=dp_opt, hooks=hooks, data_loader=loader,
                     noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                     sample_rate=sample_rate, mode=mode, tied_embeddings=tie_used, noise=noise,
                     max_physical_batch_size=max_physical_batch_size, ledger=ledger, placement=placement)

