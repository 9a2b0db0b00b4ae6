"""`kubectl shakeout report -o markdown|html|junit|json|yaml`: the renderers on full run
statuses built here (samples with Fail and Error outcomes and a hole in the series), read
back with real parsers (html.parser, junitparser, json, yaml), not by comparing text."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

import junitparser
import pytest
import yaml

from shakeout.cli import plugin
from shakeout.cli.report import DRY_RUN_HEADLINE
from shakeout.cli.reports import RENDERERS
from shakeout.cli.reports.facts import Verdict, facts
from shakeout.cli.reports.html_page import LEFT, RIGHT, WIDTH, render_html
from shakeout.cli.reports.junit import render_junit
from shakeout.cli.reports.markdown import render_markdown

T0 = datetime(2026, 11, 30, 10, 0, 0, tzinfo=UTC)
SCRIPT = "<script>alert('pwned')</script>"
FINDINGS = f"p99 doubled | under the scale-down\nsecond line {SCRIPT}"


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def latency_samples() -> list[dict[str, Any]]:
    """Every 2 s from +2 to +40: Pass at about 20 ms before the attacks (+10 to +20), Fail
    at 900 ms during them, one Error (no value) at +16, and no probe from +26 to +34 (a
    hole, e.g. the operator restarting)."""
    samples: list[dict[str, Any]] = []
    for second in range(2, 42, 2):
        if 26 <= second <= 34:
            continue
        if second == 16:
            samples.append({"at": at(second), "outcome": "Error"})
        elif 12 <= second <= 20:
            samples.append({"at": at(second), "outcome": "Fail", "value": 900.0 + second})
        else:
            samples.append({"at": at(second), "outcome": "Pass", "value": 20.0 + second / 10})
    return samples


def full_run(**status_changes: Any) -> dict[str, Any]:
    """A run that FAILED on its HTTP check under a scale-down, with findings recorded."""
    status: dict[str, Any] = {
        "phase": "FAILED",
        "reason": "StateCheckFailed",
        "message": "state check web-http failed: GET service web:8080/healthz took 912 ms",
        "startedAt": at(0),
        "finishedAt": at(44),
        "startedBy": {"username": "alice", "groups": ["team-a"]},
        "timeline": [
            {"phase": "CREATED", "time": at(0)},
            {"phase": "PREPARED", "time": at(3)},
            {"phase": "ATTACKS_STARTED", "time": at(10)},
            {"phase": "FAILED", "time": at(44)},
        ],
        "experiment": {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
            "attacks": [
                {
                    "name": "scale-down",
                    "type": "ScaleWorkload",
                    "durationSeconds": 10,
                    "scaleWorkload": {"workload": {"kind": "Deployment", "name": "web"}},
                },
                {"name": "kill-one", "type": "PodDelete"},
            ],
            "stateChecks": [
                {
                    "name": "web-http",
                    "type": "HttpGet",
                    "httpGet": {"service": {"name": "web", "port": 8080}},
                },
                {
                    "name": "web-ready",
                    "type": "WorkloadReady",
                    "workloadReady": {"workload": {"kind": "Deployment", "name": "web"}},
                },
            ],
        },
        "targets": {"matched": 3, "selected": 2, "names": ["web-1", f"web-{SCRIPT}"]},
        "attacks": [
            {
                "name": "scale-down",
                "type": "ScaleWorkload",
                "reversible": True,
                "state": "RolledBack",
                "targets": 2,
                "previousReplicas": 3,
                "appliedAt": at(10),
                "rolledBackAt": at(21),
                "message": "scaled Deployment web from 3 to 1",
            },
            {
                "name": "kill-one",
                "type": "PodDelete",
                "reversible": False,
                "state": "Failed",
                "targets": 0,
                "appliedAt": at(10),
                "message": "pods web-1: forbidden",
            },
        ],
        "stateChecks": [
            {
                "name": "web-http",
                "successes": 12,
                "failures": 5,
                "errors": 1,
                "lastMessage": "GET service web:8080/healthz took 912 ms",
                "lastTime": at(40),
                "unit": "ms",
                "samples": latency_samples(),
            },
            # A check whose probes were not recorded as samples (an older operator).
            {"name": "web-ready", "successes": 20, "failures": 0, "lastMessage": "3 of 3 ready"},
        ],
    }
    status.update(status_changes)
    return {
        "apiVersion": "shakeout.dev/v1alpha1",
        "kind": "ExperimentRun",
        "metadata": {
            "name": "web-resilience-x7k2p",
            "namespace": "team-a",
            "uid": "0a1b",
            "creationTimestamp": at(0),
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {
            "experimentRef": {"name": "web-resilience"},
            "findings": FINDINGS,
            "actionRequired": "Yes",
        },
        "status": status,
    }


def dry_run() -> dict[str, Any]:
    run = full_run(phase="COMPLETED", reason="Completed", message="dry run, nothing applied")
    run["spec"]["dryRun"] = True
    run["status"]["dryRun"] = True
    run["status"]["timeline"][-1] = {"phase": "ATTACKS_STOPPED", "time": at(21)}
    run["status"]["timeline"].append({"phase": "COMPLETED", "time": at(44)})
    for attack in run["status"]["attacks"]:
        attack.update(state="Simulated", targets=0, message=f"would {attack['type']}")
        attack.pop("rolledBackAt", None)
    return run


# Facts: the verdicts every format shares.


def test_the_check_that_ended_the_run_fails_and_the_others_pass() -> None:
    run = facts(full_run())
    assert run.judgement.verdict == Verdict.FAILED
    checks = {c.name: c for c in run.checks}
    assert checks["web-http"].judgement.verdict == Verdict.FAILED
    assert checks["web-http"].type == "HttpGet"
    assert checks["web-ready"].judgement.verdict == Verdict.PASSED
    attacks = {a.result.name: a.judgement.verdict for a in run.attacks}
    assert attacks == {"scale-down": Verdict.PASSED, "kill-one": Verdict.FAILED}


def test_a_check_that_could_not_be_evaluated_is_an_error_not_a_failure() -> None:
    run = facts(
        full_run(
            reason="StateCheckNotEvaluated",
            message="state check web-http could not be evaluated: connection refused",
        )
    )
    assert {c.name: c.judgement.verdict for c in run.checks} == {
        "web-http": Verdict.ERROR,
        "web-ready": Verdict.PASSED,
    }


def test_a_run_ended_by_an_unevaluated_check_is_not_evaluated_rather_than_failed() -> None:
    run = facts(
        full_run(
            reason="StateCheckNotEvaluated",
            message="state check web-http could not be evaluated: connection refused",
        )
    )
    assert run.judgement.verdict == Verdict.ERROR
    assert run.headline.startswith("NOT EVALUATED: run team-a/web-resilience-x7k2p")


def test_the_check_that_ended_the_run_is_found_when_the_message_names_it_otherwise() -> None:
    status = full_run(message="web-http: 912 ms")["status"]
    status["stateChecks"][0]["lastTime"] = at(40)
    status["stateChecks"][1].update(failures=2, lastTime=at(30))  # failed earlier, recovered
    run = facts(full_run(**status))
    assert {c.name: c.judgement.verdict for c in run.checks} == {
        "web-http": Verdict.FAILED,
        "web-ready": Verdict.PASSED,
    }


def test_checks_that_could_not_be_evaluated_while_preparing_are_each_an_error() -> None:
    """A run that waited only on checks that could not be evaluated names them all."""
    run = facts(
        full_run(
            phase="FAILED",
            reason="StateCheckNotEvaluated",
            message="not prepared within 120s: state checks could not be evaluated: "
            "web-http (connection refused), web-ready (forbidden)",
        )
    )
    assert {c.name: c.judgement.verdict for c in run.checks} == {
        "web-http": Verdict.ERROR,
        "web-ready": Verdict.ERROR,
    }


def test_a_check_that_degraded_and_recovered_passes_and_says_when() -> None:
    run = full_run(phase="COMPLETED", reason="Completed", message="fine")
    run["status"]["stateChecks"][0].update(degradedAt=at(12), recoveredAt=at(22))
    assert facts(run).checks[0].judgement.verdict == Verdict.PASSED
    page = Page(render_html(run))
    assert "Degraded at 2026-11-30T10:00:12Z; recovered at 2026-11-30T10:00:22Z." in page.texts
    _, cases = junit_cases(render_junit(run))
    assert kinds(cases["check web-http"]) == []
    out = cases["check web-http"].system_out
    assert "degraded at 2026-11-30T10:00:12Z, recovered at 2026-11-30T10:00:22Z" in out


def test_a_run_passes_only_when_completed() -> None:
    canceled = facts(full_run(phase="CANCELED", reason="Canceled", message="by carol"))
    assert canceled.judgement.verdict == Verdict.FAILED
    assert all(c.judgement.verdict == Verdict.PASSED for c in canceled.checks)
    live = facts(full_run(phase="ATTACKS_STARTED", reason="AttacksStarted", finishedAt=None))
    assert live.judgement.verdict == Verdict.ERROR
    assert live.headline.startswith("NOT FINISHED: ")
    done = facts(full_run(phase="COMPLETED", reason="Completed", message="fine"))
    assert done.judgement.verdict == Verdict.PASSED
    assert done.headline.startswith("PASSED: run team-a/web-resilience-x7k2p")


def test_the_attack_window_runs_from_the_attacks_start_to_their_stop() -> None:
    run = facts(full_run())
    assert run.window is not None
    # No ATTACKS_STOPPED phase (the run failed under the attacks): the last rollback.
    assert (run.window.start, run.window.end) == (
        T0 + timedelta(seconds=10),
        T0 + timedelta(seconds=21),
    )
    stopped = facts(dry_run())
    assert stopped.window is not None
    assert stopped.window.seconds == 11
    assert facts(full_run(timeline=[], attacks=[])).window is None


# Markdown.


def test_markdown_says_the_verdict_first_and_escapes_user_text() -> None:
    text = render_markdown(full_run())
    assert text.splitlines()[0] == (
        "**FAILED: run team-a/web-resilience-x7k2p of web-resilience is FAILED "
        "\\(StateCheckFailed\\)**"
    )
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    # The findings' `|` does not split a table cell, and each of their lines is quoted.
    assert "\n> p99 doubled \\| under the scale-down\n" in text
    assert re.search(r"^> second line &lt;script&gt;", text, re.M)
    # Every table row has as many cells as its header.
    for block in re.findall(r"(?:^\|.*\|$\n?)+", text, re.M):
        rows = [re.split(r"(?<!\\)\|", r)[1:-1] for r in block.strip().splitlines()]
        assert len({len(r) for r in rows}) == 1, block


def test_markdown_shows_each_probe_and_the_attack_window() -> None:
    text = render_markdown(full_run())
    line = next(x for x in text.splitlines() if x.startswith("- web-http: "))
    marks = line.split("`")[1]
    # +4 +6 +8, then [ the window +10..+21: pass at +10, fail +12 +14, error +16, fail
    # +18 +20 ], then +22 +24 +36 +38 +40.
    assert marks == "++++[+xx?xx]+++++"
    assert "- web-ready: no samples recorded for this check" in text


def test_a_dry_runs_markdown_says_so_first() -> None:
    assert render_markdown(dry_run()).splitlines()[0] == f"**{DRY_RUN_HEADLINE}**"


# HTML.


class Page(HTMLParser):
    """The elements of a page, with their attributes and the text inside each."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def find(self, tag: str, css_class: str | None = None) -> list[dict[str, str]]:
        return [
            attrs
            for t, attrs in self.elements
            if t == tag and (css_class is None or css_class in attrs.get("class", "").split())
        ]


