"""Simulation kits only the tests use: bare Raft cores on a seeded network (`raftsim`)
and hand-written protocol scenarios over the simulator's cluster (`scenario`).

They drive the product's own code (node/, orchestrator/sim/) but are not part of it, so
they live beside the tests that import them (issue 24: nothing in orchestrator/ is
imported only by tests).
"""
