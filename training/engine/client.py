"""A client's side of the engine, sans I/O: what it says at check-in, how it answers a task, its role.

Every networked client driver (the gRPC agent, the Flower ClientApp) keeps one :class:`ClientSession` per client
identity and does only the I/O. Invariants:

* DP events of the source's training are reported under one report id until a check-in is acknowledged (a
  re-send is recognised by the engine and composed once);
* a task is used only if its round id matches its parameters and the cohort includes this client; the model must
  be a finite vector of the announced size; an asynchronous update joins one round at most, and only a task that
  states the version it was trained from;
* a model is trained on only after :class:`~training.engine.audit.ModelAudit` accepted it (when the driver gave
  the session one): it must follow from the key holder's signed sums under the rule;
* the contribution is the engine's one :func:`~training.engine.contribution.contribute` (through the source), and
  the role is built from the task's public parameters by the one factory (:mod:`training.engine.roles`).
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np

from secagg.encoding import validate_update
from secagg.errors import ConfigurationError, MalformedMessageError
from secagg.roles import ClientRole
from training.engine.audit import ModelAudit
from training.engine.codec import field
from training.engine.roles import Scheme
from training.workload.client_update import ClientUpdate

__all__ = ["ClientSession", "contribution"]


def contribution(source, model: np.ndarray, round_no: int, terms: dict) -> tuple[np.ndarray, float]:
    """The (vector, weight) ``source`` submits in a round with public strategy ``terms``."""
    contribute = getattr(source, "contribute", None)
    if contribute is not None:
        vector, weight = contribute(model, round_no, terms)
        return vector, float(weight)
    if terms.get("private_weights"):
        raise ConfigurationError("the round asks for private weights; this client's update source has public "
                                 "weights only")
    return source.compute(model, round_no), float(source.weight)


class ClientSession:
    """Client ``client_id`` of ``scheme`` with its update ``source`` (a :mod:`training.services.workloads` source)."""

    def __init__(self, client_id: int, scheme: Scheme, source) -> None:
        self.client_id, self.scheme, self.source = client_id, scheme, source
        self.report: tuple[str, list[dict]] | None = None  # DP events sent but not yet acknowledged
        self.trained: ClientUpdate | None = None  # asynchronous rounds: trained, waiting for a buffer
        self.sessions: set[bytes] = set()  # masking sessions (round nonces) this client took part in
        self.retired: Exception | None = None  # why this client withdrew for good (sent with its last check-in)
        self.tag_key: bytes | None = None  # HE schemes: the key holder's tag key, granted to this client alone
        self.audit: ModelAudit | None = None  # checks every model it is sent (the driver sets it up)

    def checkin(self) -> dict[str, Any]:
        """The check-in header: public weight, pending privacy report, base version of a trained update, the
        source's distributed-placement report (exposed ε and adversary, for the aggregator's metrics); and,
        when the source's ledger cannot afford its next round (``source.ready()`` raises BudgetExceededError),
        ``retire`` with the reason: the client then takes no task and the driver raises :attr:`retired` once
        the check-in is answered (its last privacy report delivered)."""
        from privacy.errors import BudgetExceededError

        ready = getattr(self.source, "ready", None)
        if ready is not None and self.trained is None:
            try:
                ready()
            except BudgetExceededError as e:
                self.retired = e
        header: dict[str, Any] = {"client_id": self.client_id, "weight": float(self.source.weight)}
        header |= self.report_header()
        if self.trained is not None:
            header["base"] = self.trained.base_version
        if self.audit is not None and self.audit.version is not None:
            header["verified"] = self.audit.version
        if self.retired is not None:
            header["retire"] = f"{type(self.retired).__name__}: {self.retired}"
        placement = getattr(self.source, "placement_report", lambda: {})()
        if placement:  # distributed placement: the exposed ε and the adversary, for the aggregator's rows
            header["placement"] = placement
        return header

    def report_header(self) -> dict[str, Any]:
        """The pending privacy report as header fields (``report``, ``privacy``; {} when none): the source's DP
        events since the last acknowledged report, under one id. Sent with the check-in and with a round's first
        message (so the round's metrics count its training); pending until a check-in is acknowledged, and a
        re-sent id is composed once."""
        if self.report is None and getattr(self.source, "events", ()):
            self.report = (secrets.token_hex(8), [e.to_dict() for e in self.source.events])
            self.source.events = ()  # pending in self.report until acknowledged
        return {} if self.report is None else {"report": self.report[0], "privacy": self.report[1]}

    def acknowledged(self) -> None:
        """The aggregator answered the check-in: its checkpointed ledger holds the report."""
        self.report = None

    def on_model(self, version: int, model: np.ndarray, proofs: list | None = None,
                 context: bytes | None = None) -> None:
        """Asynchronous mode: train on the model version the aggregator sent (kept until a buffer takes it),
        once the audit accepts it (``proofs``, checked against the key holder's public ``context``)."""
        if not isinstance(version, int) or version < 0:
            raise MalformedMessageError("the model reply has a bad version")
        model = validate_update(np.asarray(model, dtype=np.float64))
        if self.audit is not None:
            self.audit.check(version, model, proofs, context)
        train = getattr(self.source, "update", None)
        if train is None:
            raise ConfigurationError("an asynchronous strategy needs an update source that trains (update) and "
                                     "encodes (encode) separately")
        self.trained = train(model.copy(), version)

    def on_task(self, header: dict, model: np.ndarray | None,
                context: bytes | None = None) -> tuple[int, dict, np.ndarray, float]:
        """Validate a task; (round id, its parameters, this client's vector and weight). ``model`` is None for
        an asynchronous task (members trained already); a model is used only once the audit accepts it
        (``context``: the key holder's public bundle this client trusts)."""
        trained, self.trained = self.trained, None  # an asynchronous update joins one round at most
        round_id = field(header, "round_id", int)
        params = field(header, "params", dict)
        if field(params, "round_id", int) != round_id or self.client_id not in field(params, "cohort", list):
            raise MalformedMessageError("task does not match its round or does not include this client")
        dim = field(params, "dim", int)
        terms = field(params, "strategy", dict, {})
        round_no = field(header, "round", int)
        if trained is not None:  # asynchronous: trained already, the task carries no model
            if model is not None or trained.delta.size != dim:
                raise MalformedMessageError("an asynchronous task carries no model, and this update has another size")
            if field(terms, "base_versions", dict, {}).get(str(self.client_id)) != trained.base_version:
                raise MalformedMessageError("the task misstates the version this client's update was trained from")
            vector, weight = self.source.encode(trained, round_no, terms)
        else:
            if model is None:
                raise MalformedMessageError("a task for a client without a trained update must carry the model")
            model = validate_update(np.asarray(model, dtype=np.float64), dim)
            if self.audit is not None:
                proofs = header.get("proofs")
                self.audit.check(round_no, model, proofs if isinstance(proofs, list) else None, context)
            kept = self.audit is not None and self.audit.model is not None  # the audit's replica: not the source's
            vector, weight = contribution(self.source, model.copy() if kept else model, round_no, terms)
        return round_id, params, validate_update(np.asarray(vector), dim), float(weight)

    def role(self, params: dict, context: object, signer=None, peers=None) -> ClientRole:
        """This client's role for the task's ``params`` (``peers``: verified keys of a signed cohort; the
        source's own ``integer_noise``, if any, for a scheme that adds integer noise in the role)."""
        return self.scheme.client_role(self.client_id, params, context, signer, peers, sessions=self.sessions,
                                       noise=getattr(self.source, "integer_noise", None), tag_key=self.tag_key)
