"""A run's report as JUnit XML, so that a CI or GitOps pipeline can gate on a run with the
test-report step it already has.

The common schema (Ant's, as Jenkins, GitLab and GitHub read it): `<testsuites>` with one
`<testsuite>` for the run and, in it, one `<testcase>` per state check and per attack,
plus one for the run's own verdict (a run can fail with every check and attack fine, e.g.
when an agent disconnects, and a gate must not pass it). A refuted check or a failed
attack is a `<failure>`, a check that could not be evaluated or a rollback still pending
an `<error>`, a dry run's attacks `<skipped>`.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from shakeout.api.run import CheckOutcome
from shakeout.cli.report import clean
from shakeout.cli.reports.facts import Judgement, Verdict, facts, shown_time

# XML 1.0 cannot carry these at all, escaped or not.
_NOT_XML = re.compile("[\ud800-\udfff\ufffe\uffff]")


def _text(value: Any, *, multiline: bool = False) -> str:
    return _NOT_XML.sub("", clean(value, multiline=multiline))


def render_junit(obj: dict[str, Any]) -> str:
    run = facts(obj)
    suite_name = f"{run.namespace}/{run.name}"
    cases: list[ET.Element] = [
        _case(suite_name, "run", "verdict", run.judgement, run.duration_seconds)
    ]
    for check in run.checks:
        system_out = (
            f"{check.tally.successes} successes, {check.tally.failures} failures, "
            f"{check.tally.errors} could not be evaluated; "
            f"samples: {check.count(CheckOutcome.PASS)} pass, "
            f"{check.count(CheckOutcome.FAIL)} fail, {check.count(CheckOutcome.ERROR)} error"
            + (
                f"; degraded at {shown_time(check.tally.degraded_at)}"
                if check.tally.degraded_at
                else ""
            )
            + (
                f", recovered at {shown_time(check.tally.recovered_at)}"
                if check.tally.recovered_at
                else ""
            )
            + (f"; last: {check.tally.last_message}" if check.tally.last_message else "")
        )
        cases.append(
            _case(suite_name, "check", check.name, check.judgement, None, system_out=system_out)
        )
    for attack in run.attacks:
        a = attack.result
        seconds = (
            (a.rolled_back_at - a.applied_at).total_seconds()
            if a.applied_at and a.rolled_back_at
            else None
        )
        out = f"{a.type}, {'reversible' if a.reversible else 'cannot be rolled back'}, {a.state}"
        if attack.started is not None:
            out += f"; started {shown_time(attack.started)}, ended {shown_time(attack.ended)}"
        if a.target_names:
            out += f"; targets: {', '.join(a.target_names)}"
        cases.append(_case(suite_name, "attack", a.name, attack.judgement, seconds, system_out=out))

    def counted(verdict: Verdict) -> str:
        return str(sum(1 for c in cases if c.get("verdict") == verdict.value))

    suite = ET.Element(
        "testsuite",
        {
            "name": _text(("DRY RUN " if run.dry_run else "") + suite_name),
            "tests": str(len(cases)),
            "failures": counted(Verdict.FAILED),
            "errors": counted(Verdict.ERROR),
            "skipped": counted(Verdict.SKIPPED),
            "time": _seconds(run.duration_seconds),
        },
    )
    status = run.run.status
    if status is not None and status.started_at is not None:
        suite.set("timestamp", shown_time(status.started_at))
    properties = ET.SubElement(suite, "properties")
    for key, value in (
        ("experiment", run.experiment),
        ("phase", run.phase),
        ("reason", (status.reason if status else None) or ""),
        ("dryRun", "true" if run.dry_run else "false"),
        ("actionRequired", run.run.spec.action_required or ""),
        ("headline", run.headline),
    ):
        ET.SubElement(properties, "property", {"name": key, "value": _text(value)})
    for case in cases:
        del case.attrib["verdict"]
        suite.append(case)
    if run.run.spec.findings:
        ET.SubElement(suite, "system-out").text = _text(
            "Findings: " + run.run.spec.findings, multiline=True
        )
    root = ET.Element(
        "testsuites",
        {
            "name": "shakeout",
            "tests": suite.get("tests", "0"),
            "failures": suite.get("failures", "0"),
            "errors": suite.get("errors", "0"),
            "skipped": suite.get("skipped", "0"),
        },
    )
    root.append(suite)
    ET.indent(root)
    body = ET.tostring(root, encoding="unicode")
    # The first line says what the report is. A comment may precede the root element;
    # the XML declaration is left out (UTF-8 is XML's default), as it would have to come
    # first.
    head = f"<!-- {_comment(run.headline)} -->"
    return f"{head}\n{body}\n"


def _comment(text: str) -> str:
    """A text that may stand in an XML comment: never `--`."""
    return re.sub(r"-(?=-)", "- ", _text(text)).rstrip("-")


def _seconds(value: float | None) -> str:
    return f"{value:.3f}" if value is not None else "0"


def _case(
    suite: str,
    kind: str,
    name: str,
    judgement: Judgement,
    seconds: float | None,
    *,
    system_out: str = "",
) -> ET.Element:
    case = ET.Element(
        "testcase",
        {
            "classname": _text(f"{suite}.{kind}"),
            "name": _text(f"{kind} {name}"),
            "time": _seconds(seconds),
            "verdict": judgement.verdict.value,  # counted, then removed
        },
    )
    message = _text(judgement.message)
    if judgement.verdict == Verdict.FAILED:
        ET.SubElement(case, "failure", {"message": message, "type": kind}).text = message
    elif judgement.verdict == Verdict.ERROR:
        ET.SubElement(case, "error", {"message": message, "type": kind}).text = message
    elif judgement.verdict == Verdict.SKIPPED:
        ET.SubElement(case, "skipped", {"message": message})
    if system_out:
        ET.SubElement(case, "system-out").text = _text(system_out)
    return case
