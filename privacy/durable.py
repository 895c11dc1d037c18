"""The client's durable privacy ledger: the authority on what its data has released, on its own disk.

:class:`ClientLedger` is a :class:`~privacy.ledger.PrivacyLedger` kept in one JSON file per client identity. It
is keyed by the client's identity and a fingerprint of its data, not by run, so every driver and every restart
continues one budget. Invariants:

* **write-ahead**: :meth:`ClientLedger.spend_events` returns only after the new record is durable (written to a
  temp file, fsync'd, atomically renamed over the ledger, directory fsync'd); callers release data-dependent
  output only after it returns, so a crash can over-count, never under-count;
* **one writer at a time**: every spend takes an exclusive ``flock`` on ``<file>.lock``, re-reads the file and
  checks the budget against what is on disk (two processes of one client cannot both spend the last ε);
* **never a silent reset**: a ledger that does not decode, is truncated or fails its checksum raises
  :class:`~privacy.errors.LedgerFormatError`; one of another client or data set, or written with another δ,
  budget, accountant or neighbouring relation raises :class:`~privacy.errors.LedgerMismatchError`. Both say what
  to do and leave the file as it is. Only a missing file starts at ε = 0;
* **against whom**: ``adversary`` (default :data:`ANYONE`: every release is noised on the client itself) is a
  term like the others, with one exception: a ledger against anyone may continue as one against a weaker
  adversary (e.g. the server and c colluders under a secure sum, :mod:`privacy.placement`), because its
  releases hold against that one too; the file is then stamped with the new adversary at the next spend and
  never goes back.

Written here because no maintained library keeps a DP budget on disk; the ε itself comes from ``dp_accounting``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from privacy.accounting import Accountant, Relation
from privacy.errors import ConfigurationError, LedgerFormatError, LedgerMismatchError
from privacy.events import PrivacyEvent
from privacy.ledger import PrivacyLedger

__all__ = ["ClientLedger", "FORMAT", "ANYONE", "ledger_file", "read_ledgers", "summary"]

FORMAT, VERSION = "secagg-privacy-ledger", 2
ANYONE = "anyone"  # the adversary of a ledger whose every release was noised on the client itself
MAX_BYTES = 64 << 20  # a ledger is a few KB per thousand rounds; anything this large is not one
_NAME = re.compile(r"[^A-Za-z0-9._-]")


def ledger_file(directory: str | Path, client: str) -> Path:
    """The ledger file of ``client`` inside ``directory``."""
    if not isinstance(client, str) or not client or len(client) > 200:
        raise ConfigurationError(f"a client identity is a non-empty string of at most 200 characters: {client!r}")
    return Path(directory) / (_NAME.sub("_", client) + ".json")


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _read(path: Path) -> dict[str, Any]:
    """The validated body of the ledger file at ``path`` (LedgerFormatError if it is not one)."""
    advice = (f"the ledger {path} records ε already spent and cannot be read: restore it from a backup; secagg "
              "will not start a fresh budget over it")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise LedgerFormatError(f"{advice} (it is over {MAX_BYTES} bytes)")
        d = json.loads(path.read_bytes())
    except LedgerFormatError:
        raise
    except (OSError, ValueError) as exc:
        raise LedgerFormatError(f"{advice} ({exc})") from exc
    if not isinstance(d, dict) or d.get("format") != FORMAT or d.get("version") != VERSION:
        raise LedgerFormatError(f"{advice} (not a {FORMAT} v{VERSION} file)")
    body = {k: v for k, v in d.items() if k != "checksum"}
    if d.get("checksum") != _checksum(body):
        raise LedgerFormatError(f"{advice} (its checksum does not match: edited or damaged)")
    return d


def _mismatch(path: Path, what: str, on_disk: object, configured: object) -> LedgerMismatchError:
    return LedgerMismatchError(
        f"the ledger {path} was written for {what}={on_disk!r}, but this client runs with {what}={configured!r}. "
        f"A ledger's {what} is fixed for its life: run with {what}={on_disk!r}, or, if this is deliberately "
        "another privacy unit, point [dp] ledger at a new path. Nothing was changed.")


class ClientLedger(PrivacyLedger):
    """The durable ledger of ``client`` (whose data has fingerprint ``data``) at ``path`` (see the module).

    :meth:`spend_events` (and :meth:`spend`) write ahead; :attr:`releases` lists every recorded release with the
    label it was spent under. The in-memory view is refreshed from disk on every spend and by :meth:`refresh`.
    """

    def __init__(self, path: str | Path, *, client: str, data: str, epsilon_budget: float | None, delta: float,
                 accountant: Accountant = "prv", relation: Relation = "add-remove", adversary: str = ANYONE) -> None:
        super().__init__(epsilon_budget, delta, accountant, relation)
        if not isinstance(adversary, str) or not adversary or len(adversary) > 200:
            raise ConfigurationError(f"adversary must be a non-empty string of at most 200 characters: {adversary!r}")
        self.adversary = adversary
        if not isinstance(data, str) or not data:
            raise ConfigurationError("a ledger needs the fingerprint of the client's data")
        ledger_file(".", client)  # validates the identity
        self.path, self.client, self.data = Path(path), client, data
        self._releases: list[dict[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._load()

    # -- disk --------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _terms(self) -> dict[str, Any]:
        terms = {"client": self.client, "data": self.data, "delta": self.delta, "epsilon_budget": self.epsilon_budget,
                 "accountant": self.accountant, "relation": self.relation}
        return terms if self.adversary == ANYONE else {**terms, "adversary": self.adversary}

    def _load(self) -> None:
        if not self.path.exists():
            self._releases, self._events, self._spent = [], [], 0.0
            return
        d = _read(self.path)
        on_disk = d.get("adversary", ANYONE)
        if on_disk != self.adversary and on_disk != ANYONE:
            raise _mismatch(self.path, "adversary", on_disk, self.adversary)
        for key, want in self._terms().items():
            if key != "adversary" and d.get(key) != want:
                raise _mismatch(self.path, key, d.get(key), want)
        self._releases, self._spent = _decode(self.path, d)
        self._events = [e for r in self._releases for e in r["events"]]

    def _write(self) -> None:
        body = {"format": FORMAT, "version": VERSION, **self._terms(), "spent": self._spent,
                "releases": [{"what": r["what"], "events": [e.to_dict() for e in r["events"]]}
                             for r in self._releases]}
        text = json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True, indent=1)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    # -- the ledger interface ----------------------------------------------------------------------------------
    def refresh(self) -> ClientLedger:
        """Re-read the file (another process of this client may have spent)."""
        with self._locked():
            self._load()
        return self

    @property
    def releases(self) -> tuple[dict[str, Any], ...]:
        """Every recorded release as {"what": label, "events": [...]}, in order."""
        return tuple(self._releases)

    def spend_events(self, events: Iterable[PrivacyEvent], what: str = "release") -> float:
        """Lock, re-read, check the budget against the disk, then record ``events`` durably before returning the
        new ε. On refusal (BudgetExceededError) nothing is written."""
        events = [e for e in events if e.steps]
        with self._locked():
            self._load()
            after = self.check_events(events)
            if not events:
                return self._spent
            self._releases.append({"what": str(what)[:200], "events": events})
            self._events.extend(events)
            self._spent = after
            try:
                self._write()
            except BaseException:
                self._load()  # the disk is the truth: forget what did not reach it
                raise
        return after

    def summary(self) -> dict[str, Any]:
        return summary(self.path)


def _decode(path: Path, d: dict[str, Any]) -> tuple[list[dict[str, Any]], float]:
    """(releases, spent) of a checksummed ledger body, its terms valid and its ε recomputed."""
    try:
        releases = [{"what": str(r["what"]), "events": [PrivacyEvent.from_dict(e) for e in r["events"]]}
                    for r in d["releases"]]
        terms = PrivacyLedger(d["epsilon_budget"], d["delta"], d["accountant"], d["relation"])
        if not isinstance(d["client"], str) or not isinstance(d["data"], str):
            raise TypeError("client and data must be strings")
    except (KeyError, TypeError, ValueError) as exc:
        raise LedgerFormatError(f"the ledger {path} holds malformed terms or releases ({exc})") from exc
    spent = terms.epsilon_if([e for r in releases for e in r["events"]])
    if abs(spent - float(d.get("spent", -1.0))) > 1e-6 * max(1.0, spent):
        raise LedgerFormatError(f"the ledger {path} says spent={d.get('spent')!r} but its releases compose to "
                                f"{spent!r}: restore it from a backup")
    return releases, spent


def summary(path: str | Path) -> dict[str, Any]:
    """One ledger file as {client, epsilon, delta, budget, releases, relation, accountant, adversary, data, path},
    its checksum and composition verified (read only: no lock is taken, nothing is written)."""
    path = Path(path)
    d = _read(path)
    releases, spent = _decode(path, d)
    return {"client": d["client"], "epsilon": spent, "delta": d["delta"], "budget": d["epsilon_budget"],
            "releases": len(releases), "relation": d["relation"], "accountant": d["accountant"],
            "adversary": str(d.get("adversary", ANYONE)),
            "data": d["data"], "path": str(path)}


def read_ledgers(path: str | Path) -> list[dict[str, Any]]:
    """:func:`summary` of every ledger at ``path``: a ledger file, a ledger directory, or an out dir (its
    ``ledger/`` directory). ConfigurationError if there is none."""
    path = Path(path)
    if path.is_file():
        return [summary(path)]
    d = path / "ledger" if (path / "ledger").is_dir() else path  # an out dir, else a ledger directory
    files = sorted(f for f in d.glob("*.json") if not f.name.startswith(".")) if d.is_dir() else []
    if files:
        return [summary(f) for f in files]
    raise ConfigurationError(f"no privacy ledger at {path} (a ledger file, a ledger directory or an out dir)")
