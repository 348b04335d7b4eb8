"""The run list of `cutover serve` (`/`), made for triage: a 140-run nightly is one long
list unless it says at the top how many runs of each verdict there are, and lets a
reader keep only (or group by) one matrix, hunt, build, world or verdict.

Filters and grouping are query parameters (`/?verdict=invalid&group=build`) and every
choice is a plain link: the pages' Content-Security-Policy allows no form submission
and no script, and a link can be pasted into a bug report as it is.

A simulated run says so (`sim`) and shows both its simulated seconds and the wall time
its seed took; a real run's duration is wall time.
"""
from __future__ import annotations

import datetime as dt
import urllib.parse
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator import store
from orchestrator.ui.render import page, verdict_class

# The dimensions a reader filters or groups by, in the order they are offered.
DIMENSIONS = ("verdict", "world", "build", "matrix", "hunt")
VERDICT_ORDER = ("invalid", "unknown", "crashed", "error", "aborted", "running", "valid")


def wall_seconds(row: Mapping[str, Any]) -> float | None:
    """started..finished in seconds, or None when they are missing or equal (a
    simulated run stored before its wall time was)."""
    try:
        a = dt.datetime.fromisoformat(str(row.get("started")))
        b = dt.datetime.fromisoformat(str(row.get("finished")))
    except ValueError:
        return None
    s = (b - a).total_seconds()
    return s if s > 0 else None


def duration_text(row: Mapping[str, Any]) -> str:
    """A real run's wall time; a simulated run's simulated seconds and wall time."""
    d = row.get("duration_s")
    if row.get("source") != "sim":
        return "" if d is None else f"{float(d):.1f} s"
    wall = wall_seconds(row)
    sim = "-" if d is None else f"{float(d):.1f} s"
    return f"{sim} simulated · " + ("wall not recorded" if wall is None else
                                   f"{wall:.1f} s wall")


def build_of(row: Mapping[str, Any], cfg: Mapping[str, Any]) -> str:
    """The build a run tested: its bug switches (or `fixed`), under its profile: the
    elastickv profile as it stands is `elastickv` (not "elastickv: fixed", which reads
    as a fixed elastickv)."""
    bugs = str(row.get("bugs") or "")
    profile = cfg.get("profile")
    if profile in (None, "", "fixed"):
        return bugs or "fixed"
    return f"{profile}: {bugs}" if bugs else str(profile)


def run_items(db: Any) -> list[dict[str, Any]]:
    """Every run as the list shows it, with the dimensions it can be filtered by."""
    hunt_of: dict[str, str] = {}
    for h in store.hunts(db):
        for r in store.hunt_runs(db, h["id"]):
            hunt_of.setdefault(str(r.get("real_run")), h["id"])
        for f in store.hunt_findings(db, h["id"]):
            if f.get("sim_run"):
                hunt_of.setdefault(str(f["sim_run"]), h["id"])
    out = []
    for r in store.runs(db):
        cfg = store.run_config(r)
        q = urllib.parse.quote(r["id"])
        out.append({
            "id": r["id"], "href": f"/run/{q}/",
            "verdict": verdict_class(r.get("verdict"), r.get("status")),
            "started": str(r.get("started") or "").replace("T", " ")[:19],
            "duration": duration_text(r), "workload": r.get("workload"),
            "nemesis": r.get("nemesis"), "seed": r.get("seed"),
            "summary": r.get("summary") or "",
            "world": "sim" if r.get("source") == "sim" else "real",
            "build": build_of(r, cfg), "matrix": r.get("matrix") or "none",
            "hunt": hunt_of.get(r["id"], "none")})
    return out


def _href(query: Mapping[str, str], **change: str | None) -> str:
    q = {k: v for k, v in {**query, **change}.items() if v}
    return "/" + ("?" + urllib.parse.urlencode(q) if q else "")


def _value_order(dim: str, values: Sequence[str]) -> list[str]:
    if dim == "verdict":
        return sorted(values, key=lambda v: (VERDICT_ORDER.index(v)
                                             if v in VERDICT_ORDER else 99, v))
    return sorted(values, key=lambda v: (v == "none", v))


def facets(items: Sequence[Mapping[str, Any]], query: Mapping[str, str]
           ) -> list[dict[str, Any]]:
    """Per dimension, its values with their counts among the runs the other filters
    keep, each a link that sets (or, when set, clears) that filter."""
    out = []
    for dim in DIMENSIONS:
        others = {k: v for k, v in query.items() if k in DIMENSIONS and k != dim}
        pool = [i for i in items if all(str(i[k]) == v for k, v in others.items())]
        counts = Counter(str(i[dim]) for i in pool)
        if len(counts) <= 1 and dim not in query:
            continue  # nothing to choose
        values = [{"value": v, "count": counts[v], "active": query.get(dim) == v,
                   "href": _href(query, **{dim: None if query.get(dim) == v else v})}
                  for v in _value_order(dim, list(counts))]
        out.append({"dim": dim, "choices": values,
                    "clear": _href(query, **{dim: None}) if dim in query else None})
    return out


