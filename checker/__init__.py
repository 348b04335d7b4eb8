"""checker: pure analysis of recorded histories (linearizability, and later the
cutover invariants). The public surface is small on purpose, like Porcupine's.

The search and the models may run compiled (mypyc) or as their source: `_native.select()`
chooses before anything imports them, and `compiled()` says which (docs/checker.md, "The
compiled path")."""
from . import _native

_native.select()

# ruff: noqa: E402 - the path is chosen before the modules below import the search
from ._native import compiled
from .history import UNKNOWN, HistoryError, Op
from .linearizability import CheckResult, PartitionResult, Step, Verdict, check
from .models import MODELS, Model, get_model
from .readers import DEFAULT_MODEL, FORMATS, infer_format, read_history

__all__ = ["compiled", "UNKNOWN", "HistoryError", "Op", "CheckResult", "PartitionResult", "Step",
           "Verdict", "check", "MODELS", "Model", "get_model", "DEFAULT_MODEL", "FORMATS",
           "read_history", "infer_format"]
