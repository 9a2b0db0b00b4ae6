"""The keeper's line protocol: one JSON object per line, commands on stdin, replies on stdout.

    python -m shakeout.agent.node.keeper --journal PATH --deadline SECONDS ...

The keeper's first line on stdout, once it rolled back what an earlier keeper left in
the journal:

    {"event":"ready","pid":P,"recovered":[...],"unrecovered":[...]}

Then one reply per command. A command may carry "seq"; its reply echoes "seq" (and
"id"), which is how the client matches replies to the commands it has in flight.

    {"op":"apply","id":ID,"type":T,"parameters":{...},"pod":{namespace,name,uid,annotations},
     "notAfter":EPOCH_SECONDS (optional: the keeper rolls the fault back then, on its own)}
        -> {"id":ID,"ok":true,"record":{...}} | {"id":ID,"ok":false,"error":"..."}
    {"op":"apply_batch","faults":[{"id","type","parameters","pod","notAfter"}, ...]}
        -> {"ok":true,"results":[{"id":ID,"ok":true,"record":{...}}
                                 | {"id":ID,"ok":false,"error":"...","halted":true?}, ...]}
        (in order; one /proc scan, one journal save before and one after, pods side by
        side; "halted": not started, a rollback_all came meanwhile)
    {"op":"rollback","id":ID}  -> {"id":ID,"ok":true,"held":bool} (held: it was held)
    {"op":"rollback_many","ids":[...]} -> {"ok":true,"held":[...],"errors":{}}
                                  | {"ok":false,"error":...,"held":[...],"errors":{id: error}}
    {"op":"rollback_all"}      -> {"ok":true,"errors":{}} | {"ok":false,"error":...,"errors":{...}}
    {"op":"list"}              -> {"ok":true,"ids":[...]}
    {"op":"heartbeat"}         -> {"ok":true,"held":[...],"unrecovered":{id: error}}, answered
                                  at once, even mid-apply

Commands other than heartbeat run one at a time, in the order they came; a
rollback_all, as it arrives, also stops a batch in progress from starting more faults.
A line that is no JSON object gets {"ok":false,"error":...} without "seq". Every
line, either way, is at most LINE_LIMIT bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

# The keeper's program: `python -m MODULE`.
MODULE = "shakeout.agent.node.keeper"
LINE_LIMIT = 1 << 20
MAX_DEADLINE_SECONDS = 86_400.0
READY = "ready"


class Op(StrEnum):
    APPLY = "apply"
    APPLY_BATCH = "apply_batch"
    ROLLBACK = "rollback"
    ROLLBACK_MANY = "rollback_many"
    ROLLBACK_ALL = "rollback_all"
    LIST = "list"
    HEARTBEAT = "heartbeat"


def checked_deadline(value: float) -> float:
    """The keeper's deadline in seconds; ValueError unless in (0, MAX_DEADLINE_SECONDS]."""
    if not (math.isfinite(value) and 0 < value <= MAX_DEADLINE_SECONDS):
        raise ValueError(f"must be in (0, {MAX_DEADLINE_SECONDS:g}] seconds")
    return value


def encode(message: Mapping[str, Any]) -> bytes:
    """One line of the protocol."""
    return json.dumps(message).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """The object on one line; ValueError when it is no JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError("not an object")
    return message


def reply_to(command: Mapping[str, Any]) -> dict[str, Any]:
    """The start of a command's reply: the fields the client matches it by."""
    return {key: command[key] for key in ("seq", "id") if key in command}
