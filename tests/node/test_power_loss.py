"""`kill-power` on real processes: a node that acknowledges before its data is durable
loses an acknowledged write when the power goes, and the run says so; the correct node
never does. And the defect patches of the detection benchmark still apply."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from nemesis.plan import Plan
from nemesis.primitives import Step, Target, When
from orchestrator.search import detection

ROOT = Path(__file__).resolve().parents[2]


def test_every_defect_patch_applies_and_names_what_exposes_it(tmp_path: Path) -> None:
    defects = detection.load_defects(detection.default_defects_dir())
    assert len(defects) >= 12
    for d in defects:
        assert d.what and d.exposed_by, d.name
        detection.patched_tree(d, ROOT, tmp_path / d.name)  # raises if it does not apply


def _power_plan(path: Path) -> str:
    """The whole cluster loses power twice, while clients write."""
    steps = [Step(1, "kill-power", Target("all"), When("time", at=4.0), duration=1.0),
             Step(2, "kill-power", Target("all"), When("time", at=9.0), duration=1.0)]
    plan = Plan(seed=0, families=("power",), scenario="generative", steps=tuple(steps),
                knobs={"snapshot_every": 5000, "max_msg_bytes": 65536, "max_inflight": 64})
    path.write_text(json.dumps(plan.to_dict()))
    return str(path)


def _run(src: Path, plan: str, results: Path, seed: int) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "orchestrator.cli", "run", "--nodes", "3", "--time-limit",
           "12", "--cutover-at", "none", "--seed", str(seed), "--plan", plan,
           "--results", str(results)]
    print(" ".join(cmd[2:]))
    r = subprocess.run(cmd, cwd=src, env={**os.environ, "PYTHONPATH": str(src)},
                       capture_output=True, text=True, timeout=180)
    verdicts = [ln for ln in r.stdout.splitlines()
                if ln.startswith(("VALID", "INVALID", "UNKNOWN", "ERROR", "ABORTED"))]
    return r.returncode, (verdicts or [""])[-1]


@pytest.mark.real
# The defect's case is `slow` (16 s; `pytest -m slow`): the simulator's power losses find
# wal-no-fdatasync in seconds (`cutover bench detection --sim`), the fixed case stays here.
@pytest.mark.parametrize("defect", [None, pytest.param("wal-no-fdatasync",
                                                       marks=pytest.mark.slow)])
def test_a_power_loss_loses_only_what_was_never_durable(tmp_path: Path,
                                                       defect: str | None) -> None:
    plan = _power_plan(tmp_path / "plan.json")
    if defect is None:
        src = ROOT
    else:
        d = next(x for x in detection.load_defects(detection.default_defects_dir())
                 if x.name == defect)
        src = detection.patched_tree(d, ROOT, tmp_path / "tree")
    code, verdict = _run(src, plan, tmp_path / "results", seed=21)
    db = sqlite3.connect(tmp_path / "results" / "cutover.db")
    lost = [json.loads(d) for (d,) in db.execute(
        "select detail from nemesis where fault='kill-power' and f='event'")]
    assert len(lost) == 2, lost
    truncated = sum(v["truncated_bytes"] for d in lost for v in d["lost"].values())
    if defect is None:
        assert code == 0, verdict
    else:
        # Nothing was ever synced: the power loss took acknowledged writes with it.
        assert truncated > 0
        assert code == 1 and verdict.startswith("INVALID"), verdict
