"""A run's report as data: the run object as the API server returns it (so that
`.status.phase` and every other field read as before), without the server's bookkeeping
(`metadata.managedFields`), plus `report`: what the other formats compute, in one stable
shape (`report.version` changes only when a field changes meaning or goes)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import yaml

from shakeout.api.run import CheckOutcome
from shakeout.cli.reports.facts import Judgement, RunFacts, Verdict, facts, shown_time

REPORT_VERSION = 1


def _time(value: datetime | None) -> str | None:
    return None if value is None else shown_time(value, "milliseconds")


def _judgement(judgement: Judgement) -> dict[str, str]:
    return {"verdict": judgement.verdict.value, "message": judgement.message}


def computed(run: RunFacts) -> dict[str, Any]:
    """The computed fields, the same that the Markdown, HTML and JUnit reports show."""
    everything = [run.judgement] + [c.judgement for c in run.checks]
    everything += [a.judgement for a in run.attacks]
    return {
        "version": REPORT_VERSION,
        "headline": run.headline,
        "dryRun": run.dry_run,
        "phase": run.phase,
        **_judgement(run.judgement),
        "durationSeconds": run.duration_seconds,
        "attackWindow": None
        if run.window is None
        else {
            "start": _time(run.window.start),
            "end": _time(run.window.end),
            "seconds": run.window.seconds,
            "simulated": run.dry_run,
        },
        "checks": [
            {
                "name": c.name,
                "type": c.type,
                **_judgement(c.judgement),
                "unit": c.tally.unit,
                "samples": len(c.samples),
                "pass": c.count(CheckOutcome.PASS),
                "fail": c.count(CheckOutcome.FAIL),
                "error": c.count(CheckOutcome.ERROR),
                "min": min(c.values) if c.values else None,
                "max": max(c.values) if c.values else None,
            }
            for c in run.checks
        ],
        "attacks": [
            {"name": a.result.name, "type": a.result.type, **_judgement(a.judgement)}
            for a in run.attacks
        ],
        # What the JUnit report counts: the run's verdict, each check and each attack.
        "tests": {
            "total": len(everything),
            **{
                v.value: sum(1 for j in everything if j.verdict == v)
                for v in (Verdict.PASSED, Verdict.FAILED, Verdict.ERROR, Verdict.SKIPPED)
            },
        },
    }


def document(obj: dict[str, Any]) -> dict[str, Any]:
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    rest = {k: v for k, v in obj.items() if k not in ("metadata", "report")}
    return {**rest, "metadata": metadata, "report": computed(facts(obj))}


def render_json(obj: dict[str, Any]) -> str:
    """Indented JSON with sorted keys (stable to diff), whose first line carries the
    headline: `head -1` says whether it is a dry run."""
    doc = document(obj)
    headline = doc["report"]["headline"]
    body = json.dumps(doc, indent=2, sort_keys=True)
    # body is "{\n  ...": the headline goes on the brace's line, as a key of its own.
    return "{" + f'"headline": {json.dumps(headline)},' + body[1:] + "\n"


def render_yaml(obj: dict[str, Any]) -> str:
    doc = document(obj)
    return f"# {json.dumps(doc['report']['headline'])[1:-1]}\n" + yaml.safe_dump(
        doc, sort_keys=True
    )
