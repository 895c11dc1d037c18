"""Settings of a networked deployment, read from the same TOML file as ``secagg run --config``.

The run file's ``[federation]`` (clients, scheme, aggregator, update_clip, ckks_params, min_contributors,
ring_bits, threshold, neighbors), ``[train]`` (rounds, seed) and ``[aggregator_options]`` sections are honoured;
deployment-only settings live in an optional ``[transport]`` table (keys: the fields of :class:`TransportConfig`).
Unknown ``[transport]`` keys are refused (ConfigError). CLI flags override the file.

Invariant: every setting read from the run file defaults to the run file's own default (taken from
:mod:`training.config`, never restated here), so a file that omits a key means the same in ``secagg run`` and in
``secagg up``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secagg.encoding import MAX_DIM
from training.config import MAX_CLIENTS, MAX_ROUNDS, FederationConfig, TrainConfig
from training.errors import ConfigError

__all__ = ["TransportConfig", "load_transport_config", "SCHEMES"]

SCHEMES = ("masking", "ckks", "packed")

_FROM_RUN = {("federation", "clients"): "clients", ("federation", "scheme"): "scheme",
             ("federation", "aggregator"): "aggregator", ("federation", "update_clip"): "clip",
             ("federation", "ckks_params"): "ckks_params", ("federation", "min_contributors"): "min_contributors",
             ("federation", "ring_bits"): "ring_bits", ("federation", "threshold"): "threshold",
             ("federation", "neighbors"): "neighbors", ("federation", "max_corrupt"): "max_corrupt",
             ("federation", "share_dropouts"): "share_dropouts", ("federation", "sign"): "signed",
             ("federation", "noise_multiplier"): "noise_multiplier", ("train", "rounds"): "rounds",
             ("train", "seed"): "seed"}


def _run_defaults() -> dict[str, Any]:
    """The run file's default of every setting :data:`_FROM_RUN` reads, by TransportConfig field name."""
    tables = {"federation": FederationConfig, "train": TrainConfig}
    fields = {sec: {f.name: f for f in dataclasses.fields(cls)} for sec, cls in tables.items()}
    return {name: fields[sec][key].default for (sec, key), name in _FROM_RUN.items()}


_RUN = _run_defaults()



