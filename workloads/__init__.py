"""Operation generators: `register` (one key) and `kv` (many keys), both read/write/cas.

A workload is data plus a pure generator: given the same seed and the same observations
it yields the same ops. Every written value is unique and carries a token
(`tok-<run>-<n>`) that the cutover checker's byte scan searches the nodes' files for: a
token found in cleartext above the cutover index is a leak (I1).
"""
from __future__ import annotations

from .generator import MODEL_OF, OpSpec, Workload, make_workload

__all__ = ["MODEL_OF", "OpSpec", "Workload", "make_workload"]