def test_the_html_page_charts_every_check_with_samples() -> None:
    page = Page(render_html(full_run()))
    charts = page.find("svg", "chart")
    assert [c["data-check"] for c in charts] == ["web-http"]  # web-ready has no samples
    samples = latency_samples()
    assert len(page.find("rect", "outcome")) == len(samples)
    outcomes = [a["class"].split()[1] for a in page.find("rect", "outcome")]
    assert outcomes == [s["outcome"].lower() for s in samples]
    # A marker per probe that has a value: the Error at +16 has none.
    assert len(page.find("circle", "sample")) == len(samples) - 1
    # The line breaks at the Error and at the hole from +24 to +36.
    assert len(page.find("polyline", "series")) == 3
    (window,) = page.find("rect", "attack-window")
    # The time axis spans the run, 0 to 44 s: the window +10..+21 sits where it should.
    scale = (WIDTH - LEFT - RIGHT) / 44
    assert float(window["x"]) == pytest.approx(LEFT + 10 * scale, abs=0.1)
    assert float(window["width"]) == pytest.approx(11 * scale, abs=0.1)
    fails = [float(c["cx"]) for c in page.find("circle", "fail")]
    assert fails
    assert all(
        float(window["x"]) <= x <= float(window["x"]) + float(window["width"]) for x in fails
    )


