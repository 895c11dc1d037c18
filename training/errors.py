"""Errors raised by :mod:`training`.

    TrainingError
    ├── ConfigError        an impossible or unsafe option (unknown scheme, bad partition shares, bad TOML)
    ├── DataError          a corpus that is missing, empty or in an unknown layout
    ├── SessionError       the context manager used out of order (report twice, round of an unknown client)
    └── LaunchError        a process ``secagg up`` started failed (its own error line is in the message)

Errors from the layers below (``secagg.errors.SecAggError``, privacy budget refusals) propagate unchanged.
:func:`cli_app` makes every command line: a named error (any of these, ``SecAggError``,
``PrivacyError``, ``OSError``) becomes one line ``error: Type: message`` on stderr and exit status 2; the
traceback is printed only with ``secagg --verbose`` (or ``SECAGG_VERBOSE=1``, which child processes inherit).
"""

from __future__ import annotations

import os
import traceback

__all__ = ["TrainingError", "ConfigError", "DataError", "SessionError", "LaunchError", "cli_app", "error_line"]


class TrainingError(Exception):
    """Base class of every error raised by training."""


class ConfigError(TrainingError, ValueError):
    """An option that cannot work: unknown name, wrong type, out-of-range value."""


class DataError(TrainingError):
    """A corpus that cannot be loaded: missing files, unknown layout, nothing to train on."""


class SessionError(TrainingError):
    """The federated-round context manager was used out of protocol order."""


class LaunchError(TrainingError):
    """A child process of ``secagg up`` exited before it could serve: the message names the role, its exit
    status, its own error line and its log."""


def error_line(exc: BaseException) -> str:
    """The one line a command prints for a named error."""
    text = " ".join(str(exc).split()) or "(no message)"
    return f"error: {type(exc).__name__}: {text}"


def _named() -> tuple[type[BaseException], ...]:
    from privacy.errors import PrivacyError
    from secagg.errors import SecAggError

    return TrainingError, SecAggError, PrivacyError, OSError


def _group_class():
    from typer.core import TyperGroup

    class NamedErrors(TyperGroup):
        """A command group whose named errors end the command as :func:`error_line` with exit status 2."""

        def invoke(self, ctx):  # type: ignore[no-untyped-def]
            import click

            try:
                return super().invoke(ctx)
            except _named() as exc:
                if os.environ.get("SECAGG_VERBOSE") == "1":
                    traceback.print_exc()
                click.echo(error_line(exc), err=True)
                raise click.exceptions.Exit(2) from None

    return NamedErrors


def cli_app(**options: object):
    """A Typer app whose commands report named errors as one line and exit 2 (a traceback too only with
    ``SECAGG_VERBOSE=1``, which ``secagg --verbose`` sets and child processes inherit)."""
    import typer

    return typer.Typer(cls=_group_class(), add_completion=False, pretty_exceptions_enable=False, **options)
