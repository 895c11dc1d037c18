"""The digest of a round's public terms: what every client of one round must have been told alike.

A deviating server could tell each client different public terms (e.g. a smaller ``max_weight`` to one client,
which scales that client's distributed-noise share down). Every scheme binds this digest into what the clients
sign or seal: masking into :attr:`secagg.masking.MaskingConfig.session_id` (so clients told different terms
reject each other's advertisements), the HE schemes into each client's pad seed (the key holder refuses an
aggregate whose contributors were told different terms). Invariant: equal JSON values (after one JSON round
trip, so int and str map keys, tuples and lists agree) give equal digests; anything else differs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from secagg.errors import MalformedMessageError

__all__ = ["terms_digest", "NO_TERMS", "TERMS_BYTES"]

TERMS_BYTES = 32
NO_TERMS = bytes(TERMS_BYTES)  # the digest of a round run without public terms (tests, direct use of a scheme)
_LABEL = b"secagg/round-terms/v1\x00"


def terms_digest(terms: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of ``terms`` (sorted keys, no whitespace, no NaN/Inf)."""
    try:
        canonical = json.dumps(json.loads(json.dumps(terms, allow_nan=False)), sort_keys=True,
                               separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise MalformedMessageError(f"round terms are not plain JSON: {exc}") from exc
    return hashlib.sha256(_LABEL + canonical.encode()).digest()
