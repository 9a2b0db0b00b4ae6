"""A run's report as one self-contained HTML page: inline CSS and SVG, no script, nothing
fetched, so that it can be mailed, attached to a ticket or archived by a pipeline and still
open years later. Every user-written text (names, messages, findings) is escaped."""

from __future__ import annotations

import html
import itertools
from datetime import datetime
from statistics import median
from typing import Any

from shakeout.api.run import CheckSample
from shakeout.cli.report import clean
from shakeout.cli.reports.facts import CheckFacts, RunFacts, Verdict, facts, shown_time

# The chart's geometry, in SVG user units (the SVG scales to the page's width).
WIDTH, HEIGHT = 720, 190
LEFT, RIGHT, TOP = 70, 16, 16
PLOT_BOTTOM = 122  # the values' area ends here
STRIP_TOP, STRIP_HEIGHT = 130, 12  # one mark per probe, coloured by its outcome
AXIS_Y = 162

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       max-width: 960px; margin: 0 auto; padding: 0 16px 32px; }
h1 { font-size: 22px; margin: 8px 0 4px; } h2 { font-size: 17px; margin: 24px 0 6px;
     border-bottom: 1px solid #ddd; } h3 { font-size: 15px; margin: 14px 0 4px; }
.headline { font-weight: 700; padding: 10px 12px; margin: 12px 0 0; border-radius: 4px; }
.headline.passed { background: #e8f5e9; color: #1b5e20; }
.headline.failed { background: #ffebee; color: #b71c1c; }
.headline.error, .headline.skipped { background: #fff3e0; color: #8a4b00; }
.headline.dry-run { background: #e3f2fd; color: #0d47a1; }
dl.summary { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; }
dl.summary dt { color: #555; } dl.summary dd { margin: 0; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #eee;
         vertical-align: top; overflow-wrap: anywhere; }
th { color: #555; font-weight: 600; }
.verdict { font-weight: 700; } .verdict.passed { color: #2e7d32; }
.verdict.failed { color: #c62828; } .verdict.error { color: #ef6c00; }
.verdict.skipped { color: #666; }
.no-samples { color: #8a4b00; background: #fff8e1; padding: 6px 10px; border-radius: 4px; }
svg.chart { width: 100%; height: auto; max-width: 720px; display: block; }
svg.chart .attack-window { fill: #c62828; fill-opacity: 0.10; }
svg.chart .attack-label { fill: #c62828; font-size: 11px; }
svg.chart .frame { fill: none; stroke: #bbb; }
svg.chart .series { fill: none; stroke: #1565c0; stroke-width: 1.6; }
svg.chart .axis { fill: #555; font-size: 11px; }
svg.chart .sample.pass, svg.chart .outcome.pass { fill: #2e7d32; }
svg.chart .sample.fail, svg.chart .outcome.fail { fill: #c62828; }
svg.chart .sample.error, svg.chart .outcome.error { fill: #ef6c00; }
.legend span { margin-right: 12px; font-size: 12px; color: #555; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px;
            vertical-align: -1px; }
.findings { white-space: pre-wrap; background: #fafafa; padding: 8px 10px;
            border-left: 3px solid #bbb; }
footer { margin-top: 32px; color: #777; font-size: 12px; }
dd, p, li { overflow-wrap: anywhere; }
@media print { section.check, table tr { break-inside: avoid; } }
"""


def esc(text: Any) -> str:
    """A user-written text as HTML text or attribute value, on one line."""
    return html.escape(clean(text), quote=True)


def _time(value: datetime | None) -> str:
    return shown_time(value)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} s"


def _number(value: float) -> str:
    return f"{value:.6g}"


def render_html(obj: dict[str, Any]) -> str:
    """The page of one run object (as the API server returns it)."""
    run = facts(obj)
    parts: list[str] = []
    if run.dry_run:
        # The file's first line, for whoever reads the source or greps an archive; the
        # page's first element says it again to whoever opens it.
        parts.append(f"<!-- {esc(run.headline)} -->")
    css_class = "dry-run" if run.dry_run else run.judgement.verdict.value
    parts += [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(run.namespace)}/{esc(run.name)}: {esc(run.headline)}</title>",
        f"<style>{CSS}</style></head><body>",
        f'<p id="headline" class="headline {css_class}">{esc(run.headline)}</p>',
        f"<h1>Run {esc(run.namespace)}/{esc(run.name)}</h1>",
        _summary(run),
        _timeline(run),
        _checks(run),
        _attacks(run),
        _targets(run),
        _findings(run),
        "<footer>kubectl shakeout report: one self-contained file, no script, nothing "
        "fetched.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary(run: RunFacts) -> str:
    status = run.run.status
    rows: list[tuple[str, str]] = [
        ("Experiment", esc(run.experiment)),
        (
            "Phase",
            esc(run.phase) + (f" ({esc(status.reason)})" if status and status.reason else ""),
        ),
    ]
    if status is not None and status.message:
        rows.append(("Message", esc(status.message)))
    if status is not None and status.started_by:
        rows.append(("Started by", esc(status.started_by.username)))
    if status is not None and status.canceled_by:
        rows.append(("Canceled by", esc(status.canceled_by.username)))
    if status is not None:
        rows.append(("Started", _time(status.started_at)))
        rows.append(("Finished", _time(status.finished_at)))
    rows.append(("Duration", _seconds(run.duration_seconds)))
    if run.window is not None:
        label = "Attack window (simulated)" if run.dry_run else "Attack window"
        rows.append(
            (
                label,
                f"{_time(run.window.start)} to {_time(run.window.end)}"
                f" ({_seconds(run.window.seconds)})",
            )
        )
    body = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return f'<dl class="summary" id="summary">{body}</dl>'


def _timeline(run: RunFacts) -> str:
    status = run.run.status
    entries = status.timeline if status else []
    if not entries:
        return '<h2>Timeline</h2><p id="timeline">No phase entered yet.</p>'
    first = entries[0].time
    rows = "".join(
        f"<tr><td>{esc(e.phase)}</td><td>{_time(e.time)}</td>"
        f"<td>+{(e.time - first).total_seconds():.0f} s</td></tr>"
        for e in entries
    )
    return (
        '<h2>Timeline</h2><table id="timeline"><tr><th>Phase</th><th>Entered</th>'
        f"<th>Since the first</th></tr>{rows}</table>" + _attack_steps(run)
    )


def _attack_steps(run: RunFacts) -> str:
    """When each attack started and ended, in the order they started, and its targets."""
    started = run.attack_steps()
    if not started:
        return ""
    rows = []
    for attack in started:
        offset = run.attack_offset(attack)
        shown = "-" if offset is None else f"+{offset:.0f} s"
        rows.append(
            f'<tr data-attack-step="{esc(attack.result.name)}"><td>{esc(attack.result.name)}</td>'
            f"<td>{_time(attack.started)}</td><td>{shown}</td><td>{_time(attack.ended)}</td>"
            f"<td>{esc(', '.join(attack.result.target_names)) or '-'}</td></tr>"
        )
    return (
        '<table id="attack-steps"><tr><th>Attack</th><th>Started</th>'
        "<th>After the attacks started</th><th>Ended</th><th>Its targets (first)</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _checks(run: RunFacts) -> str:
    if not run.checks:
        return '<h2>State checks</h2><p id="checks">No state check reported.</p>'
    legend = (
        '<p class="legend"><span><i style="background:#2e7d32"></i>Pass</span>'
        '<span><i style="background:#c62828"></i>Fail (the check did not hold)</span>'
        '<span><i style="background:#ef6c00"></i>Error (could not be evaluated)</span>'
        '<span><i style="background:#c62828;opacity:.15"></i>'
        + ("Attack window (simulated)" if run.dry_run else "Attack window")
        + "</span></p>"
    )
    sections = [_check(run, check) for check in run.checks]
    return '<h2>State checks</h2><div id="checks">' + legend + "".join(sections) + "</div>"


def _check(run: RunFacts, check: CheckFacts) -> str:
    tally = check.tally
    kind = f" ({esc(check.type)})" if check.type else ""
    verdict = check.judgement.verdict.value
    head = (
        f'<section class="check" data-check="{esc(check.name)}">'
        f"<h3>{esc(check.name)}{kind}: "
        f'<span class="verdict {verdict}">{verdict}</span></h3>'
        f"<p>{tally.successes} successes, {tally.failures} failures, "
        f"{tally.errors} could not be evaluated"
        + (f"; last: {esc(tally.last_message)}" if tally.last_message else "")
        + (f" at {_time(tally.last_time)}" if tally.last_time else "")
        + "</p>"
    )
    if check.judgement.message and check.judgement.verdict != Verdict.PASSED:
        head += f"<p>{esc(check.judgement.message)}</p>"
    if tally.degraded_at is not None:
        # mayDegradeDuringAttacks: the degradation and its recovery are the point.
        head += (
            f'<p class="degraded">Degraded at {_time(tally.degraded_at)}; '
            + (
                f"recovered at {_time(tally.recovered_at)}."
                if tally.recovered_at
                else "not recovered."
            )
            + "</p>"
        )
    if check.values and tally.unit:
        # In words above the chart: a unit such as "ready replicas" does not fit the axis.
        head += f'<p class="unit">Values in {esc(tally.unit)}.</p>'
    if not check.samples:
        return (
            head + '<p class="no-samples">No samples recorded for this check: the run holds '
            "only its tally above, so there is nothing to chart.</p></section>"
        )
    return head + chart(run, check) + "</section>"


def chart(run: RunFacts, check: CheckFacts) -> str:
    """An SVG chart of one check over the run: its values as a line (broken where a probe
    gave none, or where probes are missing), every probe's outcome as a coloured mark in
    a strip below, and the attack window shaded across both."""
    # The samples are in the span, so both ends are known.
    assert run.start is not None
    assert run.end is not None
    t0 = run.start
    span = max((run.end - t0).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return LEFT + (at - t0).total_seconds() / span * (WIDTH - LEFT - RIGHT)

    unit = f" {check.tally.unit}" if check.tally.unit else ""
    values = check.values
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    # Room above and below, so that no marker sits on the frame; a flat line sits in the
    # middle.
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    low, high = low - pad, high + pad

    def y(value: float) -> float:
        return PLOT_BOTTOM - (value - low) / (high - low) * (PLOT_BOTTOM - TOP)

    label = f"{check.name}: {len(check.samples)} probes over the run"
    out = [
        f'<svg class="chart" data-check="{esc(check.name)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{esc(label)}">',
        f"<title>{esc(label)}</title>",
    ]
    if run.window is not None:
        left, right = x(run.window.start), x(run.window.end or run.end)
        out.append(
            f'<rect class="attack-window" x="{left:.1f}" y="{TOP}" '
            f'width="{max(right - left, 1.0):.1f}" height="{STRIP_TOP + STRIP_HEIGHT - TOP}">'
            f"<title>attacks {_time(run.window.start)} to {_time(run.window.end)}</title></rect>"
        )
        word = "attacks (simulated)" if run.dry_run else "attacks"
        out.append(f'<text class="attack-label" x="{left + 3:.1f}" y="{TOP - 3}">{word}</text>')
    out.append(
        f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
        f'height="{PLOT_BOTTOM - TOP}"/>'
    )
    if values:
        for segment in _segments(check.samples):
            points = " ".join(
                f"{x(s.at):.1f},{y(s.value):.1f}" for s in segment if s.value is not None
            )
            out.append(f'<polyline class="series" points="{points}"/>')
        out.append(
            f'<text class="axis" x="{LEFT - 6}" y="{TOP + 9}" text-anchor="end">'
            f"{esc(_number(max(values)))}</text>"
        )
        out.append(
            f'<text class="axis" x="{LEFT - 6}" y="{PLOT_BOTTOM}" text-anchor="end">'
            f"{esc(_number(min(values)))}</text>"
        )
    else:
        out.append(
            f'<text class="axis" x="{(LEFT + WIDTH - RIGHT) / 2:.0f}" '
            f'y="{(TOP + PLOT_BOTTOM) / 2:.0f}" text-anchor="middle">'
            "no values: the probes reported outcomes only</text>"
        )
    mark = max(2.0, min(8.0, (WIDTH - LEFT - RIGHT) / max(len(check.samples), 1) * 0.6))
    for sample in check.samples:
        outcome = str(sample.outcome).lower()
        shown = "" if sample.value is None else f" {_number(sample.value)}{unit}"
        tip = f"<title>{_time(sample.at)} {esc(sample.outcome)}{esc(shown)}</title>"
        if sample.value is not None:
            out.append(
                f'<circle class="sample {outcome}" cx="{x(sample.at):.1f}" '
                f'cy="{y(sample.value):.1f}" r="3">{tip}</circle>'
            )
        out.append(
            f'<rect class="outcome {outcome}" x="{x(sample.at) - mark / 2:.1f}" y="{STRIP_TOP}" '
            f'width="{mark:.1f}" height="{STRIP_HEIGHT}">{tip}</rect>'
        )
    out.append(
        f'<text class="axis" x="{LEFT - 6}" y="{STRIP_TOP + 10}" text-anchor="end">outcome</text>'
    )
    out.append(f'<text class="axis" x="{LEFT}" y="{AXIS_Y}">+0 s ({_time(t0)})</text>')
    out.append(
        f'<text class="axis" x="{WIDTH - RIGHT}" y="{AXIS_Y}" text-anchor="end">'
        f"+{span:.0f} s</text>"
    )
    if run.window is not None:
        for edge in (run.window.start, run.window.end):
            if edge is not None:
                out.append(
                    f'<text class="axis" x="{x(edge):.1f}" y="{AXIS_Y + 14}" '
                    f'text-anchor="middle">+{(edge - t0).total_seconds():.0f} s</text>'
                )
    out.append("</svg>")
    return "\n".join(out)


def _segments(samples: tuple[CheckSample, ...]) -> list[list[CheckSample]]:
    """The valued samples in runs that a line may join: a probe without a value (could
    not be evaluated) or a hole in the series (more than three times the usual step, e.g.
    the operator restarting) breaks the line rather than drawing through what is unknown."""
    steps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(samples)]
    usual = median(steps) if steps else 0.0
    segments: list[list[CheckSample]] = [[]]
    previous: CheckSample | None = None
    for sample in samples:
        hole = (
            previous is not None
            and usual > 0
            and (sample.at - previous.at).total_seconds() > 3 * usual
        )
        if sample.value is None or hole:
            segments.append([])
        if sample.value is not None:
            segments[-1].append(sample)
        previous = sample
    return [s for s in segments if s]


def _attacks(run: RunFacts) -> str:
    if not run.attacks:
        return '<h2>Attacks</h2><p id="attacks">No attack recorded.</p>'
    rows = []
    for attack in run.attacks:
        a = attack.result
        verdict = attack.judgement.verdict.value
        rows.append(
            f'<tr data-attack="{esc(a.name)}"><td>{esc(a.name)}</td><td>{esc(a.type)}</td>'
            f"<td>{'yes' if a.reversible else '<strong>no</strong> (cannot be rolled back)'}</td>"
            f"<td>{esc(a.state)}</td><td>{a.targets}</td>"
            f"<td>{_time(a.applied_at)}</td><td>{_time(a.rolled_back_at)}</td>"
            f'<td><span class="verdict {verdict}">{verdict}</span></td>'
            f"<td>{esc(a.message or '')}</td></tr>"
        )
    return (
        '<h2>Attacks</h2><table id="attacks"><tr><th>Name</th><th>Type</th><th>Reversible</th>'
        "<th>State</th><th>Targets</th><th>Applied</th><th>Rolled back</th><th>Verdict</th>"
        f"<th>Note</th></tr>{''.join(rows)}</table>"
    )


def _targets(run: RunFacts) -> str:
    status = run.run.status
    targets = status.targets if status else None
    if targets is None:
        return '<h2>Targets</h2><p id="targets">Not resolved.</p>'
    names = "".join(f"<li>{esc(n)}</li>" for n in targets.names)
    more = targets.selected - len(targets.names)
    return (
        f'<h2>Targets</h2><div id="targets"><p>{targets.selected} of {targets.matched} '
        "matching pods"
        + (f" (the first {len(targets.names)} below)" if more > 0 else "")
        + f"</p><ul>{names}</ul></div>"
    )


def _findings(run: RunFacts) -> str:
    spec = run.run.spec
    action = esc(spec.action_required) if spec.action_required else "not set"
    findings = (
        f'<p class="findings">{html.escape(clean(spec.findings, multiline=True))}</p>'
        if spec.findings
        else f"<p>None yet: <code>kubectl shakeout findings {esc(run.name)} TEXT</code></p>"
    )
    return (
        '<h2>Findings and action required</h2><div id="findings">'
        f'<p>Action required: <strong id="action-required">{action}</strong></p>'
        f"{findings}</div>"
    )
