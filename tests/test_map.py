"""The executable map: what docs/architecture.md promises about the code's shape,
checked on every fast run, so a newcomer learns what they may touch from a red test
rather than from prose that has drifted (issue 24).

Cheap on purpose: it parses source files and imports a few light modules; no process,
no simulated run.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.conftest import REPO

PRODUCT = ("node", "nemesis", "checker", "workloads", "orchestrator")
ARCH = REPO / "docs" / "architecture.md"

# In-function imports are the orchestrator CLI's start-up choice (each command imports
# what it runs: docs/architecture.md, "The orchestrator's top layer"). Anywhere else an
# import inside a function needs its reason here.
IN_FUNCTION_IMPORTS = {
    "orchestrator/cli/": "a command imports the modules it runs when it runs (start-up time)",
    "orchestrator/run/config.py": "the node's lists and SQLite are not for the CLI's start-up",
    "orchestrator/bench.py": "edn_format is an optional package, only `bench edn` uses it",
    "node/server.py": "cProfile, only when a node is asked to profile itself",
}
MAX_MODULE_LINES = 800
MAX_FUNCTION_LINES = 80


def _modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for top in PRODUCT:
        for f in sorted((REPO / top).rglob("*.py")):
            rel = f.relative_to(REPO)
            name = ".".join(rel.with_suffix("").parts)
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            yield name, f, ast.parse(f.read_text(encoding="utf-8"), str(rel))


def _imports(name: str, f: Path, tree: ast.Module) -> Iterator[tuple[str, int, bool]]:
    """(imported module or module.name, line, inside a function) for each project import."""
    package = name if f.name == "__init__.py" else name.rpartition(".")[0]

    def walk(node: ast.AST, in_fn: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child.lineno, in_fn
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - (child.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for a in child.names:
                    yield f"{base}.{a.name}", child.lineno, in_fn
            else:
                yield from walk(child, fn)

    for target, line, in_fn in walk(tree, False):
        if target.split(".")[0] in PRODUCT:
            yield target, line, in_fn


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rooms() -> dict[str, list[str]]:
    """The table "Rooms, and what each may import": room -> the prefixes it may import."""
    text = ARCH.read_text(encoding="utf-8")
    section = text.split("## Rooms, and what each may import", 1)[1].split("\n## ", 1)[0]
    rooms: dict[str, list[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        room = cells[0].strip("`")
        allowed = cells[2]
        rooms[room] = ["*"] if allowed.startswith("everything") else \
            re.findall(r"`([\w.]+)`", allowed.split(" (")[0])
    return rooms


def _room_of(name: str, rooms: dict[str, list[str]]) -> str | None:
    best = [r for r in rooms if _under(name, r)]
    return max(best, key=len) if best else None


def test_every_product_module_has_a_room_in_the_map() -> None:
    rooms = _rooms()
    assert {"node", "checker", "nemesis", "orchestrator.run", "orchestrator.real",
            "orchestrator.sim"} <= set(rooms), sorted(rooms)
    # A top-level package's own __init__ (`orchestrator`) is the folder, not a room.
    homeless = [n for n, _, _ in _modules() if n not in PRODUCT and _room_of(n, rooms) is None]
    assert not homeless, f"modules in no room of docs/architecture.md: {homeless}"


def test_imports_between_rooms_are_the_ones_the_map_allows() -> None:
    rooms = _rooms()
    bad = []
    for name, f, tree in _modules():
        room = _room_of(name, rooms)
        if room is None:  # a top-level package's __init__: it may import nothing
            room = name
            rooms = {**rooms, name: []}
        for target, line, _ in _imports(name, f, tree):
            if _room_of(target, rooms) == room or _under(target, room):
                continue
            if not any(_under(target, a) for a in rooms[room]):
                bad.append(f"{f.relative_to(REPO)}:{line} ({room}) imports {target}")
    assert not bad, "imports the map (docs/architecture.md) does not allow:\n" + "\n".join(bad)


def test_the_map_check_can_fail() -> None:
    """The checker of the map is not vacuous: an import the table forbids is caught."""
    rooms = _rooms()
    tree = ast.parse("def f():\n    from orchestrator.real import cluster\n")
    targets = list(_imports("orchestrator.sim.x", REPO / "orchestrator/sim/x.py", tree))
    assert targets == [("orchestrator.real.cluster", 2, True)]
    assert not any(_under(targets[0][0], a) for a in rooms["orchestrator.sim"])
    assert not any(_under("node.cutover", a) for a in rooms["checker"])


def test_no_in_function_imports_outside_the_allow_list() -> None:
    found = []
    for _name, f, tree in _modules():
        rel = f.relative_to(REPO).as_posix()
        if any(rel.startswith(k) for k in IN_FUNCTION_IMPORTS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        found.append(f"{rel}:{sub.lineno}")
    assert not found, ("imports inside functions (hoist them, or add the file and its "
                       f"reason to IN_FUNCTION_IMPORTS): {sorted(set(found))}")


def test_modules_and_functions_stay_small() -> None:
    """No module over 800 lines; a function over 80 lines has its reason in a comment
    right above it (a hot loop kept whole, a table built in one place)."""
    big, long_fns = [], []
    for _name, f, tree in _modules():
        lines = f.read_text(encoding="utf-8").splitlines()
        rel = f.relative_to(REPO).as_posix()
        if len(lines) > MAX_MODULE_LINES:
            big.append(f"{rel} ({len(lines)} lines)")
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            above = lines[first - 2].strip() if first >= 2 else ""
            if n > MAX_FUNCTION_LINES and not above.startswith("#"):
                long_fns.append(f"{rel}:{node.lineno} {node.name} ({n} lines)")
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"
    assert not long_fns, f"functions over {MAX_FUNCTION_LINES} lines without a reason: {long_fns}"


def test_every_event_kind_is_documented_in_the_protocol() -> None:
    from node.events import EventKind

    doc = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    missing = [k.value for k in EventKind if f"`{k.value}`" not in doc]
    assert not missing, f"EventKind values with no row in docs/protocol.md: {missing}"


def test_every_fault_kind_has_a_handler_an_undo_and_a_family() -> None:
    """A fault kind is one record (`nemesis/faults.py`); the tables others read
    (`ACTIONS`, `HANDLERS`) are derived from the records, so none can lack the other."""
    from nemesis import faults
    from nemesis.primitives import ACTIONS

    kinds = faults.KINDS
    assert set(ACTIONS) <= set(kinds), set(ACTIONS) - set(kinds)
    for name in ACTIONS:
        k = kinds[name]
        assert callable(k.handler) and faults.HANDLERS[name] is k.handler, name
        assert k.final is not None, name
        assert k.family in faults.FAMILIES + faults.OPT_IN_FAMILIES, (name, k.family)


def _choices(cmd: click.Command, param: str) -> list[str]:
    for p in cmd.params:
        if p.name == param:
            assert isinstance(p.type, click.Choice), (cmd.name, param)
            return list(p.type.choices)
    raise AssertionError(f"{cmd.name} has no parameter {param}")


def test_cli_choices_are_their_owners_tuples() -> None:
    """A choice list written in the CLI drifts from the list that decides; each equals
    its owner's tuple."""
    import checker
    from nemesis import SCENARIOS
    from orchestrator import cli
    from orchestrator.nightly.matrix import ENGINES
    from orchestrator.run.config import PROFILE_NAMES
    from orchestrator.search.detection import MODES
    from orchestrator.store.export import FORMATS as EXPORT_FORMATS
    from workloads.generator import WORKLOADS

    main = cli.main
    assert isinstance(main, click.Group)
    bench = main.commands["bench"]
    assert isinstance(bench, click.Group)
    pairs = [
        (_choices(main.commands["lin"], "fmt"), checker.FORMATS),
        (_choices(main.commands["lin"], "model"), tuple(checker.MODELS)),
        (_choices(main.commands["export"], "fmt"), EXPORT_FORMATS),
        (_choices(main.commands["matrix"], "engine"), ENGINES),
        (_choices(bench.commands["detection"], "mode"), MODES),
        (_choices(bench.commands["detection"], "scenario"), SCENARIOS),
        (_choices(bench.commands["coverage"], "scenario"), SCENARIOS),
    ]
    for name in ("run", "sim", "hunt"):
        pairs.append((_choices(main.commands[name], "scenario"), SCENARIOS))
        pairs.append((_choices(main.commands[name], "profile"), PROFILE_NAMES))
    # The config orders the workloads so that its first is the default; the set is the
    # generator's.
    assert sorted(_choices(main.commands["run"], "workload")) == sorted(WORKLOADS)
    for got, owner in pairs:
        assert tuple(got) == tuple(owner), (got, owner)


@pytest.mark.parametrize("doc", ["architecture.md", "sim.md", "run.md", "testing.md"])
def test_paths_the_docs_name_exist(doc: str) -> None:
    """Every `dir/file.py` a doc names in backticks is there (moved files leave none
    behind)."""
    text = (REPO / "docs" / doc).read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:node|nemesis|checker|workloads|orchestrator|tests)"
                           r"/[\w/]+\.py)", text))
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"docs/{doc} names files that do not exist: {missing}"
