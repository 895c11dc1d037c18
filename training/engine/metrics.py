"""The one ``metrics.jsonl`` schema: every driver writes one :class:`RoundMetrics` per attempt.

A row holds the engine's :class:`~training.engine.rounds.RoundRecord` of the attempt (ids, status, cohort,
contributors, dropouts, staleness, bytes) plus what the driver measured or evaluated after it: the global
validation loss (``None`` for an aborted attempt), ε, and times. Fields a driver cannot know are ``None`` (a
networked aggregator has no modelled cross-cloud time; a simulation has no real network).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from collections.abc import Mapping

from secagg.errors import MalformedMessageError
from training.engine.rounds import RoundRecord

__all__ = ["RoundMetrics", "metrics_of", "RECORD_RELATION", "CLIENT_RELATION", "placement_report", "placement_of"]

# The example counts N_i are public (check-in weights), so a record-level ε holds for replace-one neighbours only;
# the central ε of distributed DP is client-level: one client's clipped update in the sum or not (add-remove).
RECORD_RELATION = "replace-one record"
CLIENT_RELATION = "add-remove client"


@dataclass
class RoundMetrics:
    """One line of ``metrics.jsonl``.

    Times: ``seconds`` is the measured wall time of the step on this machine; ``compute_seconds`` the measured
    local training summed over clients (in-process); ``secure_seconds`` the secure round; ``comm_seconds_per_client``
    each cloud's modelled transfer time; ``modelled_seconds`` the slowest cloud's compute / speed + transfer, plus
    the secure round; ``sim_time`` the modelled clock at the end of the step. Bytes: ``bytes_down`` includes the
    tasks and models sent; ``keyholder_bytes`` is the aggregator <-> key holder traffic.
    """

    round: int
    loss: float | None
    perplexity: float | None
    epsilon: float | None
    epsilon_per_client: dict[int, float | None]
    bytes_up: int
    bytes_down: int
    bytes_up_per_client: dict[int, int]
    bytes_down_per_client: dict[int, int]
    seconds: float
    compute_seconds: float | None
    secure_seconds: float
    modelled_seconds: float | None
    sim_time: float | None
    contributors: list[int]
    dropped: list[int]
    staleness: dict[int, int]
    comm_seconds_per_client: dict[int, float] = field(default_factory=dict)
    epsilon_relation: str | None = None  # the neighbouring relation of ``epsilon`` (record-level, per client)
    exposed_epsilon_per_client: dict[int, float | None] = field(default_factory=dict)  # distributed placement:
    # this run's releases if the secure sum were broken (each carries only the client's own share σ/√(n − c))
    central_epsilon: float | None = None  # distributed DP: client-level ε of every sum released so far, ...
    colluders: int | None = None  # ... against this many clients colluding with the server (their shares known)
    central_relation: str | None = None  # ... for this relation (one client's update present or absent)
    round_id: int | None = None
    status: str = "done"
    cohort: list[int] = field(default_factory=list)
    keyholder_bytes: int = 0
    reason: str = ""

    def as_json(self) -> dict:
        return asdict(self)


def metrics_of(rec: RoundRecord, *, loss: float | None, epsilon_per_client: dict[int, float | None],
               language_model: bool = True, **measured) -> RoundMetrics:
    """The row of attempt ``rec``: ``round`` counts applied rounds (an aborted attempt keeps the last one);
    ``measured`` gives the driver's times and per-client bytes (defaults: the record's)."""
    known = [e for e in epsilon_per_client.values() if e is not None]
    res = rec.result
    done = rec.status == "done"
    row = dict(round=rec.round + 1 if done else rec.round, loss=loss,
               perplexity=math.exp(min(loss, 50.0)) if loss is not None and language_model else None,
               epsilon=max(known) if known else None, epsilon_per_client=dict(epsilon_per_client),
               epsilon_relation=RECORD_RELATION if known else None,
               bytes_up=rec.bytes_up, bytes_down=rec.bytes_down + rec.task_bytes,
               bytes_up_per_client=dict(rec.up), bytes_down_per_client=dict(rec.down), seconds=rec.seconds,
               compute_seconds=None, secure_seconds=rec.seconds, modelled_seconds=None, sim_time=None,
               contributors=list(res.contributors) if res else [], dropped=list(res.dropped) if res else [],
               staleness=rec.staleness if done else {}, round_id=rec.round_id, status=rec.status,
               cohort=list(rec.cohort), keyholder_bytes=rec.keyholder_bytes, reason=rec.reason)
    return RoundMetrics(**(row | measured))


def placement_report(report: object) -> tuple[float, str]:
    """A client's check-in report of its distributed-placement guarantee, ``{"exposed_epsilon": ε, "adversary":
    who}``: the ε of its releases against anyone who sees its contribution alone, and the adversary its ledger's ε
    holds against. The client's own ledger is the authority; this only fills the aggregator's metrics rows.
    MalformedMessageError unless ε is a finite number >= 0 and the adversary a short string."""
    if not isinstance(report, dict):
        raise MalformedMessageError("a placement report must be an object")
    eps, who = report.get("exposed_epsilon"), report.get("adversary")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise MalformedMessageError(f"exposed_epsilon must be a finite number >= 0, got {eps!r}")
    if not isinstance(who, str) or not 0 < len(who) <= 200:
        raise MalformedMessageError("adversary must be a string of 1 to 200 characters")
    return float(eps), who


def placement_of(reports: Mapping[int, tuple[float, str]]) -> dict:
    """Row fields from the clients' placement reports ({} when none): the relation and adversary of the row's ε
    (example-level on the clients' union) and each client's exposed ε, as the in-process driver writes them."""
    if not reports:
        return {}
    against = " / ".join(sorted({who for _, who in reports.values()}))
    return {"epsilon_relation": f"replace-one record of the clients' union, against {against}",
            "exposed_epsilon_per_client": {c: eps for c, (eps, _) in sorted(reports.items())}}