def index_page(results: str, nonce: str | None = None,
               query: Mapping[str, str] | None = None) -> str:
    """`/`: the counts, the filters and groupings, the runs (newest first, grouped when
    asked), then the hunts, each finding with its runs, its shrunk plan and the two
    commands that replay it."""
    query = {k: v for k, v in (query or {}).items() if k in DIMENSIONS + ("group",) and v}
    with store.opened(results) as db:
        items = run_items(db)
        hunts = hunt_rows(db, results)
    shown = [i for i in items if all(str(i[k]) == v for k, v in query.items()
                                     if k in DIMENSIONS)]
    by_verdict = Counter(i["verdict"] for i in shown)
    counts = [{"verdict": v, "count": by_verdict[v], "href": _href(query, verdict=v)}
              for v in _value_order("verdict", list(by_verdict))]
    worlds = Counter(i["world"] for i in shown)
    group = query.get("group") if query.get("group") in DIMENSIONS else None
    groups = []
    if group:
        keys = _value_order(group, list({str(i[group]) for i in shown}))
        for k in keys:
            members = [i for i in shown if str(i[group]) == k]
            c = Counter(i["verdict"] for i in members)
            groups.append({"label": f"{group} {k}", "runs": members,
                           "counts": ", ".join(f"{c[v]} {v}" for v in
                                               _value_order("verdict", list(c)))})
    else:
        groups.append({"label": None, "runs": shown, "counts": ""})
    return page("index.html", nonce=nonce, title="cutover results", total=len(items),
                shown=len(shown), counts=counts, worlds=worlds, facets=facets(items, query),
                grouping=[{"dim": d, "active": d == group,
                           "href": _href(query, group=None if d == group else d)}
                          for d in DIMENSIONS],
                filtered=any(k in DIMENSIONS for k in query), clear_all=_href({}),
                groups=groups, hunts=hunts)


def _run_href(run_id: Any) -> str | None:
    return f"/run/{urllib.parse.quote(str(run_id))}/" if run_id else None


def _plan_href(sim_run: Any, plan: Any) -> str | None:
    """The shrunk plan in its simulated run's file browser, when it is in that run's
    directory (where `cutover hunt` writes it)."""
    if not sim_run or not isinstance(plan, str) or not plan.startswith(f"{sim_run}/"):
        return None
    return f"{_run_href(sim_run)}files/{urllib.parse.quote(plan[len(sim_run) + 1:])}"


def _finding(f: Mapping[str, Any], mine: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    gap = f.get("gap") if isinstance(f.get("gap"), dict) else None
    plan = f.get("plan_file")
    return {
        "n": f["finding"], "kind": f.get("kind"), "seed": f.get("seed"),
        "sentence": f.get("sentence") or "", "sim_run": f.get("sim_run"),
        "sim_href": _run_href(f.get("sim_run")), "plan": plan,
        "plan_href": _plan_href(f.get("sim_run"), plan),
        "replay": [f"cutover sim --replay RESULTS/{plan} --results RESULTS",
                   f"cutover run --plan RESULTS/{plan} --results RESULTS"] if plan else [],
        "confirmed": f.get("confirmed") or 0, "attempts": len(mine),
        "gap": None if gap is None else str(gap.get("line") or ""),
        "runs": [{"id": r["real_run"], "href": _run_href(r["real_run"]),
                  "verdict": verdict_class(r.get("verdict"), None),
                  "outcome": r.get("outcome"), "kind": r.get("kind") or ""}
                 for r in mine]}


def hunt_rows(db: Any, results: str = "RESULTS") -> list[dict[str, Any]]:
    """The hunts for the index page: each with its findings, each finding with its
    simulated run, its shrunk plan and how to replay it (simulated and on real
    processes), and the real runs that replayed it (links); the rare-coverage runs."""
    out = []
    for h in store.hunts(db):
        runs = store.hunt_runs(db, h["id"])
        findings = []
        for f in store.hunt_findings(db, h["id"]):
            item = _finding(f, [r for r in runs if r.get("finding") == f["finding"]])
            item["replay"] = [c.replace("RESULTS", results) for c in item["replay"]]
            findings.append(item)
        rare = [{"id": r["real_run"], "href": _run_href(r["real_run"]), "seed": r.get("seed"),
                 "verdict": verdict_class(r.get("verdict"), None),
                 "points": ", ".join((r.get("detail") or {}).get("rare_points") or [])}
                for r in runs if r.get("role") == "rare"]
        cfg = (h.get("config") or {}).get("run") or {} if isinstance(h.get("config"), dict) \
            else {}
        out.append({"id": h["id"], "started": str(h.get("started") or "").replace("T", " ")[:19],
                    "build": ",".join(cfg.get("bugs") or []) or cfg.get("profile") or "fixed",
                    "status": h.get("status") or "", "summary": h.get("summary") or "",
                    "seeds": ((h.get("detail") or {}).get("search") or {}).get("seeds"),
                    "findings": findings, "rare": rare})
    return out
