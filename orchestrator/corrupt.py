"""The `corrupt-entry` fault, run after the final reads: one replica's copy of the last
user entry is damaged under the WAL's checksum, and the replica replays it.

A correct replica halts at exactly that entry (fail closed, I3 excuses exactly that
copy); one that skips entries it cannot open (`silent-unwrap-skip`) keeps going with a
different state, which I4 sees in the final digests.
"""
from __future__ import annotations

import os
import random
import time
from typing import Any

from nemesis.primitives import Step as Fault
from node.wal import WalError, damage_entry

from .client import Client, ClientTimeout
from .cluster import ClusterError


def corrupt_and_replay(runner: Any, fault: Fault, seconds: float = 20.0) -> list[tuple[str, int]]:
    """Damage, restart, watch the replay: all within `seconds` (the run's budget)."""
    cl = runner.cluster
    rec = runner.rec
    rng = random.Random(f"nemesis:{runner.cfg.seed}:{fault.id}")
    stop_at = time.monotonic() + seconds

    def left(cap: float) -> float:
        return max(0.5, min(cap, stop_at - time.monotonic()))

    try:
        leader = cl.wait_leader(left(5))
    except ClusterError:
        rec.fault(time.monotonic_ns(), "event", "corrupt-entry", None,
                  {"skipped": "no leader to write the probe through"})
        return []
    with Client(cl.endpoints(), timeout=2.0) as c:
        # One more write, through the leader: its reply names its log index.
        key = "k0"
        value = f"tok-{runner.run_id[-6:].replace('-', '')}-probe{fault.id:03d}"
        t = time.monotonic_ns()
        rec.op(t, "final-w", "invoke", "write", key, value, node=leader)
        try:
            rep = c.admin(leader, "write", timeout=2.0, key=key, value=value)
        except ClientTimeout:
            rep = None
        if rep is None or not rep.get("ok"):
            kind = "fail" if rep is not None and rep.get("definite") else "info"
            rec.op(time.monotonic_ns(), "final-w", kind, "write", key, value,
                   error="timeout" if rep is None else rep.get("code"), node=leader)
            rec.fault(time.monotonic_ns(), "event", "corrupt-entry", None,
                      {"skipped": "the probe write did not commit"})
            return []
        rec.op(time.monotonic_ns(), "final-w", "ok", "write", key, value, node=leader)
        index = int(rep["index"])
        followers = [n for n in cl.ids if n != leader]
        rng.shuffle(followers)
        victim = None
        end = time.monotonic() + left(5)
        while victim is None and time.monotonic() < end:
            for f in followers:
                try:
                    st = c.admin(f, "status", timeout=0.5)["value"]
                except (ClientTimeout, KeyError, TypeError):
                    continue
                if st["applied"] >= index and st["snapshot_index"] < index \
                        and not st.get("halted"):
                    victim = f
                    break
            else:
                time.sleep(0.05)
        if victim is None:
            rec.fault(time.monotonic_ns(), "event", "corrupt-entry", None,
                      {"skipped": "no follower holds the probe entry outside a snapshot"})
            return []
        cl.kill(victim)
        wal_dir = os.path.join(cl.nodes[victim].data_dir, "wal")
        try:
            damage_entry(wal_dir, index)
        except WalError as e:
            rec.fault(time.monotonic_ns(), "event", "corrupt-entry", [victim],
                      {"skipped": str(e)})
            _start(cl, victim, left(20))
            return []
        rec.fault(time.monotonic_ns(), "start", "corrupt-entry", [victim],
                  {"index": index, "what": "one bit of the entry's data, under the WAL CRC"})
        gone = _start(cl, victim, left(20))
        if gone is not None:
            # The elastickv profile: the replay halts there and the process ends itself.
            rec.fault(time.monotonic_ns(), "stop", "corrupt-entry", [victim],
                      {"index": index, "outcome": f"the process ended: {gone[:300]}"})
            return [(victim, index)]
        outcome = "timeout"
        end = time.monotonic() + left(10)
        while time.monotonic() < end:
            try:
                st = c.admin(victim, "status", timeout=0.5)["value"]
            except (ClientTimeout, KeyError, TypeError):
                time.sleep(0.05)
                continue
            if st.get("halted"):
                outcome = f"halted: {st['halted']}"
                break
            if st["applied"] >= index:
                outcome = f"applied past {index} without halting"
                break
            time.sleep(0.05)
        rec.fault(time.monotonic_ns(), "stop", "corrupt-entry", [victim],
                  {"index": index, "outcome": outcome})
    return [(victim, index)]


def _start(cl: Any, nid: str, wait: float) -> str | None:
    """Start `nid` and wait until it answers; None, or why it never did (a node that
    ends itself during its replay, as the elastickv profile's halt does, is evidence of
    the fault's effect, not a harness failure)."""
    try:
        cl.start_node(nid, wait=wait)
    except ClusterError as e:
        return str(e)
    return None
