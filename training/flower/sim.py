"""``secagg flower sim``: the Flower driver on Flower's simulation runtime, on this machine.

The run is configured exactly as a networked deployment (:class:`~training.deployment.TransportConfig`:
the run file's model, data, strategy and DP, or the ``synthetic`` workload); ``clients`` virtual SuperNodes run
the ClientApp, one more is the key holder (CKKS, packed). All virtual nodes share one Ray actor, so each node's
masking keys stay in one process for the whole round (and nothing is run concurrently on a 2-core machine). The
outputs are those of ``secagg run``: ``metrics.jsonl``, ``loss.png``/``epsilon.png`` and the final table.
"""

from __future__ import annotations

import functools
import os
import secrets
from pathlib import Path
from typing import Any

from training.errors import ConfigError
from training.flower.client import make_client_app
from training.flower.protocol import Trust
from training.flower.server import make_server_app
from training.deployment import TransportConfig
from training.services.workloads import make_workload

__all__ = ["simulate", "settings_of"]


def settings_of(cfg: TransportConfig) -> dict[str, Any]:
    """The public settings every party of a Flower run shares."""
    return {"run": secrets.token_hex(8), "scheme": cfg.scheme, "scheme_options": cfg.scheme_options(), "clients": cfg.clients,
            "rounds": cfg.rounds, "cohort_size": cfg.cohort_size, "min_clients": cfg.min_cohort,
            "trainer": cfg.trainer, "noise_multiplier": cfg.noise_multiplier, "part_chunks": cfg.part_chunks,
            "masking": {k: getattr(cfg, k) for k in ("neighbors", "threshold", "share_dropouts", "max_corrupt")}}


def simulate(cfg: TransportConfig, *, timeout: float = 300.0, mods: tuple = (),
             settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``cfg`` on Flower's simulation runtime (``mods``: Flower client mods on every node; ``settings``
    added to the shared ones, e.g. ``spool``: where clients keep the parts of a streamed contribution, default
    the temp directory); ``rows`` (one metrics row per attempt), ``initial_loss``, the final ``model``,
    ``server_cpu_seconds`` per round and ``parts`` (contribution parts asked for). Raises what the ServerApp
    raised."""
    try:
        from flwr.simulation import run_simulation
    except ImportError as exc:
        raise ConfigError("Flower is not installed: pip install 'secagg[flower]'") from exc
    import logging
    import warnings

    settings, trust = settings_of(cfg) | (settings or {}), Trust.generate(cfg.clients)
    workload = functools.partial(make_workload, cfg)
    result: dict[str, Any] = {}
    nodes = cfg.clients + (1 if cfg.scheme in ("ckks", "packed") else 0)
    cpus = max(1, os.cpu_count() or 1)
    backend = {"client_resources": {"num_cpus": cpus, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "log_to_driver": False, "logging_level": logging.ERROR}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(make_server_app(settings, trust, workload, result, timeout=timeout),
                       make_client_app(settings, trust, workload, mods), num_supernodes=nodes, backend_config=backend)
    if "model" not in result:
        raise RuntimeError("the Flower run ended before its last round (see the log above)")
    return result


def write_outputs(result: dict[str, Any], out: str | Path) -> str:
    """``metrics.jsonl``, the plots and the final table (returned) under ``out``, as ``secagg run`` writes them."""
    from training.inprocess.report import final_table, plot, write_metrics

    out = Path(out)
    rows = [r for r in result["rows"] if r.status == "done"]
    write_metrics(result["rows"], out / "metrics.jsonl", result["initial_loss"])
    plot(rows, out, result["initial_loss"])
    return final_table(rows, result["initial_loss"])
