"""The UI in a terminal: the lines `cutover list`, `show` and `check` print.

Lines are built from the same data as the report (`orchestrator.ui.data`), so a column
means the same thing in both; the run id is the first column of `list`, so
`cutover list | awk 'NR==2{print $1}'` is the newest run.
"""
from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import sqlite_utils

from checker.coverage import POINTS, summary_line
from checker.suite import ORDER, first_violation
from orchestrator import store
from orchestrator.ui.data import node_table, stored_checks


def check_line(name: str, d: Mapping[str, Any]) -> str:
    """The short, human part of a checker's detail (verdict tables, `show`, `check`)."""
    if d.get("first_violation"):
        return str(d["first_violation"])
    if d.get("error"):
        return str(d["error"])
    if name == "linearizability":
        return f"{d.get('ops', 0)} ops over {len(d.get('keys') or [])} keys"
    if name == "stats":
        t = d.get("total") or {}
        return ", ".join(f"{k} {t.get(k, 0)}" for k in ("ok", "fail", "info"))
    if name == "availability":
        share = d.get("ok_share_outside_faults")
        return "no quiet seconds" if share is None else f"{share:.0%} ok outside faults"
    if name == "cutover":
        return f"C = {d.get('cutover')}"
    if name == "crashes":
        return (f"{d.get('exits', 0)} unplanned node exits, {d.get('failed_starts', 0)} "
                f"failed starts")
    return ""


def checker_names(checks: Mapping[str, Any]) -> list[str]:
    """The checkers of a run in the suite's order, unknown ones after, by name."""
    return [n for n in ORDER if n in checks] + sorted(set(checks) - set(ORDER))


def checker_lines(checks: Mapping[str, Mapping[str, Any]], indent: str = "") -> list[str]:
    """One line per checker: name, verdict, detail."""
    return [f"{indent}{name:<16} {checks[name].get('valid', '?'):<8} "
            f"{check_line(name, checks[name])}" for name in checker_names(checks)]


def _fmt_duration(s: Any) -> str:
    return "-" if s is None else f"{float(s):.1f}s"


def _started(s: Any) -> str:
    return "-" if not s else str(s).replace("T", " ")[:19]


def _d(v: Any) -> str:
    return "-" if v is None else str(v)


