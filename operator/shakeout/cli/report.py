"""Rendering runs for people: the Reports list and one run's report (pure text)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

Obj = dict[str, Any]

# Terminal escapes (SEC-26): CSI (ESC [ ... final), OSC (ESC ] ... BEL or ST), other ESC
# sequences, then every control character left (C0, DEL, C1) and the bidi overrides that
# reorder what is shown. Runs, Experiments and findings are written by team members; the
# report is read in someone else's terminal.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(\x07|\x1b\\)?"  # OSC, with or without its terminator
    r"|\x1b[PX^_][^\x1b]*(\x1b\\)?"  # DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"  # any other escape
    r"|\x9b[0-?]*[ -/]*[@-~]"  # 8-bit CSI
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: Any, *, multiline: bool = False) -> str:
    """A user-written text made safe to print: escapes and control characters removed; line
    breaks and tabs kept only when multiline, else each becomes a space."""
    out = _CONTROLS.sub("", _ESCAPES.sub("", str(text)))
    if not multiline:
        out = out.replace("\n", " ").replace("\t", " ")
    return out


def _cleaned(value: Any) -> Any:
    """A copy of an object with every string in it cleaned (single-line)."""
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, dict):
        return {clean(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def duration(status: Obj) -> str:
    start, end = _parse(status.get("startedAt")), _parse(status.get("finishedAt"))
    if start is None or end is None:
        return "-"
    return f"{(end - start).total_seconds():.0f}s"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def runs_table(runs: list[Obj]) -> str:
    rows = [["NAMESPACE", "NAME", "EXPERIMENT", "PHASE", "REASON", "TARGETS", "ACTION", "DURATION"]]
    runs = [_cleaned(run) for run in runs]
    for run in sorted(runs, key=lambda r: r["metadata"].get("creationTimestamp") or ""):
        status = run.get("status") or {}
        rows.append(
            [
                run["metadata"]["namespace"],
                run["metadata"]["name"],
                run["spec"]["experimentRef"]["name"],
                status.get("phase", "PENDING"),
                status.get("reason", ""),
                str((status.get("targets") or {}).get("selected", "-")),
                run["spec"].get("actionRequired", "-"),
                duration(status),
            ]
        )
    return table(rows) if len(rows) > 1 else "No runs found."


# The first line of a dry run's report.
DRY_RUN_HEADLINE = (
    "DRY RUN: nothing was applied; the attacks below say what a real run would have done"
)


def report(run: Obj) -> str:
    """A readable report of one run, as `kubectl shakeout report RUN` prints it: every
    text in it cleaned of terminal escapes and control characters (SEC-26)."""
    findings = clean((run.get("spec") or {}).get("findings") or "", multiline=True)
    run = _cleaned(run)
    meta, spec, status = run["metadata"], run["spec"], run.get("status") or {}
    lines = []
    if spec.get("dryRun") or status.get("dryRun"):
        lines.append(DRY_RUN_HEADLINE)
    lines += [
        f"Run:         {meta['namespace']}/{meta['name']}",
        f"Experiment:  {spec['experimentRef']['name']}",
        f"Phase:       {status.get('phase', 'PENDING')}"
        + (f" ({status['reason']})" if status.get("reason") else ""),
    ]
    if status.get("message"):
        lines.append(f"Message:     {status['message']}")
    if started_by := status.get("startedBy"):
        lines.append(f"Started by:  {started_by['username']}")
    if canceled_by := status.get("canceledBy"):
        lines.append(f"Canceled by: {canceled_by['username']}")
    lines.append(f"Duration:    {duration(status)}")
    if targets := status.get("targets"):
        names = ", ".join(targets.get("names", []))
        more = targets["selected"] - len(targets.get("names", []))
        lines.append(
            f"Targets:     {targets['selected']} of {targets['matched']} matching pods"
            + (f": {names}" if names else "")
            + (f" and {more} more" if more > 0 else "")
        )
    if timeline := status.get("timeline"):
        lines += ["", "Timeline:"]
        lines += [f"  {e['time']}  {e['phase']}" for e in timeline]
    if attacks := status.get("attacks"):
        lines += ["", "Attacks:"]
        rows = [["NAME", "TYPE", "REVERSIBLE", "STATE", "TARGETS", "NOTE"]]
        for a in attacks:
            rows.append(
                [
                    a["name"],
                    a["type"],
                    "yes" if a["reversible"] else "NO (cannot be rolled back)",
                    a["state"],
                    str(a.get("targets", 0)),
                    a.get("message", ""),
                ]
            )
        lines += ["  " + line for line in table(rows).splitlines()]
    if checks := status.get("stateChecks"):
        lines += ["", "State checks:"]
        # ERRORS: probes that could not be evaluated (they say nothing about the system).
        rows = [["NAME", "SUCCESSES", "FAILURES", "ERRORS", "LAST"]]
        for c in checks:
            rows.append(
                [
                    c["name"],
                    str(c.get("successes", 0)),
                    str(c.get("failures", 0)),
                    str(c.get("errors", 0)),
                    c.get("lastMessage", ""),
                ]
            )
        lines += ["  " + line for line in table(rows).splitlines()]
    lines += [
        "",
        f"Action required: {spec.get('actionRequired', 'not set')}",
        "Findings:        "
        + (findings or f"(none yet: kubectl shakeout findings {meta['name']} TEXT)"),
    ]
    return "\n".join(lines)
