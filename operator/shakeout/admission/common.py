"""What the webhooks of every kind share: reading a request's object and its user."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from shakeout.kube.client import timestamp


def spec_of(obj: Any) -> dict[str, Any]:
    """An object's spec, or {}: mutating webhooks run before the schema is checked, so a
    spec may be anything at all (the schema then refuses it with its own message)."""
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    return dict(spec) if isinstance(spec, Mapping) else {}


def user_json(userinfo: Any) -> str:
    """The requesting user as recorded on a run (the API server's own userInfo)."""
    info = dict(userinfo or {})
    return json.dumps(
        {"username": info.get("username", "unknown"), "groups": list(info.get("groups") or [])},
        separators=(",", ":"),
        # As written, never escaped: the policy shakeout-run-changes compares the record
        # with the requesting user spelled out in CEL (deploy/rbac/run-changes-policy.yaml).
        ensure_ascii=False,
    )


def username(userinfo: Any) -> str:
    return str(dict(userinfo or {}).get("username", "unknown"))


def now_iso() -> str:
    return timestamp(datetime.now(UTC))
