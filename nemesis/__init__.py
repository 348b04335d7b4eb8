"""Faults as data: a schedule is a pure function of the seed (and the run's shape), and
the executor in `orchestrator/` turns each fault into process signals, switchboard rules
or admin requests. Nothing here touches a process or a socket, so a schedule can be
printed, stored with the run, compared across runs and replayed.
"""
from __future__ import annotations

from .grudges import bridge, complete, halves, isolate, majorities_ring, star
from .plan import FAMILIES, Fault, Plan, Trigger, make_plan, parse_families

__all__ = ["FAMILIES", "Fault", "Plan", "Trigger", "bridge", "complete", "halves",
           "isolate", "majorities_ring", "make_plan", "parse_families", "star"]
