"""The Flower message meter counts each message's content bytes and the time inside the app, by round."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("flwr")

from training.flower.meter import MessageMeter, per_round  # noqa: E402
from training.flower.protocol import MESSAGE_TYPE, pack  # noqa: E402


def _message(size: int, group: str):
    from flwr.app import Message

    return Message(pack("task", {}, b"x" * size), dst_node_id=5, message_type=MESSAGE_TYPE, group_id=group)


@pytest.mark.parametrize("size", [0, 1000, 250_000])
def test_the_meter_counts_payload_bytes_both_ways_and_groups_by_round(tmp_path, size):
    from flwr.app import Context, Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    meter, path = MessageMeter(tmp_path / "m.jsonl"), tmp_path / "m.jsonl"
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 2}, state=RecordDict(), run_config={})
    reply = lambda m, _c: Message(pack("task", {}, b"y" * (2 * size)), reply_to=m)  # noqa: E731
    for group in ("1", "2", "2"):
        assert meter(_message(size, group), context, reply).content["secagg"]["body"] == b"y" * (2 * size)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["group"] for r in rows] == ["1", "2", "2"] and {r["partition"] for r in rows} == {2}
    assert all(size <= r["down"] < size + 200 and 2 * size <= r["up"] < 2 * size + 200 for r in rows)
    totals = per_round(path)
    assert totals["2"]["messages"] == 2 and totals["2"]["down"] == 2 * rows[0]["down"]
    assert totals["2"]["by_partition"][2]["up"] == totals["2"]["up"] == 2 * rows[0]["up"]
    assert totals["1"]["seconds"] >= 0
