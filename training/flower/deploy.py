"""The Flower driver deployed: a ServerApp and a ClientApp configured by ``flwr run``'s run config and each
SuperNode's node config, for ``flower-superlink``/``flower-supernode`` processes on separate machines.

Run config (the app's ``[tool.flwr.app.config]``, overridable with ``flwr run --run-config``): ``scheme``,
``aggregator``, ``clients``, ``rounds``, ``trainer`` (``synthetic``), ``dim``, ``seed``, ``clip``, ``config`` (a
run file, optional), ``certs`` (the ServerApp's public trust: ``ca.pem`` and the ``*.sign.pem``), ``out`` (where
the ServerApp writes ``metrics.jsonl``, ``model.npy`` and the final table) and ``timeout``.

Node config (``flower-supernode --node-config``): ``role='keyholder'`` or ``client-id=<i>``; ``certs`` (this
node's trust directory: ``ca.pem``, every ``*.sign.pem``, and its own ``.sign.key``); ``scheme`` and ``clients``,
pinned by the node's operator (the run config travels through the untrusted SuperLink: one that differs is
refused); optionally ``config``, the node's own run file (scheme options such as threshold and signing; model,
data and DP), and ``ledger``, the client's privacy-ledger directory (default: its run file's ``[dp] ledger``, else
the user's state directory; never the run config's word, or a server could point it at a fresh one). Nothing
secret travels with the app or the run config; each party's signing key stays on its node.

A SuperNode process lives for one message: a language-model client's DP history is its durable ledger on the
node's disk (every Flower run of that client continues it); its optimizer moments, shuffle generator and
unreported DP events are sealed in the node state with the rest (:class:`training.flower.client.NodeProcess`);
each message rebuilds the model from the run file.
"""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path
from typing import Any

import numpy as np

from secagg.errors import AuthenticationError, SecAggError
from secagg.roles import KEYHOLDER
from training.errors import ConfigError, TrainingError
from training.flower.client import _party, serve
from training.flower.protocol import MESSAGE_TYPE, Trust, pack
from training.flower.server import FlowerAggregator
from training.flower.sim import settings_of
from training.deployment import TransportConfig, load_transport_config
from training.services.workloads import make_workload

__all__ = ["server_app", "client_app", "config_of"]

PINNED = ("scheme", "clients")  # what a node takes from its own config, never from the server's
_KEYS = ("scheme", "aggregator", "clients", "rounds", "trainer", "dim", "seed", "clip", "rounding")


def config_of(run_config: dict[str, Any], node_config: dict[str, Any] | None = None) -> TransportConfig:
    """The deployment's configuration from Flower's run config (see the module docstring).

    ``node_config`` (a SuperNode's own): the run config comes through the untrusted SuperLink, so a node takes
    the parameters its guarantee rests on (:data:`PINNED`) from its own config and refuses a run config that
    differs; a node's run file is its own ``config`` (a run config's path is never read by a node)."""
    if node_config is not None:
        missing = [k for k in PINNED if k not in node_config]
        if missing:
            raise ConfigError(f"a SuperNode pins {missing} in its --node-config (the run config is the server's)")
        differ = {k: (run_config.get(k), node_config[k]) for k in PINNED
                  if k in run_config and run_config[k] != node_config[k]}
        if differ:
            raise AuthenticationError(f"the run config asks for {differ} (run, this node): refused")
        run_config = dict(run_config) | {k: node_config[k] for k in PINNED} | {"config": node_config.get("config")}
    path = run_config.get("config") or None
    cfg = load_transport_config(path, **{k: run_config.get(k) for k in _KEYS}).validate()
    if node_config is not None and node_config.get("ledger"):  # the node's own word only: a server that named
        cfg = dataclasses.replace(cfg, ledger=str(node_config["ledger"]))  # a fresh path would reset budgets
    if node_config is not None and cfg.trainer == "local" and not path:
        raise ConfigError("a language-model node trains under its own run file (config='<run.toml>' in its "
                          "--node-config: model, data, DP); the server's run config cannot set them")
    return cfg


def _settings(cfg: TransportConfig, run_id: int) -> dict[str, Any]:
    return settings_of(cfg) | {"run": f"flower-run-{run_id}"}  # every party derives the same settings


def _certs(config: dict[str, Any], where: str) -> str:
    certs = config.get("certs")
    if not isinstance(certs, str) or not certs:
        raise ConfigError(f"the {where} config names no trust directory (certs = '<secagg certs init dir>')")
    return certs


def server_app():
    """The ServerApp: the untrusted aggregator; public trust only (``certs`` in the run config)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        rc = dict(context.run_config)
        cfg = config_of(rc)
        trust = Trust.from_certs(_certs(rc, "run"), cfg.clients)
        agg = FlowerAggregator(grid, _settings(cfg, context.run_id), trust, make_workload(cfg),
                               timeout=float(rc.get("timeout", 120.0)))
        rows = agg.run()
        out = Path(str(rc.get("out") or "runs/flower-deploy"))
        out.mkdir(parents=True, exist_ok=True)
        from training.flower.sim import write_outputs

        table = write_outputs({"rows": rows, "initial_loss": agg.initial_loss}, out)
        np.save(out / "model.npy", agg.engine.state.model)
        (out / "config.json").write_text(json.dumps(rc | {"run_id": context.run_id}, indent=2, default=str))
        print(table)

    return app


def client_app():
    """The ClientApp of every SuperNode: a client or the key holder, by its node config."""
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.query(MESSAGE_TYPE.split(".", 1)[1])
    def handle(msg, context):
        from flwr.app import Message

        try:
            cfg = config_of(dict(context.run_config), dict(context.node_config))
            settings = _settings(cfg, context.run_id)
            party = _party(settings, context.node_config)
            trust = Trust.from_certs(_certs(dict(context.node_config), "node"), cfg.clients,
                                     own=KEYHOLDER if party == KEYHOLDER else party)
        except (SecAggError, TrainingError) as exc:  # this node will not serve this run: say why, hold nothing
            return Message(pack("refused", {"error": type(exc).__name__, "reason": str(exc)}), reply_to=msg)
        return serve(settings, trust, lambda: make_workload(cfg), msg, context)

    return app
