"""JUnit XML for nightly CI: one test case per build and seed; a failure carries the
first violation, so the CI page says what broke without opening the run."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any


def write_junit(path: str, suite_name: str, cases: Iterable[tuple[str, Any]],
                expect_invalid: bool = False) -> None:
    """`cases` are (build, RunOutcome). A bug build *should* be caught: for it (or with
    `expect_invalid`), a valid run is the failure ("escaped")."""
    cases = list(cases)
    suite = ET.Element("testsuite", name=suite_name, tests=str(len(cases)))
    failures = errors = 0
    total = 0.0
    for build, o in cases:
        name = f"{build} seed={o.seed}"
        tc = ET.SubElement(suite, "testcase", classname=f"cutover.{build}", name=name,
                           time=f"{o.seconds:.3f}")
        total += o.seconds
        # A row of a matrix may name its mode or profile after the build ("fixed [churn]").
        wants_bug = expect_invalid or build.split(" ")[0] != "fixed"
        if o.verdict in ("aborted", "error"):
            errors += 1
            ET.SubElement(tc, "error", message=o.summary[:500], type=o.verdict).text = o.summary
        elif wants_bug and o.verdict == "valid":
            failures += 1
            ET.SubElement(tc, "failure", message=f"{build} escaped: every checker passed",
                          type="escaped").text = o.summary
        elif not wants_bug and o.verdict != "valid":
            failures += 1
            first = o.first[1] if o.first else o.summary
            ET.SubElement(tc, "failure", message=str(first)[:500],
                          type=o.first[0] if o.first else o.verdict).text = o.summary
        ET.SubElement(tc, "system-out").text = f"run {o.run_id}: {o.summary}"
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("time", f"{total:.3f}")
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
