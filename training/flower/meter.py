"""A Flower client mod that meters every message a node handles: the time inside the app and the bytes.

Add it outermost (``mods=[MessageMeter(path), ...]``) to count what the mods after it do too (e.g. Flower's
``secaggplus_mod``). One JSON line per message is appended to ``path``: the message's ``group`` (Flower's
convention, kept by our ServerApp: the round), the node's ``partition`` (simulation) or ``client-id``, ``seconds``
(wall time inside the app; in simulation the node's actor handles one message at a time, so it is that
message's own cost), ``down``/``up`` (the content's serialized protobuf size in and out: payloads and records,
without Flower's metadata or gRPC framing, the same count for any app). Only sizes and times are written.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

__all__ = ["MessageMeter", "per_round"]


class MessageMeter:
    """``MessageMeter(path)(msg, context, call_next)``: a Flower mod; picklable (Ray ships it to its actors)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def __call__(self, msg, context, call_next):
        from flwr.common.serde import recorddict_to_proto

        t0 = time.perf_counter()
        reply = call_next(msg, context)
        seconds = time.perf_counter() - t0
        cfg = context.node_config
        row = {"group": msg.metadata.group_id, "partition": int(cfg.get("client-id", cfg.get("partition-id", -1))),
               "seconds": seconds, "down": recorddict_to_proto(msg.content).ByteSize(),
               "up": recorddict_to_proto(reply.content).ByteSize() if reply.has_content() else 0}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return reply


def per_round(path: str | Path) -> dict[str, dict[str, Any]]:
    """The meter's lines summed by group: ``messages``, ``seconds`` and ``down``/``up`` bytes, also per partition
    (``by_partition``)."""
    out: dict[str, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        g = out.setdefault(r["group"], {"messages": 0, "seconds": 0.0, "down": 0, "up": 0,
                                        "by_partition": defaultdict(lambda: {"seconds": 0.0, "down": 0, "up": 0})})
        p = g["by_partition"][r["partition"]]
        g["messages"] += 1
        for k in ("seconds", "down", "up"):
            g[k] += r[k]
            p[k] += r[k]
    for g in out.values():
        g["by_partition"] = dict(g["by_partition"])
    return out
