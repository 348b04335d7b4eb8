"""A run's configuration has one home, `orchestrator/run/config.py` (issue 19), and what
derives from it agrees with it:

* a plan file that carries a config replays it, and every flag the user gave wins: the
  field list is `RunConfig`'s own, so `cutover run --plan FILE --profile elastickv`
  no longer plays the file's profile (the hand-kept list omitted `profile`);
* the defaults and ranges `cutover run` shows are RunConfig's (`RANGES`);
* the node knobs a seed draws have one default each, which `with_knobs` and the real
  cluster use.

No process is started: `execute` is replaced by a stub that keeps the config it gets.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from nemesis.plan import KNOBS as PLAN_KNOBS
from nemesis.plan import make_plan, parse_families
from orchestrator import cli
from orchestrator.run import config
from orchestrator.run.config import (
    FLAGS,
    KNOB_DEFAULTS,
    RANGES,
    SIM_DEFAULTS,
    RunConfig,
    RunError,
    config_for_plan_file,
    default,
)

FIELDS = {f.name: f for f in fields(RunConfig)}


@dataclass
class _Outcome:
    exit_code: int = 0
    run_id: str = "r1"
    verdict: str = "valid"


def _plan_file(tmp_path: Path, **cfg: Any) -> str:
    """A plan file as `cutover sim` writes a shrunk one: the plan and its run's config."""
    c = RunConfig(**cfg).resolved()
    plan = make_plan(c.seed or 1, parse_families(c.nemesis), time_limit=c.time_limit,
                     interval=c.nemesis_interval, cutover_at=c.cutover_at, nodes=c.nodes,
                     scenario=c.scenario)
    doc = {"format": "cutover-plan", "plan": plan.to_dict(), "config": asdict(c)}
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _run(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> RunConfig:
    """`cutover run ARGS` up to the run itself: the RunConfig `execute` is given."""
    got: list[RunConfig] = []

    def fake_execute(cfg: RunConfig, **_kw: Any) -> _Outcome:
        got.append(cfg)
        return _Outcome()

    monkeypatch.setattr("orchestrator.real.run.execute", fake_execute)
    monkeypatch.setattr("orchestrator.lifeline.abort_on_signals", lambda: None)
    res = CliRunner().invoke(cli.main, ["run", *args])
    assert res.exit_code == 0, (res.output, res.exception)
    assert len(got) == 1, res.output
    return got[0]


def _file_config(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    path = _plan_file(tmp_path, nodes=3, time_limit=12.0, rate=50.0, keys=4, seed=7,
                      scenario="sequence", cutover_at=4.0, snapshot_every=100,
                      max_msg_bytes=512, max_inflight=2, profile="fixed", bugs=[])
    return path, json.loads(Path(path).read_text())["config"]


def _same_but(cfg: RunConfig, file_cfg: dict[str, Any], *changed: str) -> None:
    """`cfg` is the file's config except `changed` (and where results go)."""
    for name in FIELDS:
        if name in (*changed, "results", "plan_file"):
            continue
        assert getattr(cfg, name) == file_cfg[name], name


# --------------------------------------------------------------- the --profile bug


def test_plan_file_keeps_its_config_when_no_flag_is_given(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path, file_cfg = _file_config(tmp_path)
    cfg = _run(monkeypatch, ["--plan", path, "--results", str(tmp_path / "r")])
    _same_but(cfg, file_cfg)
    assert cfg.plan_file == path and cfg.results == str(tmp_path / "r")


def test_profile_flag_wins_over_the_plan_file(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """The bug: `--profile` was not in the hand-kept list and was silently dropped."""
    path, file_cfg = _file_config(tmp_path)
    cfg = _run(monkeypatch, ["--plan", path, "--profile", "elastickv",
                             "--results", str(tmp_path / "r")])
    assert cfg.profile == "elastickv"
    _same_but(cfg, file_cfg, "profile")
    assert cfg.plan_file == path


def test_bug_and_time_limit_flags_win_over_the_plan_file(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path, file_cfg = _file_config(tmp_path)
    cfg = _run(monkeypatch, ["--plan", path, "--bug", "no-barrier", "--time-limit", "20",
                             "--results", str(tmp_path / "r")])
    assert cfg.bugs == ["no-barrier"] and cfg.time_limit == 20.0
    _same_but(cfg, file_cfg, "bugs", "time_limit")


def test_config_for_plan_file_takes_every_field_the_user_gave(tmp_path: Path) -> None:
    """Any field, not a list of some: each one given is the flags'."""
    path, file_cfg = _file_config(tmp_path)
    flags = RunConfig(nodes=5, time_limit=30.0, rate=99.0, concurrency=3, workload="register",
                      keys=2, nemesis="kill", nemesis_interval=2.0, cutover_at=None,
                      bugs=["stale-read"], profile="elastickv", seed=11, quiet_period=1.0,
                      op_timeout=2.0, tick_ms=20.0, election_ticks=12, snapshot_every=50,
                      max_msg_bytes=1, max_inflight=1, enable_timeout_ticks=90,
                      lin_timeout=30.0, finish_within=10.0, scenario="churn",
                      buggify=True, results=str(tmp_path / "r"),
                      crash_point={"node": "n2", "k": 7, "action": "tear", "again": 0})
    for name in FIELDS:
        if name in ("results", "plan_file"):
            continue
        assert getattr(flags, name) != file_cfg[name], f"pick a value of {name} to tell"
        got = config_for_plan_file(path, flags, {name})
        assert getattr(got, name) == getattr(flags, name), name
        _same_but(got, file_cfg, name)
        assert got.results == flags.results and got.plan_file == path
    with pytest.raises(ValueError, match="not_a_field"):
        config_for_plan_file(path, flags, {"not_a_field"})


def test_plan_file_without_config_plays_with_the_flags(tmp_path: Path) -> None:
    path, _ = _file_config(tmp_path)
    doc = json.loads(Path(path).read_text())
    del doc["config"]
    Path(path).write_text(json.dumps(doc))
    flags = RunConfig(nodes=4, seed=3)
    got = config_for_plan_file(path, flags, {"nodes"})
    assert asdict(got) == {**asdict(flags), "plan_file": path}


def test_plan_file_with_a_bad_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    doc = json.loads(Path(_plan_file(tmp_path, seed=2)).read_text())
    doc["config"]["rate"] = -1
    path.write_text(json.dumps(doc))
    with pytest.raises(RunError, match=r"cannot use .*bad\.json: --rate must be"):
        config_for_plan_file(str(path), RunConfig(), set())


# --------------------------------------------------------- the flags derive from it


def _params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params if p.name}


def _defaults(command: click.Command) -> dict[str, Any]:
    """What the command's function gets when no flag is given (parsed, not run)."""
    with command.make_context(command.name or "", []) as ctx:
        return dict(ctx.params)


def test_every_run_flag_is_a_config_field() -> None:
    """What `run` builds its RunConfig and the plan file's overrides from: a flag whose
    name is not a field would be dropped (or fail) there."""
    params = _params(cli.run)
    assert set(params) - set(cli.RUN_NOT_CONFIG) <= set(FIELDS), \
        set(params) - set(cli.RUN_NOT_CONFIG) - set(FIELDS)
    # FLAGS (how an error names a field) spells each as the flag the user types
    for name in FLAGS:
        assert f"--{name.replace('_', '-')}" in params[name].opts, name


@pytest.mark.parametrize("name", sorted(RANGES))
def test_run_flag_defaults_and_ranges_are_the_config(name: str) -> None:
    params = _params(cli.run)
    if name not in params:
        return  # a field without a flag (tick_ms, ...): only a stored config sets it
    p = params[name]
    assert isinstance(p, click.Option)
    assert _defaults(cli.run)[name] == default(name), name
    whole, lo, _hi, open_lo = RANGES[name]
    t = p.type
    if name == "seed":
        assert t is click.INT
        return
    assert isinstance(t, click.IntRange if whole else cli.Finite), (name, t)
    # a flag may ask more than the field (a run of under a second is no test); never less
    assert t.min is not None and (t.min > lo or (t.min == lo and t.min_open == open_lo)), name


def test_run_choice_and_text_defaults_are_the_config() -> None:
    params, got = _params(cli.run), _defaults(cli.run)
    for name in ("workload", "nemesis", "scenario", "profile", "results", "plan_file"):
        assert got[name] == default(name), name
    assert list(params["workload"].type.choices) == list(config.WORKLOADS)  # type: ignore[attr-defined]
    assert list(params["scenario"].type.choices) == list(config.SCENARIOS)  # type: ignore[attr-defined]
    from node.cutover import PROFILES

    assert sorted(params["profile"].type.choices) == sorted(PROFILES)  # type: ignore[attr-defined]
    assert sorted(config.PROFILE_NAMES) == sorted(PROFILES)


def test_sim_and_matrix_defaults_are_named_once() -> None:
    sim, matrix = _defaults(cli.sim), _defaults(cli.matrix)
    for name in ("nodes", "nemesis", "scenario", "profile", "results"):
        assert sim[name] == default(name), name
    for name, v in SIM_DEFAULTS.items():
        assert sim[name] == v, name
    assert SIM_DEFAULTS == {"time_limit": 30.0, "rate": 100.0}  # docs/sim.md
    for name in ("nodes", "nemesis", "results"):
        assert matrix[name] == default(name), name
    assert matrix["scenario"] == [default("scenario")]
    assert matrix["time_limit"] == config.MATRIX_DEFAULTS["time_limit"]


def test_the_other_derived_lists_are_fields() -> None:
    """The matrix's axes (what a task sets) and the workloads are the config's own."""
    from orchestrator.nightly.tasks import AXES
    from workloads import MODEL_OF

    assert set(AXES) <= set(FIELDS)
    assert sorted(config.WORKLOADS) == sorted(MODEL_OF)


def test_default_refuses_a_field_without_one() -> None:
    with pytest.raises(KeyError):
        default("no_such_field")
    assert default("bugs") == []


# ---------------------------------------------------------------- the node knobs


def test_knob_table_is_the_plans_knobs() -> None:
    assert set(KNOB_DEFAULTS) == set(PLAN_KNOBS)
    for name, d in KNOB_DEFAULTS.items():
        assert name in FIELDS and FIELDS[name].default is None  # drawn unless given
        whole, lo, hi, open_lo = RANGES[name]
        assert (whole, lo, hi, open_lo) == (True, 1, PLAN_KNOBS[name], False)
        assert lo <= d <= hi
    assert KNOB_DEFAULTS == {"snapshot_every": 5000, "max_msg_bytes": 64 * 1024,
                             "max_inflight": 64}


def test_with_knobs_fills_what_the_plan_lacks_from_the_table() -> None:
    plan = make_plan(5, parse_families("all"), time_limit=10.0, interval=5.0,
                     cutover_at=3.0, nodes=3)
    bare = replace(plan, knobs={})  # a bare plan file's, an older run's
    assert {k: getattr(RunConfig().with_knobs(bare), k) for k in KNOB_DEFAULTS} == \
        KNOB_DEFAULTS
    c = RunConfig(snapshot_every=7).with_knobs(replace(plan, knobs={"max_inflight": 2}))
    assert (c.snapshot_every, c.max_msg_bytes, c.max_inflight) == \
        (7, KNOB_DEFAULTS["max_msg_bytes"], 2)


def test_cluster_defaults_are_the_table() -> None:
    import inspect

    from orchestrator.real.cluster import Cluster

    sig = inspect.signature(Cluster.__init__)
    for name, d in KNOB_DEFAULTS.items():
        assert sig.parameters[name].default == d, name


def test_knob_draws_are_unchanged() -> None:
    """The simulator's seeds must replay: the same seeds draw the same knobs as before
    the table (values recorded from nemesis/plan.py when it was made)."""
    def draws(scenario: str, seeds: range) -> list[tuple[int, int, int]]:
        return [tuple(make_plan(s, parse_families("all"), time_limit=30.0, interval=5.0,
                                cutover_at=10.0, nodes=5, scenario=scenario).knobs.values())
                for s in seeds]  # type: ignore[misc]

    assert draws("swarm", range(1, 9)) == [
        (400, 65536, 64), (400, 65536, 64), (5000, 65536, 64), (5000, 65536, 64),
        (50, 65536, 64), (2000, 65536, 64), (5000, 65536, 64), (2000, 65536, 64)]
    assert draws("churn", range(1, 3)) == [(25, 1, 2), (25, 512, 4)]
