"""``secagg`` sub-commands for the networked deployment (mounted by :mod:`training.cli`; also
``python -m training.services.cli``)::

    certs init DIR --clients N          CA + aggregator, keyholder, client-0..N-1 certificates
    keyholder serve                     CKKS/packed key holder (decrypts aggregates from the aggregator only)
    aggregator serve [--keyholder H:P]  runs the rounds, checkpoints after each, resumes after a restart
    client run --id N [--aggregator H:P]  one client (its identity comes from certs/client-N.pem)
    up --clients N --rounds R           every role as its own process on 127.0.0.1, end to end
       [--scheme S] [--aggregator A]

Every command takes ``--config run.toml`` (the ``secagg run`` file; deployment settings in ``[transport]``) and
flags that override it. Addresses default to ``[transport] host`` with ``aggregator_port``/``keyholder_port`` when
those are fixed (non-zero) in the file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Optional

import typer

from training.errors import ConfigError, TrainingError, cli_app
from training.deployment import TransportConfig, load_transport_config

app = cli_app(no_args_is_help=True, help="Networked deployment over gRPC with mTLS.")
certs_app = typer.Typer(no_args_is_help=True, help="Certificates for mutual TLS.")
keyholder_app = typer.Typer(no_args_is_help=True, help="The key holder (ckks, packed).")
aggregator_app = typer.Typer(no_args_is_help=True, help="The aggregator.")
client_app = typer.Typer(no_args_is_help=True, help="A client.")
app.add_typer(certs_app, name="certs")
app.add_typer(keyholder_app, name="keyholder")
app.add_typer(aggregator_app, name="aggregator")
app.add_typer(client_app, name="client")

ConfigOpt = typer.Option(None, "--config", help="TOML run file (\\[federation], \\[train], \\[transport])")
ResolvedOpt = typer.Option(None, "--resolved", hidden=True, help="JSON of a resolved TransportConfig (from `up`)")


def _cfg(config: Optional[Path], resolved: Optional[Path] = None, **overrides) -> TransportConfig:
    try:
        if resolved is not None:
            cfg = TransportConfig(**json.loads(resolved.read_text())).validate()
            return dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None}).validate()
        return load_transport_config(config, **overrides)
    except TrainingError:
        raise
    except (TypeError, ValueError, OSError) as e:
        raise ConfigError(f"transport settings {resolved or config}: {e}") from e


def _address(flag: Optional[str], cfg: TransportConfig, port: int, what: str, needed: bool) -> Optional[str]:
    """``flag``, else the config's ``host:port`` when the port is fixed; exit 2 when needed and unknown."""
    if flag:
        return flag
    if port:
        return f"{cfg.host}:{port}"
    if needed:
        raise ConfigError(f"give --{what} HOST:PORT or set [transport] {what}_port in the config")
    return None


def _logging(role: str, verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format=f"%(asctime)s {role} %(levelname)s %(message)s")


@certs_app.command("init")
def certs_init(directory: Path = typer.Argument(..., help="output directory"),
               clients: Optional[int] = typer.Option(None, "--clients",
                                                     help="client certificates to issue (default: the config's)"),
               config: Optional[Path] = ConfigOpt) -> None:
    """Create a CA (reused if present) and per-role certificates."""
    from training.services.pki.certs import init_certs

    n = _cfg(config, None, clients=clients).clients
    init_certs(directory, n)
    typer.echo(f"wrote CA, aggregator, keyholder and client-0..{n - 1} certificates to {directory}")


@keyholder_app.command("serve")
def keyholder_serve(config: Optional[Path] = ConfigOpt, resolved: Optional[Path] = ResolvedOpt,
                    certs: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
                    port_file: Optional[str] = typer.Option(None), verbose: bool = typer.Option(True)) -> None:
    """Serve the public context and decrypt aggregates (only from the aggregator's certificate)."""
    from training.services.node import run_keyholder

    _logging("keyholder", verbose)
    run_keyholder(_cfg(config, resolved, certs=certs, keyholder_port=port), port_file=port_file)


@aggregator_app.command("serve")
def aggregator_serve(config: Optional[Path] = ConfigOpt, resolved: Optional[Path] = ResolvedOpt,
                     certs: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None),
                     port_file: Optional[str] = typer.Option(None),
                     keyholder: Optional[str] = typer.Option(None, help="HOST:PORT of the key holder (ckks, packed)"),
                     checkpoint: Optional[str] = typer.Option(None, help="default: OUT/aggregator.ckpt"),
                     scheme: Optional[str] = typer.Option(None), rounds: Optional[int] = typer.Option(None),
                     clients: Optional[int] = typer.Option(None), out: Optional[str] = typer.Option(None),
                     exit_after_rounds: Optional[int] = typer.Option(None, hidden=True,
                                                                     help="fault injection: crash after K rounds"),
                     verbose: bool = typer.Option(True)) -> None:
    """Run the federation's rounds; resumes from the checkpoint if one exists."""
    from training.services.node import run_aggregator

    _logging("aggregator", verbose)
    cfg = _cfg(config, resolved, certs=certs, aggregator_port=port, scheme=scheme, rounds=rounds, clients=clients,
               out=out)
    keyholder = _address(keyholder, cfg, cfg.keyholder_port, "keyholder", cfg.scheme in ("ckks", "packed"))
    state = run_aggregator(cfg, checkpoint=checkpoint or str(Path(cfg.out) / "aggregator.ckpt"),
                           keyholder=keyholder, port_file=port_file, exit_after_rounds=exit_after_rounds)
    typer.echo(f"aggregator: {state.round} rounds applied")