def test_a_check_without_samples_says_so() -> None:
    page = Page(render_html(full_run()))
    sections = [a["data-check"] for a in page.find("section", "check")]
    assert sections == ["web-http", "web-ready"]
    (note,) = page.find("p", "no-samples")
    assert note is not None
    assert any("No samples recorded for this check" in t for t in page.texts)


def test_the_html_page_escapes_user_text_and_fetches_nothing() -> None:
    text = render_html(full_run())
    page = Page(text)
    assert not page.find("script")
    assert "<script>" not in text.lower()
    assert SCRIPT in "".join(page.texts)  # shown as text, in the findings and a target
    # Self-contained: nothing is loaded from anywhere.
    for tag, attrs in page.elements:
        for name in ("src", "href"):
            assert name not in attrs, (tag, attrs)
    assert "url(" not in text
    assert "@import" not in text


def test_a_dry_runs_page_says_so_first() -> None:
    text = render_html(dry_run())
    assert text.splitlines()[0] == f"<!-- {DRY_RUN_HEADLINE} -->"
    page = Page(text)
    first = next(attrs for tag, attrs in page.elements if tag == "p")
    assert first["id"] == "headline"
    assert "dry-run" in first["class"]
    assert page.find("text", "attack-label")  # the window is still drawn, marked simulated
    assert any("attacks (simulated)" in t for t in page.texts)


