"""The `cutover` command line: every click command, and nothing but commands.

One module per family of commands (`checking`, `running`, `nightly`, `bench`, `review`),
with what they share in `common`; importing this package registers them all on `main`.

A command parses its flags, calls the module that does the work, and turns that
module's errors into one line on stderr and an exit code (`orchestrator.errors`):
0 valid, 1 invalid, 2 unknown; 3 and above, the harness could not do its job.

Start-up time is a choice made here, on purpose: each command imports the modules it
runs when it runs. `cutover lin` on a small file must not first load ZeroMQ, SQLite,
jinja2 and the node (about 0.3 s against 0.1 s), and the tests start the CLI hundreds
of times. Those in-function imports are the only ones of the orchestrator. The one
exception is `orchestrator.run.config` (with `nemesis.plan`, pure Python, about 30 ms): the
flags of `run`, `sim` and `matrix` are built from it (defaults, ranges, choices), so a
default is written once, in `RunConfig`.
"""
from __future__ import annotations

from orchestrator.cli import bench, checking, nightly, review, running  # noqa: F401  (registers)
from orchestrator.cli.common import Finite, Group, main
from orchestrator.cli.nightly import matrix, trend
from orchestrator.cli.running import RUN_NOT_CONFIG, hunt, run, sim

__all__ = ["Finite", "Group", "RUN_NOT_CONFIG", "hunt", "main", "matrix", "run", "sim", "trend"]
