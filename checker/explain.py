"""Counterexamples in words: what a person reads first when a check fails."""
from __future__ import annotations

from .history import Op
from .linearizability import CheckResult, PartitionResult, Verdict
from .models import Model


def _op_line(model: Model, op: Op) -> str:
    when = f"[{op.call}, {'∞' if op.ret is None else op.ret}]"
    return f"process {op.process!s:>4}  {model.describe_op(op):<32} {when}"


def explain_partition(model: Model, part: PartitionResult, tail: int = 8) -> str:
    """A readable account of one non-valid partition."""
    key = "" if part.key is None else f" key {model.describe_state(part.key)}"
    lines = []
    total = len([o for o in part.ops if o.ret is not None])
    done = len([s for s in part.linearization if not s.unknown_chain])
    if part.verdict is Verdict.UNKNOWN:
        lines.append(f"unknown{key}: {part.reason} after {part.configurations} configurations; "
                     f"{done} of {total} completed ops linearized so far")
        return "\n".join(lines)
    lines.append(f"invalid{key}: the longest linearizable prefix holds {done} of {total} "
                 "completed ops; nothing can come next")
    steps = part.linearization
    if steps:
        lines.append(f"  linearized (last {min(tail, len(steps))} of {len(steps)}), state after each:")
        for s in steps[-tail:]:
            mark = " (indeterminate, applied)" if s.unknown_chain else ""
            lines.append(f"    {_op_line(model, s.op)}  => {model.describe_state(s.state)}{mark}")
    state = steps[-1].state if steps else model.init()
    lines.append(f"  cannot be linearized next, from state {model.describe_state(state)}:")
    for op, illegal in part.blocked:
        why = "illegal in this state" if illegal else "legal here, but every continuation fails"
        lines.append(f"    {_op_line(model, op)}  {why}")
    return "\n".join(lines)


def explain(model: Model, result: CheckResult, limit: int = 3) -> str:
    """The verdict and up to `limit` failing partitions, worst first."""
    bad = sorted(result.failures(), key=lambda p: -p.verdict.rank)
    head = (f"{result.verdict.value} ({len(result.partitions)} partition"
            f"{'s' if len(result.partitions) != 1 else ''}, model {result.model}, "
            f"{result.seconds:.3f} s)")
    parts = [head]
    shown = [p for p in bad if p.verdict is Verdict.INVALID][:limit] or bad[:1]
    for p in shown:
        parts.append(explain_partition(model, p))
    rest = len(bad) - len(shown)
    if rest > 0:
        parts.append(f"... and {rest} more partition(s) not valid")
    return "\n".join(parts)
