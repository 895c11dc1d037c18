"""The key holder's desk, sans I/O: what it accepts from whom, whichever driver delivers it (gRPC, Flower).

Serves either scheme with a key holder: CKKS (:class:`secagg.ckks.KeyHolder`) or packed BFV
(:class:`secagg.packed.PackedKeyHolder`); each role applies its own checks (contributor count, one decryption per
round, ciphertext parameters matching its session) before it decrypts anything. The desk adds, for every driver:

* pad seeds are accepted only as :class:`~secagg.he_pads.PadSeed` messages sealed for this key holder's session
  (a seed for another key raises :class:`StaleKeyError`), from the client the driver authenticated as sender (or,
  relayed, signed by it: the role checks signatures when it was made with ``peer_identities``);
* tag-key requests (:class:`~secagg.he_tags.TagRequest`) are granted for this session only, to the client the
  driver authenticated (or, relayed, signed by it); the grant is sealed to the requesting client's key;
* aggregates are finalized only for strictly increasing round ids that match the round id inside the aggregate,
  so a replay of an earlier round is refused (``WrongRoundError``); the one exception is the next part of an
  aggregate the key holder is receiving in parts (:attr:`HEKeyHolder.streaming_round`), which continues it; one
  made under another public key is refused as :class:`StaleKeyError`. A refused request changes nothing: the
  genuine aggregate of the round is still accepted.
"""

from __future__ import annotations

import hashlib

from secagg.errors import DecryptionError, MalformedMessageError, WrongRoundError
from secagg.he_pads import PadSeed
from secagg.he_tags import TagRequest
from secagg.messages import decode
from secagg.roles import AGGREGATOR, FinalizerRole, Outbound

__all__ = ["KeyHolderDesk", "StaleKeyError", "key_id"]


class StaleKeyError(DecryptionError):
    """The key holder was handed a message made under a public key it does not hold (it restarted with fresh
    keys, or the message is forged): nothing is decrypted; the aggregator re-fetches the key holder's public
    context, and the round is aborted and retried under it."""


def key_id(obj: object) -> bytes | None:
    """The key/session id a key holder or an aggregate message carries (CKKS ``context_id``, packed
    ``session_id``), or None."""
    for name in ("context_id", "session_id"):
        value = getattr(obj, name, None)
        if isinstance(value, bytes):
            return value
    return None


class KeyHolderDesk:
    """Wraps ``keyholder`` (a FinalizerRole with ``public_context()``); not thread-safe (drivers serialize)."""

    def __init__(self, keyholder: FinalizerRole) -> None:
        self.kh = keyholder
        self.context: bytes = keyholder.public_context()  # type: ignore[attr-defined]
        self.last_round = 0

    def seed(self, sender: int, payload: bytes) -> None:
        msg = decode(payload)
        if not isinstance(msg, PadSeed):
            raise MalformedMessageError("pad seeds only")
        if msg.session_id != key_id(self.kh):
            raise StaleKeyError("pad seed sealed for a key this key holder does not hold (it restarted with fresh "
                                "keys); re-fetch the public context")
        self.kh.receive(sender, payload)  # the key holder checks the seed names its sender

    def grant(self, sender: int, payload: bytes) -> bytes:
        """The key holder's tag-key grant for a client's :class:`~secagg.he_tags.TagRequest` (``sender``: the
        authenticated caller; a relayed request must be signed by the client it names)."""
        msg = decode(payload)
        if not isinstance(msg, TagRequest):
            raise MalformedMessageError("tag-key requests only")
        if msg.session_id != hashlib.sha256(self.context).digest():
            raise StaleKeyError("tag-key request for a key this key holder does not hold; re-fetch the public context")
        (out,) = self.kh.receive(sender, payload)
        return out.payload

    def finalize(self, round_id: int, payload: bytes) -> list[Outbound]:
        msg = decode(payload)  # validates the whole message before any work
        inner = getattr(msg, "round_id", round_id)
        if inner != round_id:
            raise WrongRoundError(f"aggregate of round {inner} submitted as round {round_id}")
        theirs, ours = key_id(msg), key_id(self.kh)
        if theirs is not None and ours is not None and theirs != ours:
            raise StaleKeyError("aggregate was made under a public key this key holder does not hold (it restarted "
                                "with fresh keys, or the aggregate is forged); re-fetch the public context")
        streaming = getattr(self.kh, "streaming_round", None)
        if round_id < self.last_round or (round_id == self.last_round and streaming != round_id):
            raise WrongRoundError(f"round {round_id} is not after the last finalized round {self.last_round}")
        outs = self.kh.receive(AGGREGATOR, payload)
        self.last_round = round_id
        return outs