@dataclass
class TransportConfig:
    """Everything the processes of one deployment agree on (ports 0 = ephemeral, published via port files)."""

    host: str = "127.0.0.1"
    aggregator_port: int = 0
    keyholder_port: int = 0
    certs: str = "certs"
    out: str = "runs/transport"
    scheme: str = _RUN["scheme"]           # masking | ckks | packed (defaults below: the run file's own)
    clients: int = _RUN["clients"]
    rounds: int = _RUN["rounds"]
    aggregator: str = _RUN["aggregator"]   # fedavg | gradient | loss-weighted | async (the run file's)
    aggregator_options: dict = dataclasses.field(default_factory=dict)  # the run file's [aggregator_options]
    cohort: int | None = None             # clients per round (default: all; async: its buffer_size)
    min_clients: int | None = None        # smallest cohort a round opens with (default: 2/3 of the cohort)
    trainer: str = "local"                # local (the run file's model trained on its corpus) | synthetic (a vector)
    dim: int = 1000                       # model size for the synthetic trainer
    seed: int = _RUN["seed"]
    checkin_timeout: float = 10.0         # a round opens with >= min_clients once the first has waited this long
    stage_timeout: float = 10.0           # a protocol stage silent this long is closed (silent clients drop out)
    train_timeout: float = 300.0          # extra time of a round's first stage, for the clients' local training
    poll_seconds: float = 10.0
    max_message_bytes: int = 256 << 20
    part_chunks: int | None = None        # clients stream contributions in parts of this many ciphertexts (HE) or
                                          # 64 Ki-value chunks (masking); default: the scheme's (16; Flower 128)
    window_bytes: int | None = None       # HE aggregator: running sums it holds at most (default 256 MiB)
    clip: float = _RUN["clip"]            # L2 clip of every contribution, also the masking/packed value bound
    ring_bits: int = _RUN["ring_bits"]
    threshold: int | None = _RUN["threshold"]
    neighbors: int | None = _RUN["neighbors"]
    max_corrupt: int | None = _RUN["max_corrupt"]
    share_dropouts: int | None = _RUN["share_dropouts"]
    noise_multiplier: float = _RUN["noise_multiplier"]  # distributed DP (the run file's); widens the value bound
    rounding: str = "stochastic"
    weight_bound: float | None = None
    signed: bool = _RUN["signed"]         # masking: CA-certified Ed25519 signatures on keys and survivor lists
    ckks_params: str = _RUN["ckks_params"]
    min_contributors: int = _RUN["min_contributors"]
    min_value_bits: int = 14              # packed: smallest quantized value width (lanes per slot follow from it)
    run_config: str | None = None         # the run file itself (the ``local`` trainer reads its sections)
    placement_margin: float = 0.0         # value-bound room for [dp] placement = "distributed" shares (from the run file)
    ledger: str | None = None             # clients' privacy ledgers (default: [dp] ledger, else `up`: OUT/ledger,
                                          # a standalone client: the user's state dir; see training.ledgers)

    def validate(self) -> "TransportConfig":
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown scheme {self.scheme!r}; expected one of {list(SCHEMES)}")
        if not (isinstance(self.clip, (int, float)) and self.clip > 0):
            raise ConfigError(f"the update clip must be a positive number, got {self.clip!r}")
        if self.trainer not in ("synthetic", "local"):
            raise ConfigError(f"unknown trainer {self.trainer!r}; expected 'synthetic' or 'local'")
        if self.clients < 1 or self.rounds < 1 or self.dim < 1:
            raise ConfigError("clients, rounds and dim must be positive")
        if self.clients > MAX_CLIENTS or self.rounds > MAX_ROUNDS or self.dim > MAX_DIM:
            raise ConfigError(f"at most {MAX_CLIENTS} clients, {MAX_ROUNDS} rounds and dim {MAX_DIM} (got "
                              f"{self.clients}, {self.rounds}, {self.dim})")
        if not (self.stage_timeout > 0 and self.checkin_timeout >= 0 and self.train_timeout >= 0
                and self.poll_seconds > 0):
            raise ConfigError("timeouts must be positive")
        for name in ("part_chunks", "window_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 1 <= self.cohort_size <= self.clients or not 1 <= self.min_cohort <= self.cohort_size:
            raise ConfigError("need 1 <= min_clients <= cohort <= clients")
        self.strategy()  # refuses an unknown aggregator or options it does not take (ConfigError)
        return self

    @property
    def cohort_size(self) -> int:
        """Clients per round; for ``async`` the buffer size K (capped at the clients)."""
        if self.aggregator == "async":
            return min(self.clients, int(self.strategy().buffer_size))  # type: ignore[attr-defined]
        return self.cohort or self.clients

    @property
    def min_cohort(self) -> int:
        if self.min_clients is not None:
            return self.min_clients
        return max(1, min(self.cohort_size, math.ceil(2 * self.cohort_size / 3)))

    @property
    def value_bound(self) -> float:
        """The masking/packed value bound: the clip, widened by each client's distributed-noise share (the run
        file's ``[dp] placement = "distributed"``: :meth:`training.config.RunConfig.placement_margin`)."""
        if not self.noise_multiplier:
            return self.clip + self.placement_margin
        from privacy.noise import noise_range

        return noise_range(self.clip, noise_multiplier=self.noise_multiplier, n_clients=self.cohort_size)

    def scheme_options(self) -> dict[str, Any]:
        if self.scheme == "ckks":
            return {"params": self.ckks_params, "min_contributors": self.min_contributors,
                    "window_bytes": self.window_bytes}
        if self.scheme == "packed":
            return {"max_cohort": max(2, self.cohort_size), "min_value_bits": self.min_value_bits,
                    "clip": self.value_bound, "rounding": self.rounding, "weight_bound": self.weight_bound,
                    "min_contributors": self.min_contributors, "window_bytes": self.window_bytes}
        return {"clip": self.value_bound, "ring_bits": self.ring_bits, "threshold": self.threshold,
                "neighbors": self.neighbors, "rounding": self.rounding, "weight_bound": self.weight_bound,
                "signed": self.signed, "max_corrupt": self.max_corrupt, "share_dropouts": self.share_dropouts}

    def strategy(self):
        """A fresh instance of the run's aggregation strategy (each process builds its own)."""
        from training.engine.rules import make_strategy

        return make_strategy(self.aggregator, **self.aggregator_options)


def _placement_margin(path: str | Path) -> float:
    """The run file's distributed-placement room in the value bound (0 without it; the file is validated)."""
    from training.config import load_config

    return load_config(path).placement_margin()


def load_transport_config(path: str | Path | None = None, **overrides: Any) -> TransportConfig:
    """Defaults, then the run file (``[federation]``/``[train]``, then ``[transport]``), then non-None overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"cannot read config {path}: {e}") from None
        for (section, key), name in _FROM_RUN.items():
            table = raw.get(section, {})
            if isinstance(table, dict) and key in table and table[key] is not None:
                values[name] = table[key]
        transport = raw.get("transport", {})
        if not isinstance(transport, dict):
            raise ConfigError("[transport] must be a table")
        names = {f.name for f in dataclasses.fields(TransportConfig)}
        unknown = sorted(set(transport) - names)
        if unknown:
            raise ConfigError(f"unknown keys in [transport]: {unknown}")
        options = raw.get("aggregator_options", {})
        if not isinstance(options, dict):
            raise ConfigError("[aggregator_options] must be a table")
        values["aggregator_options"] = dict(options)
        values |= transport
        values["run_config"] = str(Path(path).resolve())
        if isinstance(raw.get("dp"), dict) and raw["dp"].get("placement") == "distributed":
            values["placement_margin"] = _placement_margin(path)
    values |= {k: v for k, v in overrides.items() if v is not None}
    try:
        return TransportConfig(**values).validate()
    except TypeError as e:
        raise ConfigError(f"[transport]: {e}") from None
