"""A run's report as Markdown, for a ticket, a pull request or a wiki page. User-written
text is escaped so that it renders as the text it is: no table broken by a `|`, no link,
no heading, no raw HTML."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from shakeout.api.run import CheckOutcome
from shakeout.cli.report import clean
from shakeout.cli.reports.facts import CheckFacts, RunFacts, facts, shown_time

# CommonMark lets a backslash escape any ASCII punctuation; these are the ones that start
# markup inline or in a table. `&` and angle brackets become entities: no raw HTML.
_MARKUP = re.compile(r"([\\`*_{}\[\]()#+!|~])")
_OUTCOME_MARKS = {CheckOutcome.PASS: "+", CheckOutcome.FAIL: "x", CheckOutcome.ERROR: "?"}


def md(text: Any) -> str:
    """A user-written text as Markdown text on one line."""
    out = clean(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKUP.sub(r"\\\1", out)


def _time(value: datetime | None) -> str:
    return shown_time(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def render_markdown(obj: dict[str, Any]) -> str:
    run = facts(obj)
    lines = [f"**{md(run.headline)}**", "", f"# Run {md(run.namespace)}/{md(run.name)}", ""]
    for section in (_summary, _timeline, _checks, _attacks, _targets, _findings):
        lines += section(run)
    return "\n".join(lines) + "\n"


def _summary(run: RunFacts) -> list[str]:
    status = run.run.status
    summary = [
        ["Experiment", md(run.experiment)],
        ["Phase", md(run.phase) + (f" ({md(status.reason)})" if status and status.reason else "")],
    ]
    if status is not None and status.message:
        summary.append(["Message", md(status.message)])
    if status is not None and status.started_by:
        summary.append(["Started by", md(status.started_by.username)])
    if status is not None and status.canceled_by:
        summary.append(["Canceled by", md(status.canceled_by.username)])
    summary.append(["Duration", _seconds(run.duration_seconds)])
    if run.window is not None:
        summary.append(
            [
                "Attack window" + (" (simulated)" if run.dry_run else ""),
                f"{_time(run.window.start)} to {_time(run.window.end)}"
                f" ({_seconds(run.window.seconds)})",
            ]
        )
    return _table(["", ""], summary)


def _timeline(run: RunFacts) -> list[str]:
    status = run.run.status
    entries = status.timeline if status else []
    if not entries:
        return ["", "## Timeline", "", "No phase entered yet."]
    first = entries[0].time
    rows = [
        [str(e.phase), _time(e.time), f"+{(e.time - first).total_seconds():.0f} s"] for e in entries
    ]
    lines = ["", "## Timeline", "", *_table(["Phase", "Entered", "Since the first"], rows)]
    return lines + _attack_steps(run)


def _attack_steps(run: RunFacts) -> list[str]:
    """When each attack started and ended, in the order they started, and its targets."""
    started = run.attack_steps()
    if not started:
        return []
    rows = [
        [
            md(a.result.name),
            _time(a.started),
            _offset(run.attack_offset(a)),
            _time(a.ended),
            md(", ".join(a.result.target_names)) or "-",
        ]
        for a in started
    ]
    header = ["Attack", "Started", "After the attacks started", "Ended", "Its targets (first)"]
    return ["", "Attacks over time:", "", *_table(header, rows)]


def _offset(value: float | None) -> str:
    return "-" if value is None else f"+{value:.0f} s"


def _checks(run: RunFacts) -> list[str]:
    lines = ["", "## State checks", ""]
    if not run.checks:
        return [*lines, "No state check reported."]
    lines += _table(
        ["Check", "Type", "Verdict", "Successes", "Failures", "Errors", "Values", "Last"],
        [
            [
                md(c.name),
                md(c.type),
                c.judgement.verdict.value,
                str(c.tally.successes),
                str(c.tally.failures),
                str(c.tally.errors),
                _values(c),
                md(c.tally.last_message or ""),
            ]
            for c in run.checks
        ],
    )
    lines += [
        "",
        "Probes over the run (`+` pass, `x` fail, `?` could not be evaluated, "
        "`[ ]` the attack window):",
        "",
    ]
    return lines + [f"- {md(c.name)}: {_strip(run, c)}" for c in run.checks]


def _attacks(run: RunFacts) -> list[str]:
    lines = ["", "## Attacks", ""]
    if not run.attacks:
        return [*lines, "No attack recorded."]
    return lines + _table(
        ["Attack", "Type", "Reversible", "State", "Targets", "Verdict", "Note"],
        [
            [
                md(a.result.name),
                md(a.result.type),
                "yes" if a.result.reversible else "**no** (cannot be rolled back)",
                md(a.result.state),
                str(a.result.targets),
                a.judgement.verdict.value,
                md(a.result.message or ""),
            ]
            for a in run.attacks
        ],
    )


def _targets(run: RunFacts) -> list[str]:
    lines = ["", "## Targets", ""]
    status = run.run.status
    targets = status.targets if status else None
    if targets is None:
        return [*lines, "Not resolved."]
    more = targets.selected - len(targets.names)
    lines.append(
        f"{targets.selected} of {targets.matched} matching pods"
        + (f" (the first {len(targets.names)} below)" if more > 0 else "")
    )
    if targets.names:
        lines += ["", *(f"- {md(n)}" for n in targets.names)]
    return lines


def _findings(run: RunFacts) -> list[str]:
    spec = run.run.spec
    action = md(spec.action_required) if spec.action_required else "not set"
    lines = ["", "## Findings and action required", "", f"Action required: **{action}**", ""]
    if spec.findings:
        return lines + [
            f"> {md(line)}" for line in clean(spec.findings, multiline=True).splitlines()
        ]
    return [*lines, f"None yet: `kubectl shakeout findings {clean(run.name)} TEXT`"]


def _values(check: CheckFacts) -> str:
    values = check.values
    if not check.samples:
        return "no samples recorded"
    if not values:
        return "outcomes only"
    unit = f" {md(check.tally.unit)}" if check.tally.unit else ""
    return f"{min(values):.6g} to {max(values):.6g}{unit}"


def _strip(run: RunFacts, check: CheckFacts) -> str:
    """One mark per probe, the attack window in brackets."""
    if not check.samples:
        return "no samples recorded for this check (only its tally)"
    window = run.window
    out = []
    opened = closed = False
    for sample in check.samples:
        inside = (
            window is not None
            and window.start <= sample.at
            and (window.end is None or sample.at <= window.end)
        )
        if inside and not opened:
            out.append("[")
            opened = True
        if opened and not inside and not closed:
            out.append("]")
            closed = True
        out.append(_OUTCOME_MARKS[CheckOutcome(sample.outcome)])
    if opened and not closed:
        out.append("]")
    return "`" + "".join(out) + "`"
