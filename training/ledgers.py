"""Where each driver keeps its clients' durable privacy ledgers, and ``secagg budget show``.

Location (``[dp] ledger`` wins everywhere): ``<out>/ledger/`` for ``secagg run``, ``demo`` and ``up`` (re-running
with the same ``--out`` continues every client's budget); the user's state directory
(``platformdirs.user_state_dir("secagg")/ledger``) for a standalone ``secagg client run`` and a Flower SuperNode.
The ledger itself is :class:`privacy.durable.ClientLedger`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

__all__ = ["RELATION", "default_ledger_dir", "state_ledger_dir", "mount"]

# Every driver announces a client's example count N_i at check-in (the public FedAvg/gradient weight, and the
# cohort bookkeeping of every rule), so its ε holds for neighbouring data sets of equal size only: replace-one.
RELATION = "replace-one"


def state_ledger_dir() -> Path:
    """The user's state directory for ledgers (a standalone client, a Flower SuperNode)."""
    import platformdirs

    return Path(platformdirs.user_state_dir("secagg")) / "ledger"


def default_ledger_dir(configured: str | None, out: str | Path | None) -> Path:
    """``configured`` if set, else ``<out>/ledger`` if the driver has an out dir, else :func:`state_ledger_dir`."""
    if configured:
        return Path(configured).expanduser()
    return Path(out) / "ledger" if out is not None else state_ledger_dir()


def _fmt(v: float | None) -> str:
    return "none" if v is None else f"{v:.4g}"


def show(path: Path, as_json: bool = typer.Option(False, "--json", help="one JSON object per line")) -> None:
    """Each client's privacy spent, from a ledger file, a ledger directory or an out dir."""
    from privacy.durable import read_ledgers
    from privacy.errors import PrivacyError

    try:
        rows = read_ledgers(path)
    except PrivacyError as e:
        typer.echo(f"error: {type(e).__name__}: {e}", err=True)
        raise typer.Exit(2) from None
    for r in rows:
        if as_json:
            typer.echo(json.dumps(r, sort_keys=True))
        else:
            typer.echo(f"{r['client']}: ε={r['epsilon']:.4g} of budget {_fmt(r['budget'])} at δ={r['delta']:g} "
                       f"({r['relation']}, {r['accountant']}, against {r['adversary']}), {r['releases']} releases, data {r['data'][:12]}, "
                       f"{r['path']}")


def mount(app: typer.Typer) -> None:
    """Add ``budget show`` to ``app``."""
    budget = typer.Typer(no_args_is_help=True, help="Clients' durable privacy ledgers.")
    budget.command("show")(show)
    app.add_typer(budget, name="budget")
