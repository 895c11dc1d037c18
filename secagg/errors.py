"""Every error secagg raises. Verify/decrypt/unmask *raise*; nothing returns a bool for failure.

    SecAggError
    ├── ConfigurationError          unsafe or impossible parameters (ring overflow, insecure HE modulus, t > n)
    ├── StageError                  a role's method called out of protocol order
    ├── DropoutError                too few survivors to finish; no partial result is produced
    ├── KeyMisuseError              a secret key where only public material belongs (e.g. private context to aggregator)
    ├── DecryptionError             ciphertext/share failed authentication or does not decrypt under this key
    │   ├── TooFewContributorsError an aggregate with fewer contributors than the key holder's minimum
    │   └── VerificationError       an aggregate or a revealed share that is not what its contributors committed to
    ├── CapacityError               a bounded store (pending seeds) is full; nothing was accepted
    │   └── BackpressureError       a streamed part ahead of the receiver's window; resend it later
    ├── AuthenticationError         bad signature or wrong sender identity
    ├── MalformedUpdateError        bad input vector: wrong shape/dtype, NaN/Inf, out of the encodable range
    └── MalformedMessageError       bytes that do not decode to a valid message (truncated, bit-flipped, bad sizes)
        ├── WrongRoundError         a message for another round (replays of earlier rounds land here)
        │   └── ReplayError         a round session a client already took part in (its nonce was reused)
        ├── DuplicateMessageError   a second message from the same sender for the same stage
        └── UnknownClientError      a sender/recipient that is not part of this round
"""

from __future__ import annotations

__all__ = [
    "SecAggError",
    "ConfigurationError",
    "StageError",
    "DropoutError",
    "KeyMisuseError",
    "DecryptionError",
    "TooFewContributorsError",
    "VerificationError",
    "CapacityError",
    "BackpressureError",
    "ReplayError",
    "AuthenticationError",
    "MalformedUpdateError",
    "MalformedMessageError",
    "WrongRoundError",
    "DuplicateMessageError",
    "UnknownClientError",
]


class SecAggError(Exception):
    """Base class of every error raised by secagg."""


class ConfigurationError(SecAggError, ValueError):
    """Parameters that are unsafe or cannot work (ring overflow, insecure HE modulus, threshold > n)."""


class StageError(SecAggError):
    """A protocol method was called out of order, or on a role that already finished or failed."""


class DropoutError(SecAggError):
    """Too few clients survived to finish the round; nothing partial is returned."""


class KeyMisuseError(SecAggError):
    """Secret key material was handed to a party that must only hold public material."""


class DecryptionError(SecAggError):
    """A ciphertext or share failed authentication, or does not decrypt under this key."""


class TooFewContributorsError(DecryptionError):
    """The key holder refuses an aggregate with fewer contributors than its configured minimum."""


class VerificationError(DecryptionError):
    """An aggregate that is not the sum of exactly the named contributions of this round under this key, or a
    revealed share that does not open its dealer's commitment; nothing is released or reconstructed from it."""


class CapacityError(SecAggError):
    """A bounded store (for instance the key holder's pending pad seeds) is full; the message was not accepted."""


class BackpressureError(CapacityError):
    """A streamed part arrived too far ahead of the receiver's window; nothing changed: resend it later."""


class AuthenticationError(SecAggError):
    """A signature did not verify or a sender claimed an identity that is not its own."""


class MalformedUpdateError(SecAggError, ValueError):
    """An input vector has the wrong shape or dtype, holds NaN/Inf, or lies outside the encodable range."""


class MalformedMessageError(SecAggError, ValueError):
    """Bytes that do not decode to a valid message: truncated, corrupted, wrong type or inconsistent sizes."""


class WrongRoundError(MalformedMessageError):
    """A well-formed message for a different round than the one in progress (including replays)."""


class ReplayError(WrongRoundError):
    """A round session (nonce) this party already took part in: a replay, refused before any secret is used."""


class DuplicateMessageError(MalformedMessageError):
    """A sender delivered a second message for a stage it already completed."""


class UnknownClientError(MalformedMessageError):
    """A message names a client that is not a participant of this round."""
