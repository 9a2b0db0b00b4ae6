"""`kubectl shakeout report` and the Reports list print user-written text: terminal escapes
and control characters in it are removed (SEC-26)."""

from __future__ import annotations

from typing import Any

import pytest

from shakeout.cli.report import clean, report, runs_table

ESC = "\x1b"
# An OSC 8 hyperlink, a window-title change, a screen clear, colours, an 8-bit CSI, a bell,
# a carriage return that overwrites the line and a right-to-left override.
EVIL = (
    f"{ESC}]8;;http://evil.example{ESC}\\click{ESC}]8;;{ESC}\\ "
    f"{ESC}]0;pwned\x07{ESC}[2J{ESC}[31mred{ESC}[0m\x9b2J\x07\rover\u202eright"
)


def is_clean(text: str) -> bool:
    return not any(
        (ord(c) < 0x20 and c not in "\n") or 0x7F <= ord(c) <= 0x9F or 0x202A <= ord(c) <= 0x202E
        for c in text
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (EVIL, "click redoverright"),
        ("plain text", "plain text"),
        (f"{ESC}P1$r{ESC}\\x", "x"),  # DCS
        ("a\tb\nc", "a b c"),
    ],
)
def test_clean_removes_escapes(text: str, shown: str) -> None:
    assert clean(text) == shown


def test_findings_keep_their_lines() -> None:
    assert clean(f"one\n{ESC}[1mtwo\r\n", multiline=True) == "one\ntwo\n"


def run(text: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "team-a", "name": "r1", "creationTimestamp": "2026-01-01"},
        "spec": {
            "experimentRef": {"name": "e1"},
            "findings": f"held {text}\nsecond line",
            "actionRequired": "No",
        },
        "status": {
            "phase": "FAILED",
            "reason": "StateCheckFailed",
            "message": f"check {text}",
            "startedBy": {"username": f"alice{text}"},
            "canceledBy": {"username": f"bob{text}"},
            "targets": {"selected": 1, "matched": 1, "names": [f"pod{text}"]},
            "timeline": [{"time": "2026-01-01T00:00:00Z", "phase": "CREATED"}],
            "attacks": [
                {
                    "name": "a",
                    "type": "PodDelete",
                    "reversible": False,
                    "state": "Completed",
                    "targets": 1,
                    "message": f"done {text}",
                }
            ],
            "stateChecks": [
                {"name": "http", "successes": 0, "failures": 1, "lastMessage": f"GET {text}"}
            ],
        },
    }


def test_report_prints_no_escape_from_any_user_text() -> None:
    text = report(run(EVIL))
    assert is_clean(text), repr(text)
    assert "check click redoverright" in text
    assert "Started by:  aliceclick redoverright" in text
    assert "held click redoverright\nsecond line" in text  # findings keep their lines


def test_runs_table_prints_no_escape() -> None:
    evil = run(EVIL)
    evil["status"]["reason"] = f"Bad{EVIL}"
    text = runs_table([evil])
    assert is_clean(text)
    assert "\n" not in text.split("\n", 1)[1]  # one line per run