def test_a_check_that_reported_outcomes_only_is_charted_without_a_line() -> None:
    run = full_run()
    for sample in run["status"]["stateChecks"][0]["samples"]:
        sample.pop("value", None)
    page = Page(render_html(run))
    assert len(page.find("rect", "outcome")) == len(latency_samples())
    assert not page.find("polyline", "series")
    assert any("no values" in t for t in page.texts)


# JUnit, read by a real JUnit parser.


def junit_cases(text: str) -> tuple[junitparser.TestSuite, dict[str, junitparser.TestCase]]:
    xml = junitparser.JUnitXml.fromstring(text)
    (suite,) = list(xml) if isinstance(xml, junitparser.JUnitXml) else [xml]
    return suite, {case.name: case for case in suite}


def kinds(case: junitparser.TestCase) -> list[str]:
    return [type(r).__name__ for r in case.result]


def test_junit_has_a_case_per_check_and_attack_and_the_run() -> None:
    suite, cases = junit_cases(render_junit(full_run()))
    assert sorted(cases) == sorted(
        ["run verdict", "check web-http", "check web-ready", "attack scale-down", "attack kill-one"]
    )
    assert kinds(cases["run verdict"]) == ["Failure"]
    assert kinds(cases["check web-http"]) == ["Failure"]
    assert "912 ms" in cases["check web-http"].result[0].message
    assert kinds(cases["check web-ready"]) == []
    assert kinds(cases["attack scale-down"]) == []
    assert kinds(cases["attack kill-one"]) == ["Failure"]
    assert cases["attack scale-down"].time == 11
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (5, 3, 0, 0)
    assert suite.name == "team-a/web-resilience-x7k2p"


def test_junit_marks_an_unevaluated_check_as_an_error() -> None:
    run = full_run(
        reason="StateCheckNotEvaluated",
        message="state check web-http could not be evaluated: connection refused",
    )
    suite, cases = junit_cases(render_junit(run))
    assert kinds(cases["check web-http"]) == ["Error"]
    # Nothing says the system did not hold: the run is an error too, kill-one a failure.
    assert kinds(cases["run verdict"]) == ["Error"]
    assert (suite.failures, suite.errors) == (1, 2)


