"""Run configuration: dataclasses with defaults (the demo) and TOML loading via ``tomllib``.

A TOML file has the sections ``[data]``, ``[model]``, ``[train]``, ``[federation]``, ``[dp]``, an optional
``[aggregator_options]`` table passed to the strategy, and optional ``[[platforms]]`` entries
(``name``, ``speed``, ``up_mbps``, ``down_mbps``, ``latency_ms``). A ``[transport]`` table (deployment settings for
``secagg up`` and the services, read by :mod:`training.deployment`) may be present; ``secagg run`` ignores
it. Unknown sections and keys are refused (ConfigError). ``examples/run.toml`` sets every option.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from privacy.placement import DistributedNoise
from training.errors import ConfigError
from training.engine.roles import SCHEMES
from training.workload.corpus import DataConfig
from training.workload.platforms import PlatformProfile

MAX_CLIENTS = 4096  # clients of one federation (each has its own role, ledger and, under `secagg up`, process)
MAX_ROUNDS = 1_000_000

__all__ = ["MAX_CLIENTS", "MAX_ROUNDS", "DataConfig", "ModelConfig", "TrainConfig", "FederationConfig", "DPConfig", "RunConfig", "load_config",
           "demo_config", "DEMO_MODELS"]


@dataclass
class ModelConfig:
    name: str = "tiny"                   # "tiny" (GPT-2 from n_layer/n_embd) | "smollm2-135m" (packaged, offline)
    path: str | None = None              # a local Hugging Face causal LM directory (instead of name)
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 2
    lora: bool | None = None             # None: LoRA for pretrained models (name or path), full training for tiny
    lora_rank: int = 8
    lora_alpha: float | None = None      # None: 2 * lora_rank
    lora_targets: list[str] | None = None  # None: the attention projections (GPT-2 c_attn, Llama q_proj/v_proj)
    freeze_embeddings: bool = False      # token embedding (tied to the output layer) not trained; for dp.mode ghost

    def __post_init__(self) -> None:
        from training.workload.pretrained import PACKAGED, TINY

        if self.name != TINY and self.name not in PACKAGED:
            raise ConfigError(f"unknown [model] name {self.name!r}; expected {TINY!r} or one of {sorted(PACKAGED)}")
        if self.path is not None and self.name != TINY:
            raise ConfigError("[model] sets both name and path; a run trains one model")
        if self.lora_rank < 1 or (self.lora_alpha is not None and not self.lora_alpha > 0):
            raise ConfigError("lora_rank must be >= 1 and lora_alpha > 0")

    @property
    def pretrained(self) -> bool:
        return self.path is not None or self.name != "tiny"

    @property
    def use_lora(self) -> bool:
        return self.pretrained if self.lora is None else bool(self.lora)


@dataclass
class TrainConfig:
    rounds: int = 6
    local_steps: int = 8
    batch_size: int = 32
    lr: float = 1e-2
    optimizer: str = "adamw"
    seed: int = 0
    threads: int = 1                     # torch intra-op threads of the run (0: torch's default); 1 suits tiny models


@dataclass
class FederationConfig:
    clients: int = 3
    scheme: str = "ckks"                 # ckks | masking | packed
    aggregator: str = "fedavg"           # fedavg | loss-weighted | gradient | async
    update_clip: float | None = 10.0     # L2 clip of every contribution (the masking value bound)
    noise_multiplier: float = 0.0        # distributed DP on the update (z; shares summing to N(0, (zC)^2))
    ckks_params: str = "default"
    min_contributors: int = 2
    ring_bits: int = 32
    threshold: int | None = None
    neighbors: int | None = None
    max_corrupt: int | None = None       # masking: clients that may collude with the server (default: what t allows)
    share_dropouts: int | None = None    # masking: a neighbourhood's share-stage dropouts tolerated (default 1)
    sign: bool = True                    # masking: signed rounds; false only for a trusted server
    dropouts: dict[str, list[int]] = field(default_factory=dict)   # round (as string) -> clients that drop


@dataclass
class DPConfig:
    enabled: bool = True
    noise_multiplier: float = 0.8
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "prv"
    epsilon_budget: float | None = None
    mode: str = "hooks"                  # hooks (per-sample gradients) | ghost (ghost clipping, less memory)
    loss_noise_multiplier: float = 2.0   # σ_L of the DP loss release the loss-weighted rule needs
    loss_bound: float | None = None      # per-sequence losses are clipped to [0, bound] (default ln(vocab))
    loss_batches: int = 4                # Poisson batches averaged per release (each one accounted)
    ledger: str | None = None            # the clients' durable ledger directory (default: see training.ledgers)
    colluders: int | None = None         # distributed DP: clients colluding with the server (default: the bound
                                         # of the masking scheme for the cohort; 0 only when stated)
    placement: str = "local"             # local: each client adds σC to its own steps | distributed: one step a
                                         # round, each client adds a share, the secure sum carries σC (privacy.placement)

    def __post_init__(self) -> None:
        if self.enabled and not (self.noise_multiplier >= 0 and self.max_grad_norm > 0 and 0 < self.delta < 1):
            raise ConfigError("DP needs noise_multiplier >= 0, max_grad_norm > 0 and 0 < delta < 1")
        if self.enabled and not (self.loss_noise_multiplier > 0 and self.loss_batches >= 1 and
                                 (self.loss_bound is None or self.loss_bound > 0)):
            raise ConfigError("DP loss releases need loss_noise_multiplier > 0, loss_batches >= 1, loss_bound > 0")
        if self.colluders is not None and (isinstance(self.colluders, bool) or not isinstance(self.colluders, int)
                                           or self.colluders < 0):
            raise ConfigError(f"dp.colluders must be an integer >= 0, got {self.colluders!r}")
        if self.ledger is not None and (not isinstance(self.ledger, str) or not self.ledger):
            raise ConfigError("dp.ledger must be a directory path")
        if self.placement not in ("local", "distributed"):
            raise ConfigError(f"unknown dp.placement {self.placement!r}; expected 'local' or 'distributed'")
        if self.mode not in ("hooks", "ghost"):
            raise ConfigError(f"unknown dp.mode {self.mode!r}; expected 'hooks' or 'ghost' (LoRA: [model] lora)")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    aggregator_options: dict = field(default_factory=dict)
    platforms: list[PlatformProfile] | None = None

    def validate(self) -> RunConfig:
        f = self.federation
        if f.scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {f.scheme!r}; expected one of {', '.join(SCHEMES)}")
        if f.aggregator not in ("fedavg", "loss-weighted", "gradient", "async"):
            raise ConfigError(f"unknown aggregator {f.aggregator!r}")
        if self.data.partition not in ("by-document", "iid", "dirichlet", "capacity"):
            raise ConfigError(f"unknown partition {self.data.partition!r}")
        if self.data.corpus not in ("shakespeare", "wikitext"):
            raise ConfigError(f"unknown corpus {self.data.corpus!r}")
        if self.data.corpus == "wikitext" and not self.data.wikitext_dir:
            raise ConfigError("corpus 'wikitext' needs data.wikitext_dir (a local directory)")
        if f.clients < 2 or self.train.rounds < 1:
            raise ConfigError("need at least 2 clients and 1 round")
        if f.clients > MAX_CLIENTS or self.train.rounds > MAX_ROUNDS:
            raise ConfigError(f"at most {MAX_CLIENTS} clients and {MAX_ROUNDS} rounds (got {f.clients}, "
                              f"{self.train.rounds})")
        if self.train.threads < 0:
            raise ConfigError(f"train.threads must be >= 0, got {self.train.threads}")
        if self.platforms is not None and len(self.platforms) != f.clients:
            raise ConfigError(f"{len(self.platforms)} [[platforms]] for {f.clients} clients")
        from training.engine.rules import make_strategy

        make_strategy(f.aggregator, **self.aggregator_options)  # refuses options the aggregator does not take
        self.placement_noise()  # refuses a distributed placement whose guarantee cannot be stated
        return self

    def placement_margin(self, tail: float = 9.0) -> float:
        """Room the encoders' L∞ value bound leaves above ``update_clip`` for a distributed-placement share:
        ``tail`` standard deviations of lr·σC/(B·√(n − c)) per coordinate (0 for local placement)."""
        p = self.placement_noise()
        if p is None:
            return 0.0
        return tail * self.train.lr * p.share_multiplier * self.dp.max_grad_norm / self.train.batch_size

    def placement_noise(self) -> DistributedNoise | None:
        """The example-level noise split of ``[dp] placement = "distributed"`` (None for local placement), from
        this party's own configuration: σ = ``dp.noise_multiplier``, n = ``federation.clients``, c =
        ``dp.colluders`` (default: the masking corruption bound for n), m_min = ``federation.min_contributors``
        (the fewest contributions the key holder releases a sum of), the pre-noise bound
        ``update_clip · batch_size / lr`` (so the contribution lr·g is within ``update_clip`` before its share).
        ConfigError for every configuration whose guarantee it cannot state (:mod:`privacy.placement`)."""
        d, f, t = self.dp, self.federation, self.train
        if not d.enabled or d.placement != "distributed":
            return None
        refusals = [(not d.noise_multiplier > 0, "dp.noise_multiplier > 0 (the sum's σ)"),
                    (f.aggregator != "gradient", "aggregator = 'gradient' (the server applies the noisy sum "
                     "with its optimizer; other rules weight or buffer the release)"),
                    (t.local_steps != 1, "train.local_steps = 1 (one noisy step per round: a second local step "
                     "would depend on an individually un-noised gradient)"),
                    (t.optimizer != "sgd", "train.optimizer = 'sgd' (the contribution must be linear in the "
                     "noisy gradient so that the shares sum; AdamW's step is not)"),
                    (f.scheme == "masking", "scheme 'ckks' or 'packed' (masking's integer shares are sized for "
                     "update-level sensitivity only)"),
                    (bool(f.noise_multiplier), "federation.noise_multiplier = 0 (update-level noise is the other "
                     "placement's mechanism)"),
                    (f.update_clip is None, "federation.update_clip (the bound of the encoded values)"),
                    (self.data.partition == "capacity", "a partition other than 'capacity' (it changes the "
                     "local steps)")]
        missing = [why for bad, why in refusals if bad]
        if missing:
            raise ConfigError("dp.placement = 'distributed' needs " + "; ".join(missing))
        from privacy.errors import ConfigurationError
        from training.engine.central import default_colluders

        c = default_colluders(f.clients, neighbors=f.neighbors, threshold=f.threshold,
                              share_dropouts=f.share_dropouts, max_corrupt=f.max_corrupt) \
            if d.colluders is None else d.colluders
        try:
            return DistributedNoise(d.noise_multiplier, f.clients, c, f.min_contributors,
                                    f.update_clip * t.batch_size / t.lr)
        except ConfigurationError as e:
            raise ConfigError(f"dp.placement = 'distributed': {e}") from e


DEMO_MODELS = ("smollm2-135m", "tiny")


def demo_config(model: str = "smollm2-135m") -> RunConfig:
    """The ``secagg demo`` run: 3 clouds, each holding different Shakespeare plays (two each), DP-SGD on every
    client, CKKS. ``smollm2-135m``: federated DP LoRA fine-tuning of the packaged pretrained SmolLM2-135M
    (``secagg demo`` then places the noise under the secure sum, :func:`distribute_noise`; that run as a file is
    ``examples/smollm2_lora.toml``); ``tiny``: a tiny GPT-2 trained from scratch (the
    seconds-long protocol demo).

    Why the SmolLM2 settings: DP-SGD's noise on the mean clipped gradient has norm σ·C·√d/B against a signal of
    at most C, so the demo trains few parameters (LoRA rank 1 on q/v: 57,600), clips at C = 0.3 (about the median
    per-sequence gradient norm of those adapters at the start) and takes batches of 16 short blocks (32 tokens,
    the same tokens per step as 8 x 64), on all of each client's text (a lower sample rate q, so a lower ε)."""
    if model not in DEMO_MODELS:
        raise ConfigError(f"unknown demo model {model!r}; expected one of {', '.join(DEMO_MODELS)}")
    cfg = RunConfig()
    if model == "tiny":
        return cfg
    cfg.model.name, cfg.model.lora_rank = model, 1
    cfg.data.block_size, cfg.data.max_blocks_per_client = 32, 4096  # all of each client's text (2.2k-2.4k blocks)
    t = cfg.train
    t.rounds, t.local_steps, t.batch_size, t.lr, t.threads = 3, 3, 16, 3e-2, 0
    cfg.dp.noise_multiplier, cfg.dp.max_grad_norm = 0.6, 0.3
    return cfg


