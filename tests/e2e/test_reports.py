"""Reports to hand on, end to end: real runs on the sandbox rendered by the real
`kubectl shakeout report -o markdown|html|junit|json|yaml`, the HTML page opened in a real
headless browser (Debian's Chromium: `make report-tools`) with its screenshot saved under
.cache/test-reports/, and the JUnit output read by a real JUnit parser (junitparser).

Every check that has samples must be charted, and one without must say so: real runs
record samples once the executor does (issue 15 item 2); until then each check says so,
and the chart itself is opened in the browser from a full status built in the unit tests.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import junitparser
import pytest
import yaml

from shakeout.cli.report import DRY_RUN_HEADLINE
from shakeout.cli.reports.html_page import render_html
from tests.e2e.conftest import REPO, Cluster
from tests.e2e.runs import TEAM, deployment, scale_experiment
from tests.unit.test_reports import SCRIPT, full_run, latency_samples

REPORTS = REPO / ".cache" / "test-reports"
WINDOW = (1200, 2200)
FINDINGS = f"checkout held; a finding with {SCRIPT} in it"

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    # Never skip: CI must fail when the browser cannot be had.
    pytest.fail("no chromium on PATH: `make report-tools` installs Debian's package")


class Dom(HTMLParser):
    """What the browser rendered (its --dump-dom), as elements with attributes and the
    text of the document."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []
        self.texts: list[str] = []
        self.source = text
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self.texts.append(data)

    def find(self, tag: str, css_class: str | None = None, **attrs: str) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.elements
            if t == tag
            and (css_class is None or css_class in a.get("class", "").split())
            and all(a.get(k.replace("_", "-")) == v for k, v in attrs.items())
        ]

    @property
    def text(self) -> str:
        return "".join(self.texts)