def test_a_dry_runs_junit_says_so_first_and_skips_its_attacks() -> None:
    text = render_junit(dry_run())
    assert text.splitlines()[0] == f"<!-- {DRY_RUN_HEADLINE} -->"
    suite, cases = junit_cases(text)
    assert suite.name.startswith("DRY RUN ")
    assert kinds(cases["attack scale-down"]) == ["Skipped"]
    assert kinds(cases["attack kill-one"]) == ["Skipped"]
    assert kinds(cases["run verdict"]) == []
    assert (suite.tests, suite.failures, suite.skipped) == (5, 0, 2)
    props = {p.name: p.value for p in suite.properties()}
    assert props["dryRun"] == "true"
    (skipped,) = cases["attack kill-one"].result
    assert skipped.message == "dry run, nothing applied: would PodDelete"
    noted = dry_run()
    noted["status"]["attacks"][1]["message"] = "dry run: would delete 2 pod(s)"
    _, cases = junit_cases(render_junit(noted))
    assert cases["attack kill-one"].result[0].message == "dry run: would delete 2 pod(s)"


def test_junit_carries_any_user_text_as_well_formed_xml(tmp_path: Path) -> None:
    run = full_run()
    run["spec"]["findings"] = "a -- b\x1b[31m\x00 ]]> <x/> &amp; end"
    run["status"]["attacks"][1]["message"] = 'quote " and <tag> --> end'
    path = tmp_path / "report.xml"
    path.write_text(render_junit(run), encoding="utf-8")
    xml = junitparser.JUnitXml.fromfile(str(path))
    (suite,) = list(xml)
    (kill,) = [c for c in suite if c.name == "attack kill-one"]
    assert kill.result[0].message == 'quote " and <tag> --> end'


# JSON and YAML.


def test_json_is_the_run_plus_the_computed_report() -> None:
    text = RENDERERS["json"](full_run())
    doc = json.loads(text)
    assert doc["status"]["phase"] == "FAILED"  # read as before
    assert "managedFields" not in doc["metadata"]
    report = doc["report"]
    assert report["verdict"] == "failed"
    assert report["attackWindow"]["seconds"] == 11
    http = next(c for c in report["checks"] if c["name"] == "web-http")
    assert (http["pass"], http["fail"], http["error"], http["unit"]) == (10, 4, 1, "ms")
    assert (http["min"], http["max"]) == (20.2, 920.0)
    assert report["tests"] == {"total": 5, "passed": 2, "failed": 3, "error": 0, "skipped": 0}
    # Stable: the same run gives the same text, and keys are sorted.
    assert RENDERERS["json"](copy.deepcopy(full_run())) == text
    assert list(doc["report"]) == sorted(doc["report"])


def test_the_json_and_yaml_headline_is_on_the_first_line() -> None:
    first = RENDERERS["json"](dry_run()).splitlines()[0]
    assert DRY_RUN_HEADLINE in first
    assert json.loads(RENDERERS["json"](dry_run()))["headline"] == DRY_RUN_HEADLINE
    text = RENDERERS["yaml"](dry_run())
    assert text.splitlines()[0] == f"# {DRY_RUN_HEADLINE}"
    assert yaml.safe_load(text)["report"]["dryRun"] is True


def test_a_run_not_yet_picked_up_renders_in_every_format() -> None:
    fresh = {
        "metadata": {"name": "r1", "namespace": "team-a"},
        "spec": {"experimentRef": {"name": "e1"}},
    }
    for render in RENDERERS.values():
        assert "r1" in render(fresh)
    assert facts(fresh).judgement.verdict == Verdict.ERROR


# The plugin.


class OneRun:
    served: ClassVar[dict[str, Any]] = {}

    def __init__(self, namespace: str | None) -> None:
        self.namespace = namespace or "default"

    def run(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self.served)


@pytest.mark.parametrize("output", ["markdown", "html", "junit", "json", "yaml"])
def test_report_output_prints_the_format_and_exits_as_before(
    output: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(plugin, "Cluster", OneRun)
    OneRun.served = full_run()
    assert plugin.main(["report", "web-resilience-x7k2p", "-n", "team-a", "-o", output]) == 0
    assert capsys.readouterr().out == RENDERERS[output](full_run())