def distribute_noise(cfg: RunConfig, server_lr: float = 0.01, colluders: int = 0) -> RunConfig:
    """``cfg`` with its DP-SGD noise placed under the secure sum (``[dp] placement = "distributed"``): the same
    rounds × local steps and batches per client as that many rounds of one SGD step (client lr 1, so a
    contribution is the noisy clipped-gradient sum over B), the gradient rule applying the sum with the server's
    Adam at ``server_lr`` (0.01: what ``benchmarks.smollm2_placement`` picked on the tuning split at ε = 3, the
    measured point nearest the demo's ε ≈ 2), every client's sum required (m_min = n) and ``colluders``
    clients assumed to collude with the server. σ stays: it is the sum's, σ_eff = σ at c = 0."""
    t, f, d = cfg.train, cfg.federation, cfg.dp
    t.rounds, t.local_steps, t.optimizer, t.lr = t.rounds * t.local_steps, 1, "sgd", 1.0
    f.aggregator, f.min_contributors = "gradient", f.clients
    cfg.aggregator_options = {"optimizer": "adam", "lr": server_lr, "eps": 1e-8}
    d.placement, d.colluders = "distributed", colluders
    return cfg


def _build(cls, table: dict, section: str):
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - names)
    if unknown:
        raise ConfigError(f"unknown keys in [{section}]: {unknown}")
    try:
        return cls(**table)
    except TypeError as e:
        raise ConfigError(f"[{section}]: {e}") from None


def load_config(path: str | Path) -> RunConfig:
    """Parse a TOML run file into a validated :class:`RunConfig`."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    sections = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "federation": FederationConfig,
                "dp": DPConfig}
    unknown = sorted(set(raw) - set(sections) - {"aggregator_options", "platforms", "transport"})
    if unknown:
        raise ConfigError(f"unknown sections in {path}: {unknown}")
    cfg = RunConfig(**{k: _build(cls, raw.get(k, {}), k) for k, cls in sections.items()},
                    aggregator_options=dict(raw.get("aggregator_options", {})),
                    platforms=[_build(PlatformProfile, p, "platforms") for p in raw["platforms"]]
                    if "platforms" in raw else None)
    return cfg.validate()