def browse(chromium: str, page: Path, screenshot: Path, profile: Path) -> Dom:
    """Open the page headless, as a person would: a screenshot, then the DOM the browser
    built from it."""
    base = [
        chromium,
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        # Nothing may be fetched: any host a page would name resolves nowhere.
        "--host-resolver-rules=MAP * ~NOTFOUND",
    ]
    if os.geteuid() == 0:
        base.append("--no-sandbox")  # Chromium refuses to run as root otherwise
    url = page.resolve().as_uri()
    shot = subprocess.run(
        [*base, f"--screenshot={screenshot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert shot.returncode == 0, shot.stderr[-3000:]
    png = screenshot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert struct.unpack(">II", png[16:24]) == WINDOW  # IHDR: width, height
    dom = subprocess.run(
        [*base, "--dump-dom", url], capture_output=True, text=True, timeout=180, check=False
    )
    assert dom.returncode == 0, dom.stderr[-3000:]
    return Dom(dom.stdout)


def assert_charts(dom: Dom, run: Obj) -> None:
    """A chart for every check that has samples (a mark per sample, the attack window
    shaded when the attacks started), and for every check without samples a note that
    says so; no chart drawn empty."""
    window = any(e["phase"] == "ATTACKS_STARTED" for e in run["status"].get("timeline", []))
    checks = run["status"].get("stateChecks") or []
    assert checks, "the run reported no state check"
    sections = [s["data-check"] for s in dom.find("section", "check")]
    assert sections == [c["name"] for c in checks]
    charts = [c["data-check"] for c in dom.find("svg", "chart")]
    assert charts == [c["name"] for c in checks if c.get("samples")]
    notes = dom.find("p", "no-samples")
    assert len(notes) == sum(1 for c in checks if not c.get("samples"))
    if notes:
        assert "No samples recorded for this check" in dom.text
    shaded = dom.find("rect", "attack-window")
    assert len(shaded) == (len(charts) if window else 0)
    marks = dom.find("rect", "outcome")
    assert len(marks) == sum(len(c.get("samples") or []) for c in checks)


def render(cluster: Cluster, name: str, output: str) -> str:
    return cluster.plugin("report", name, "-n", TEAM, "-o", output, user="alice").stdout


def junit(text: str) -> tuple[junitparser.TestSuite, dict[str, list[str]]]:
    """The run's suite as a JUnit parser reads it, and each case's result kinds."""
    xml = junitparser.JUnitXml.fromstring(text)
    (suite,) = list(xml)
    return suite, {case.name: [type(r).__name__ for r in case.result] for case in suite}


def run_with_the_plugin(cluster: Cluster, experiment: str, *flags: str) -> str:
    out = cluster.plugin("run", experiment, "-n", TEAM, "--wait", *flags, user="alice", check=False)
    assert "experimentrun.shakeout.dev/" in out.stdout, out.stderr
    return out.stdout.split("experimentrun.shakeout.dev/")[1].split()[0]


def test_a_completed_runs_reports_in_the_browser_and_a_junit_parser(
    ready: Cluster, chromium: str, tmp_path: Path
) -> None:
    deployment(ready, "rep1")
    scale_experiment(ready, "rep1", "rep1", to=1, duration=3, warm_up=1, cool_down=2)
    name = run_with_the_plugin(ready, "rep1")
    ready.plugin("findings", name, FINDINGS, "--action-required", "yes", "-n", TEAM, user="alice")
    run = json.loads(render(ready, name, "json"))
    assert run["status"]["phase"] == "COMPLETED", run["status"]
    assert run["report"]["verdict"] == "passed"
    assert run["report"]["tests"] == {
        "total": 3,
        "passed": 3,
        "failed": 0,
        "error": 0,
        "skipped": 0,
    }
    assert render(ready, name, "json").splitlines()[0].startswith('{"headline": "PASSED: ')
    assert yaml.safe_load(render(ready, name, "yaml"))["report"]["verdict"] == "passed"

    markdown = render(ready, name, "markdown")
    assert markdown.splitlines()[0].startswith("**PASSED: run team-a/")
    assert "<script>" not in markdown
    assert "| scale | ScaleWorkload | yes | RolledBack |" in markdown

    REPORTS.mkdir(parents=True, exist_ok=True)
    page = REPORTS / "report-completed.html"
    page.write_text(render(ready, name, "html"))
    dom = browse(chromium, page, REPORTS / "report-completed.png", tmp_path / "profile")
    (headline,) = dom.find("p", "headline")
    assert "passed" in headline["class"].split()
    assert_charts(dom, run)
    # The finding is shown as the text it is, and no script came of it.
    assert SCRIPT in dom.text
    assert not dom.find("script")
    assert dom.find("tr", data_attack="scale")
    assert f"{run['status']['targets']['selected']} of {run['status']['targets']['matched']}" in (
        dom.text
    )
    assert "Action required: Yes" in dom.text

    # Every format kept beside the screenshot, to look at when a test fails.
    for output, suffix in (("markdown", "md"), ("junit", "xml"), ("json", "json")):
        (REPORTS / f"report-completed.{suffix}").write_text(render(ready, name, output))
    suite, cases = junit(render(ready, name, "junit"))
    assert cases == {"run verdict": [], "check ready": [], "attack scale": []}
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (3, 0, 0, 0)
    assert suite.name == f"{TEAM}/{name}"


def test_a_failed_runs_junit_fails_the_check_that_ended_it(
    ready: Cluster, chromium: str, tmp_path: Path
) -> None:
    deployment(ready, "rep2")
    scale_experiment(ready, "rep2", "rep2", to=0, duration=60, min_ready=2)
    name = run_with_the_plugin(ready, "rep2")
    run = json.loads(render(ready, name, "json"))
    assert (run["status"]["phase"], run["status"]["reason"]) == ("FAILED", "StateCheckFailed")

    text = render(ready, name, "junit")
    assert text.splitlines()[0].startswith("<!-- FAILED: ")
    path = tmp_path / "junit.xml"
    path.write_text(text)
    xml = junitparser.JUnitXml.fromfile(str(path))  # as a CI step reads a report file
    (suite,) = list(xml)
    cases = {case.name: case for case in suite}
    assert sorted(cases) == ["attack scale", "check ready", "run verdict"]
    (failure,) = cases["check ready"].result
    assert isinstance(failure, junitparser.Failure)
    assert "the check did not hold" in failure.message
    assert isinstance(cases["run verdict"].result[0], junitparser.Failure)
    assert "StateCheckFailed" in cases["run verdict"].result[0].message
    assert cases["attack scale"].is_passed  # rolled back: the attack itself did its job
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (3, 2, 0, 0)

    page = REPORTS / "report-failed.html"
    REPORTS.mkdir(parents=True, exist_ok=True)
    page.write_text(render(ready, name, "html"))
    dom = browse(chromium, page, REPORTS / "report-failed.png", tmp_path / "profile")
    (headline,) = dom.find("p", "headline")
    assert "failed" in headline["class"].split()
    assert_charts(dom, run)
    assert [s for s in dom.find("span", "verdict") if "failed" in s["class"].split()]


def test_a_dry_runs_reports_say_so_first_in_every_format(
    ready: Cluster, chromium: str, tmp_path: Path
) -> None:
    deployment(ready, "rep3")
    scale_experiment(ready, "rep3", "rep3", to=1, duration=2)
    name = run_with_the_plugin(ready, "rep3", "--dry-run")
    assert render(ready, name, "json").splitlines()[0] == f'{{"headline": "{DRY_RUN_HEADLINE}",'
    assert render(ready, name, "yaml").splitlines()[0] == f"# {DRY_RUN_HEADLINE}"
    assert render(ready, name, "markdown").splitlines()[0] == f"**{DRY_RUN_HEADLINE}**"
    assert render(ready, name, "junit").splitlines()[0] == f"<!-- {DRY_RUN_HEADLINE} -->"
    html = render(ready, name, "html")
    assert html.splitlines()[0] == f"<!-- {DRY_RUN_HEADLINE} -->"
    suite, cases = junit(render(ready, name, "junit"))
    assert cases["attack scale"] == ["Skipped"]
    assert (suite.tests, suite.failures, suite.skipped) == (3, 0, 1)
    page = REPORTS / "report-dry-run.html"
    REPORTS.mkdir(parents=True, exist_ok=True)
    page.write_text(html)
    dom = browse(chromium, page, REPORTS / "report-dry-run.png", tmp_path / "profile")
    # The page's first paragraph, as the browser built it, is the headline.
    first = next(a for t, a in dom.elements if t == "p")
    assert first == {"id": "headline", "class": "headline dry-run"}
    assert f'<p id="headline" class="headline dry-run">{DRY_RUN_HEADLINE}</p>' in dom.source
    assert "Attack window (simulated)" in dom.text


def test_the_chart_of_a_run_with_samples_in_the_browser(chromium: str, tmp_path: Path) -> None:
    """The samples' chart as the browser renders it, from a full status (Fail and Error
    probes, a hole in the series): real runs record samples only once the executor does."""
    run = full_run()
    REPORTS.mkdir(parents=True, exist_ok=True)
    page = REPORTS / "report-samples.html"
    page.write_text(render_html(run))
    dom = browse(chromium, page, REPORTS / "report-samples.png", tmp_path / "profile")
    assert_charts(dom, run)
    samples = latency_samples()
    outcomes = [a["class"].split()[1] for a in dom.find("rect", "outcome")]
    assert outcomes == [s["outcome"].lower() for s in samples]
    assert len(dom.find("circle", "sample")) == sum(1 for s in samples if "value" in s)
    assert len(dom.find("polyline", "series")) == 3  # broken at the Error and the hole
    assert SCRIPT in dom.text
    assert not dom.find("script")


@pytest.mark.long  # the browser test charts a real run's samples too
def test_samples_stored_in_a_real_runs_status_are_charted_in_the_window(
    ready: Cluster, chromium: str, tmp_path: Path
) -> None:
    """Samples as the executor writes them (issue 15 item 2 adds the recording), stored
    here through the status subresource of a finished real run, so that the API server's
    schema, the plugin and the browser see them as they will: one probe a second over the
    run, Fail during the attacks, one Error without a value."""
    deployment(ready, "rep4")
    scale_experiment(ready, "rep4", "rep4", to=1, duration=3, warm_up=1, cool_down=2)
    name = run_with_the_plugin(ready, "rep4")
    status = json.loads(render(ready, name, "json"))["status"]
    times = {e["phase"]: datetime.fromisoformat(e["time"]) for e in status["timeline"]}
    start, stopped = times["ATTACKS_STARTED"], times["ATTACKS_STOPPED"]
    first, last = times["CREATED"], times["COMPLETED"]
    samples = []
    at = first
    while at <= last:
        during = start < at < stopped
        sample = {
            "at": at.isoformat().replace("+00:00", "Z"),
            "outcome": "Fail" if during else "Pass",
            "value": 1.0 if during else 3.0,
        }
        samples.append(sample)
        at += timedelta(milliseconds=500)
    samples[len(samples) // 2] = {"at": samples[len(samples) // 2]["at"], "outcome": "Error"}
    patch = [
        {"op": "add", "path": "/status/stateChecks/0/unit", "value": "replicas"},
        {"op": "add", "path": "/status/stateChecks/0/samples", "value": samples},
    ]
    ready.kubectl(
        "patch",
        "experimentrun",
        name,
        "-n",
        TEAM,
        "--subresource=status",
        "--type=json",
        "-p",
        json.dumps(patch),
    )
    run = json.loads(render(ready, name, "json"))
    assert len(run["status"]["stateChecks"][0]["samples"]) == len(samples)  # stored as sent

    REPORTS.mkdir(parents=True, exist_ok=True)
    page = REPORTS / "report-stored-samples.html"
    page.write_text(render(ready, name, "html"))
    dom = browse(chromium, page, REPORTS / "report-stored-samples.png", tmp_path / "profile")
    assert_charts(dom, run)
    (window,) = dom.find("rect", "attack-window")
    left, right = float(window["x"]), float(window["x"]) + float(window["width"])
    fails = [float(c["cx"]) for c in dom.find("circle", "fail")]
    passes = [float(c["cx"]) for c in dom.find("circle", "pass")]
    assert fails, "no Fail sample charted"
    assert all(left <= x <= right for x in fails)
    assert any(x < left for x in passes)
    assert any(x > right for x in passes)
    assert len(dom.find("rect", "error")) == 1
    assert "replicas" in dom.text
