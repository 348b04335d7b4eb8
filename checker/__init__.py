"""checker: pure analysis of recorded histories (linearizability, and later the
cutover invariants). The public surface is small on purpose, like Porcupine's."""
from .history import UNKNOWN, HistoryError, Op
from .linearizability import CheckResult, PartitionResult, Step, Verdict, check
from .models import MODELS, Model, get_model
from .readers import DEFAULT_MODEL, FORMATS, infer_format, read_history

__all__ = ["UNKNOWN", "HistoryError", "Op", "CheckResult", "PartitionResult", "Step",
           "Verdict", "check", "MODELS", "Model", "get_model", "DEFAULT_MODEL", "FORMATS",
           "read_history", "infer_format"]
