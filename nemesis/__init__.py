"""Faults as data: a schedule is a pure function of the seed (and the run's shape), and
the executors (real processes in `orchestrator/`, the deterministic simulator) turn each
step into process signals, network rules or admin requests, through the handlers of the
fault kinds (`faults.KINDS`: one record per kind), which act on a `World` they are given.
Nothing here touches a process or a socket, so a schedule can be printed, stored with the
run, compared across runs and replayed.
"""
from __future__ import annotations

from .faults import KINDS, OPT_IN_FAMILIES, FaultKind
from .grudges import bridge, complete, halves, isolate, majorities_ring, star
from .plan import SCENARIOS, Plan, PlanError, make_plan, parse_families
from .primitives import ACTIONS, FAMILIES, Step, Target, When

__all__ = ["ACTIONS", "FAMILIES", "KINDS", "OPT_IN_FAMILIES", "SCENARIOS", "FaultKind", "Plan",
           "PlanError", "Step", "Target", "When", "bridge", "complete", "halves", "isolate",
           "majorities_ring", "make_plan", "parse_families", "star"]