def _columns(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns; the last one is free text (it may hold spaces)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return [fmt.format(*head)] + [fmt.format(*r) for r in rows]


def list_lines(db: sqlite_utils.Database) -> list[str]:
    """`cutover list`: one line per run, newest first."""
    head = ("RUN", "STARTED", "DURATION", "WORKLOAD", "NEMESES", "BUGS", "SEED", "VERDICT")
    rows = [(r["id"], _started(r.get("started")), _fmt_duration(r.get("duration_s")),
             r.get("workload") or "-", r.get("nemesis") or "-", r.get("bugs") or "-",
             str(r.get("seed") if r.get("seed") is not None else "-"),
             r.get("verdict") or r.get("status") or "-") for r in store.runs(db)]
    out = _columns(head, rows)
    hunts = store.hunts(db)
    if hunts:
        out.append("")
        out += hunt_list_lines(db, hunts)
    return out


def _hunt_build(h: Mapping[str, Any]) -> str:
    cfg = ((h.get("config") or {}).get("run") or {}) if isinstance(h.get("config"), dict) \
        else {}
    return ",".join(cfg.get("bugs") or []) or str(cfg.get("profile") or "fixed")


def hunt_list_lines(db: sqlite_utils.Database,
                    hunts: Sequence[Mapping[str, Any]] | None = None) -> list[str]:
    """The hunts (`cutover hunt`), newest first: one line each (id first), then a line
    per finding with its simulated run and its real confirmations."""
    hunts = store.hunts(db) if hunts is None else hunts
    head = ("HUNT", "STARTED", "BUILD", "SEEDS", "REAL", "STATUS", "SUMMARY")
    rows, extra = [], {}
    for h in hunts:
        d = h.get("detail") or {}
        search = d.get("search") or {}
        runs = store.hunt_runs(db, h["id"])
        rows.append((h["id"], _started(h.get("started")), _hunt_build(h),
                     str(search.get("seeds", "-")), str(len(runs)),
                     f"{h.get('status') or '-'}" + (f" (exit {h['exit_code']})"
                                                    if h.get("exit_code") is not None else ""),
                     str(h.get("summary") or "-")[:160]))
        extra[h["id"]] = [f"  {ln}" for f in store.hunt_findings(db, h["id"])
                          for ln in finding_lines(f, [r for r in runs
                                                      if r.get("finding") == f["finding"]])]
    table = _columns(head, rows)
    out = [table[0]]
    for h, ln in zip(hunts, table[1:], strict=True):
        out.append(ln)
        out += extra[h["id"]]
    return out


def finding_lines(f: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """A hunt's finding: its kind, simulated run, shrunk plan, and each real run that
    replayed it (`confirmed k/K`), and the fidelity gap when real processes passed it."""
    k = len(runs)
    out = [f"finding {f['finding']}: {f.get('kind')}: simulated seed {f.get('seed')} "
           f"(run {f.get('sim_run')}), plan {f.get('plan_file') or '-'}, confirmed on "
           f"real processes {f.get('confirmed') or 0}/{k}"]
    for r in runs:
        out.append(f"  real run {r['real_run']}: {str(r.get('verdict') or '-').upper()}"
                   + (f" {r['kind']}" if r.get("kind") else "") + f" ({r.get('outcome')})")
    gap = f.get("gap")
    if isinstance(gap, dict):
        out.append(f"  fidelity gap: passed on real processes {gap.get('passed')}/"
                   f"{gap.get('of')}; what differed: {gap.get('line')}")
    return out


def hunt_show_lines(db: sqlite_utils.Database, run_id: str) -> list[str]:
    """What `show` says of a run a hunt made or found: the finding it is the simulated
    run of (with every real confirmation), or the finding it confirmed."""
    out = []
    for link in store.hunt_links(db, run_id):
        f = link["finding"]
        if link["role"] == "sim" and f is not None:
            out.append(f"hunt {link['hunt']}: this simulated run is its finding "
                       f"{f['finding']}")
            out += [f"  {ln}" for ln in finding_lines(f, link["runs"])]
        elif f is not None:
            r = link["run"]
            out.append(f"hunt {link['hunt']}: this real run replayed finding {f['finding']} "
                       f"({f.get('kind')}, simulated run {f.get('sim_run')}): "
                       f"{r.get('outcome')}")
            cmp = (r.get("detail") or {}).get("compare") or {}
            if cmp:
                same = cmp.get("match")
                out.append("  protocol events: " + ("the same sequence as simulated" if same
                                                    else "differ: " + ", ".join(
                                                        cmp.get("mismatch") or [])))
        else:
            r = link["run"]
            d = r.get("detail") or {}
            out.append(f"hunt {link['hunt']}: a real run of simulated seed {r.get('seed')}, "
                       f"picked for its rare coverage points "
                       f"({', '.join(d.get('rare_points') or [])}): it reached "
                       f"{len(d.get('reached') or [])} of them")
    return out


def show_lines(db: sqlite_utils.Database, row: Mapping[str, Any]) -> list[str]:
    """`cutover show`: config, verdicts, the first violation, the node table."""
    cfg = store.run_config(row)
    checks = stored_checks(db, row["id"])
    out = [f"run {row['id']}  ({row.get('status') or '?'}, "
           f"{_fmt_duration(row.get('duration_s'))}, started {_started(row.get('started'))})"]
    keys = ("nodes", "workload", "keys", "nemesis", "bugs", "seed", "time_limit", "rate",
            "concurrency", "cutover_at")
    out.append("config: " + " ".join(
        f"{k}={','.join(map(str, cfg[k])) if isinstance(cfg.get(k), list) else cfg.get(k)}"
        for k in keys if k in cfg and cfg[k] not in (None, [], "")))
    verdict = row.get("verdict") or row.get("status") or "-"
    code = row.get("exit_code")
    out.append(f"verdict: {verdict.upper()}" + (f" (exit {code})" if code is not None else ""))
    out += checker_lines(checks, indent="  ")
    if not checks:
        out.append("  (no stored verdicts: the run did not finish; `cutover check` computes "
                   "them)")
    first = first_violation(checks) if checks else None
    if first:
        name, sentence, t = first
        when = f" at {t / 1e9:.1f}s" if isinstance(t, int | float) else ""
        out.append(f"first violation: {name}{when}: {sentence}")
    elif row.get("summary"):
        out.append(f"summary: {row['summary']}")
    out += counterexample_lines(checks.get("linearizability") or {})
    cov = store.coverage_of(db, row["id"])
    if cov:
        out.append(f"{summary_line(cov)} reached: " + ", ".join(
            f"{p}" + (f" x{v['count']}" if v["count"] > 1 else "") for p, v in cov.items()))
    out += hunt_show_lines(db, row["id"])
    nodes = node_table(db, row["id"], checks)
    if nodes:
        out.append("")
        head = ("NODE", "C", "DEK", "APPLIED", "ABOVE-C WRAPPED", "CLEARTEXT", "NO-OP",
                "HALTED")
        rows = [(n["node"], _d(n["cutover"]), _d(n["active"]), _d(n["applied"]),
                 _d(n["above_wrapped"]), _d(n["above_clear"]), _d(n["above_noop"]),
                 ("yes, " + str(n["halt_reason"])) if n["halted"] else "no") for n in nodes]
        out += _columns(head, rows)
    return out


MAX_SHOWN_KEYS = 3  # as `cutover lin` explains at most three failing partitions


def counterexample_lines(lin: Mapping[str, Any]) -> list[str]:
    """The failing keys' counterexamples as `cutover lin` prints them (the explanation the
    checker stored with its verdict: no search again), so `show` names the operations
    without a browser."""
    bad = [k for k in (lin.get("keys") or []) if isinstance(k, Mapping)
           and k.get("verdict") in ("invalid", "unknown") and k.get("explanation")]
    bad.sort(key=lambda k: k.get("verdict") != "invalid")  # invalid first, as lin does
    if not bad:
        return []
    out = ["counterexample (as `cutover lin` prints it):"]
    for k in bad[:MAX_SHOWN_KEYS]:
        out += ["  " + ln for ln in str(k["explanation"]).splitlines()]
    if len(bad) > MAX_SHOWN_KEYS:
        out.append(f"  ... and {len(bad) - MAX_SHOWN_KEYS} more key(s) not valid "
                   f"(`cutover report` draws them all)")
    return out


def coverage_lines(by_run: Mapping[str, set[str]]) -> list[str]:
    """`cutover coverage`: each point with how many runs reached it, then the points no
    run reached, then `coverage: K/M points reached in N runs`."""
    n = len(by_run)
    counts = {p: sum(1 for pts in by_run.values() if p in pts) for p in POINTS}
    width = max(len(p) for p in POINTS)
    out = [f"{'POINT':<{width}}  RUNS  WHAT"]
    for p in sorted(POINTS, key=lambda p: (-counts[p], p)):
        if counts[p]:
            out.append(f"{p:<{width}}  {counts[p]:>4}  {POINTS[p]}")
    never = [p for p in POINTS if not counts[p]]
    if never:
        out.append("")
        out.append(f"never reached ({len(never)}):")
        out += [f"  {p}: {POINTS[p]}" for p in sorted(never)]
    reached = sum(1 for p in POINTS if counts[p])
    out.append("")
    out += _coverage_spread(by_run, counts)
    seeds = sum(1 for k in by_run if "/seed " in k)  # `store.coverage_by_run`'s key
    out.append(f"coverage: {reached}/{len(POINTS)} points reached in {n} runs"
               + (f" ({seeds} of them simulated seeds not stored as runs: passing or "
                  f"vacuous seeds of `cutover sim`, `hunt` or a matrix)" if seeds else ""))
    return out


def _coverage_spread(by_run: Mapping[str, set[str]], counts: Mapping[str, int]) -> list[str]:
    """How the points spread over runs: per run, by a quarter of the runs, and by any 5
    runs together (every 5 of them when that is few enough, else 2000 seeded draws): a
    nightly run is a handful of seeds, so what a handful reaches is what matters."""

    sets = [pts & set(POINTS) for pts in by_run.values()]
    n, m = len(sets), len(POINTS)
    if not n:
        return []
    quarter = math.ceil(n / 4)
    out = [f"per run: {sum(map(len, sets)) / n:.1f} of {m} points on average; "
           f"{sum(1 for c in counts.values() if c >= quarter)}/{m} points reached by at "
           f"least a quarter of the runs ({quarter} of {n})"]
    if n >= 5:
        if math.comb(n, 5) <= 20_000:
            groups = list(itertools.combinations(sets, 5))
            how = f"all {len(groups)} choices"
        else:
            rng = random.Random(0)
            groups = [tuple(rng.sample(sets, 5)) for _ in range(2000)]
            how = "2000 random choices"
        u = [len(set().union(*g)) for g in groups]
        out.append(f"any 5 runs together: min {min(u)}, mean {sum(u) / len(u):.1f} of {m} "
                   f"points ({how})")
    return out
