"""Keyed uniforms: the one source of randomness of every sampler.

A value is ``F⁻¹(u)`` for a uniform ``u`` that is a hash of ``(seed, column, attempt, sub-stream)``
and the record's key (its index in a sampled source, or a hash of its ``_id`` when columns are
added to incoming records). Nothing else goes in: not the partition, not the worker, not what
was drawn before. So a record's values are the same however the run is split, and a rerun after
a crash draws the same values. The hash is SplitMix64's finaliser applied twice, vectorised over
a partition's keys with numpy's wrapping uint64 arithmetic.
"""

from __future__ import annotations

import hashlib

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_SCALE = 2.0 ** -53


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, in place (uint64 arithmetic wraps, as the algorithm needs)."""
    x ^= x >> _S30
    x *= _M1
    x ^= x >> _S27
    x *= _M2
    x ^= x >> _S31
    return x


def stream(seed: int, column: str, attempt: int, sub: int) -> np.uint64:
    """The 64-bit key of one column's sub-stream on one attempt."""
    digest = hashlib.blake2b(f"{seed}\x1f{column}\x1f{attempt}\x1f{sub}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(digest, "little"))


def bits(keys: np.ndarray, key: np.uint64) -> np.ndarray:
    """64 random bits per record key."""
    with np.errstate(over="ignore"):
        x = keys * _GOLDEN
        x += key
        _mix(x)
        x ^= key
        return _mix(x)


def uniforms(keys: np.ndarray, key: np.uint64) -> np.ndarray:
    """One float in the open interval (0, 1) per record key: never 0 or 1, so inverse CDFs stay finite."""
    return ((bits(keys, key) >> _S11).astype(np.float64) + 0.5) * _SCALE


def record_key(record_id: str) -> int:
    """A record's key from its ``_id`` (16 hex digits as recipe makes them; anything else hashed)."""
    try:
        if len(record_id) == 16:
            return int(record_id, 16)
    except (TypeError, ValueError):
        pass
    return int.from_bytes(hashlib.blake2b(str(record_id).encode(), digest_size=8).digest(), "little")


class Draws:
    """The uniforms of one column on one attempt, for a set of record keys (lazily, per sub-stream)."""

    def __init__(self, keys: np.ndarray, seed: int, column: str, attempt: int) -> None:
        self.keys, self.seed, self.column, self.attempt = keys, seed, column, attempt

    def __len__(self) -> int:
        return len(self.keys)

    def u(self, sub: int = 0) -> np.ndarray:
        return uniforms(self.keys, stream(self.seed, self.column, self.attempt, sub))

    def bits(self, sub: int = 0) -> np.ndarray:
        return bits(self.keys, stream(self.seed, self.column, self.attempt, sub))

    def subset(self, mask: np.ndarray) -> "Draws":
        return Draws(self.keys[mask], self.seed, self.column, self.attempt)
