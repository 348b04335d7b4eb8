"""A pool ended by `kill_pool` must not hang this process: a worker that dies while it
sends a result leaves half a message in the result pipe, and the pool's manager thread
waited for the rest for ever (a `cutover hunt` hung at exit after its summary, during
`cutover bench detection --mode hunt`)."""
from __future__ import annotations

import struct

import pytest

from orchestrator.lifeline import kill_pool, worker_pool


def _square(x: int) -> int:
    return x * x


@pytest.mark.sim  # it starts a pool of worker processes, as the simulator's batches do
def test_a_pool_killed_with_half_a_result_in_its_pipe_lets_its_manager_thread_end() -> None:
    with worker_pool(1) as ex:
        assert ex.submit(_square, 7).result(timeout=60) == 49
        manager = ex._executor_manager_thread  # type: ignore[attr-defined]
        assert manager is not None and manager.is_alive()
        # What a worker killed mid-send leaves: a frame header that promises 64 bytes,
        # and 3 of them.
        writer = ex._result_queue._writer  # type: ignore[attr-defined]
        writer._send(struct.pack("!i", 64) + b"abc")  # type: ignore[attr-defined]
        kill_pool(ex, grace=1.0)
        manager.join(30)
        assert not manager.is_alive(), "the pool's manager thread still waits on its pipe"