@client_app.command("run")
def client_run(client_id: int = typer.Option(..., "--id", help="this client's id (its certificate client-ID)"),
               aggregator: Optional[str] = typer.Option(None, help="HOST:PORT of the aggregator"),
               keyholder: Optional[str] = typer.Option(None, help="HOST:PORT of the key holder (ckks, packed)"),
               config: Optional[Path] = ConfigOpt, resolved: Optional[Path] = ResolvedOpt,
               certs: Optional[str] = typer.Option(None), scheme: Optional[str] = typer.Option(None),
               exit_after: Optional[int] = typer.Option(None, hidden=True,
                                                        help="fault injection: crash after K messages"),
               aggregator_port_file: Optional[str] = typer.Option(None, hidden=True),
               keyholder_port_file: Optional[str] = typer.Option(None, hidden=True),
               ledger: Optional[str] = typer.Option(None, help="this client's privacy-ledger directory (default: "
                                                    "[dp] ledger, else the user's state directory)"),
               verbose: bool = typer.Option(False)) -> None:
    """Join the federation as client ``--id`` and take part until it finishes (or until its privacy budget
    cannot afford another round: it then withdraws and exits with status 3)."""
    from privacy.errors import BudgetExceededError
    from training.services.node import run_client

    _logging(f"client-{client_id}", verbose)
    cfg = _cfg(config, resolved, certs=certs, scheme=scheme, ledger=ledger)
    aggregator = _address(aggregator, cfg, cfg.aggregator_port, "aggregator", aggregator_port_file is None)
    keyholder = _address(keyholder, cfg, cfg.keyholder_port, "keyholder",
                         cfg.scheme in ("ckks", "packed") and keyholder_port_file is None)
    try:
        done = run_client(cfg, client_id, aggregator=aggregator, keyholder=keyholder, exit_after=exit_after,
                          aggregator_port_file=aggregator_port_file, keyholder_port_file=keyholder_port_file)
    except BudgetExceededError as e:
        typer.echo(f"client-{client_id}: withdrew: BudgetExceededError: {e}", err=True)
        raise typer.Exit(3) from None
    typer.echo(f"client-{client_id}: {done} rounds")


@app.command("up")
def up(clients: Optional[int] = typer.Option(None, "--clients", help="default: the run file's (as `secagg run`)"),
       rounds: Optional[int] = typer.Option(None, "--rounds", help="default: the run file's (as `secagg run`)"),
       config: Optional[Path] = ConfigOpt, scheme: Optional[str] = typer.Option(None),
       aggregator: Optional[str] = typer.Option(None, help="fedavg | loss-weighted | gradient | async "
                                                             "(default: the run file's)"),
       trainer: Optional[str] = typer.Option(None, help="local (default: the run file's model) | synthetic"),
       dim: Optional[int] = typer.Option(None, help="model size of the synthetic trainer"),
       out: Optional[Path] = typer.Option(None, "--out", help="default: \\[transport] out (runs/transport)"),
       timeout: float = typer.Option(600.0, help="give up (and stop every process) after this many seconds")) -> None:
    """Start the key holder (ckks, packed), the aggregator and N clients as separate processes and run R rounds.

    Exit status: 0 all R rounds applied; 3 the federation stopped cleanly because too few clients could afford
    another round (their privacy budgets; see ``secagg budget show OUT``); 1 anything else short of R rounds."""
    from training.services.launcher import launch

    cfg = _cfg(config, None, clients=clients, rounds=rounds, scheme=scheme, aggregator=aggregator, trainer=trainer,
               dim=dim, out=None if out is None else str(out))
    cfg = dataclasses.replace(cfg, certs=str(Path(cfg.out) / "certs"))  # a fresh federation gets a fresh PKI
    rows = launch(cfg, timeout=timeout, echo=typer.echo)
    if sum(r.get("status") == "done" for r in rows) < cfg.rounds:
        status = Path(cfg.out) / "aggregator.status.json"
        stopped = status.exists() and json.loads(status.read_text()).get("stop_reason")
        raise typer.Exit(3 if stopped else 1)


def mount(parent: typer.Typer) -> None:
    """Add these commands at the top level of ``parent`` (``secagg up``, ``secagg certs init``, ...)."""
    parent.registered_commands.extend(app.registered_commands)
    parent.registered_groups.extend(app.registered_groups)


if __name__ == "__main__":  # a child of `secagg up`: traceback and then its error line, in its log
    os.environ["SECAGG_VERBOSE"] = "1"
    app()
