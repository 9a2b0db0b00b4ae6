"""Reports to hand on: one run rendered as Markdown, a self-contained HTML page, JUnit XML
or JSON (`kubectl shakeout report RUN -o FORMAT`).

Every renderer is a pure function, the run object in and text out: no cluster, no clock,
no network (import-linter keeps this package off kubernetes and the operator's floors).
What the formats share, the verdicts and the attack window, is computed once in
`facts.py`, so that a run reads the same in every format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shakeout.cli.reports.document import render_json, render_yaml
from shakeout.cli.reports.html_page import render_html
from shakeout.cli.reports.junit import render_junit
from shakeout.cli.reports.markdown import render_markdown

RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "markdown": render_markdown,
    "html": render_html,
    "junit": render_junit,
    "json": render_json,
    "yaml": render_yaml,
}

__all__ = ["RENDERERS"]
