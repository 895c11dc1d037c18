"""The units the masking client is measured against (:mod:`benchmarks.secagg_micro`): AES-CTR keystream and
one Ed25519 verification, both in CPU seconds of this process."""

from __future__ import annotations

import os
import time

import statistics

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from secagg.hazmat import sign as ed25519

__all__ = ["CLOCK", "AesProbe", "verify_s"]

CLOCK = time.process_time  # CPU time of this single-threaded process: other jobs on a shared machine barely move it


class AesProbe:
    """Times AES-128-CTR keystream generation of ``nbytes`` (``update_into`` of zeros) in CPU seconds.

    The keystream is produced 256 KiB at a time into one reused, cache-resident buffer: the cipher's own speed,
    which memory traffic from other jobs barely slows (one 4*D-byte call into a DRAM buffer slows several-fold
    under such load and would flatter the ratio). The round calls it right after every timed client call, so the
    AES reference is sampled under the same load as the client work it is compared with."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self._enc = Cipher(algorithms.AES(os.urandom(16)), modes.CTR(bytes(16))).encryptor()
        chunk = min(nbytes, 1 << 18)
        self._src, self._dst = memoryview(bytes(chunk)), bytearray(chunk + 15)
        self.samples: list[float] = []

    def __call__(self) -> None:
        t = CLOCK()
        for lo in range(0, self.nbytes, len(self._src)):
            self._enc.update_into(self._src[:min(len(self._src), self.nbytes - lo)], self._dst)
        self.samples.append(CLOCK() - t)

    def best_speed(self, repeats: int = 15) -> float:
        """Bytes per second at the fastest of ``repeats`` extra calls (a quiet-machine reference)."""
        before = len(self.samples)
        for _ in range(repeats):
            self()
        best = min(self.samples[before:])
        del self.samples[before:]
        return self.nbytes / best


def verify_s(count: int = 50) -> float:
    """Median CPU seconds of one Ed25519 verification (``cryptography``) of a survivor-list-sized message."""
    ident = ed25519.generate()
    msg = os.urandom(864)
    sig, vk = ed25519.sign(ident, msg), ident.public_key()
    times = []
    for _ in range(count):
        t = CLOCK()
        ed25519.verify(vk, sig, msg)
        times.append(CLOCK() - t)
    return statistics.median(times)
