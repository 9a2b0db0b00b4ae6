"""Asking the API server's authorizer about a user: SubjectAccessReview."""

from __future__ import annotations

from shakeout.api.common import GROUP
from shakeout.api.run import UserInfo
from shakeout.kube.client import api
from shakeout.kube.resources import RUNS, SUBJECT_ACCESS_REVIEWS


async def may_run_in(user: UserInfo, namespace: str) -> bool:
    """Whether the user is a member of the team: may create ExperimentRuns in its namespace.

    Cancel and Stop All are open to every authenticated user; creating runs (and so
    editing a run's findings) is what RBAC reserves for members.
    """
    review = {
        "apiVersion": SUBJECT_ACCESS_REVIEWS.api_version,
        "kind": "SubjectAccessReview",
        "spec": {
            "user": user.username,
            "groups": list(user.groups),
            "resourceAttributes": {
                "group": GROUP,
                "resource": RUNS.plural,
                "verb": "create",
                "namespace": namespace,
            },
        },
    }
    result = await api().create(SUBJECT_ACCESS_REVIEWS, None, review)
    return bool((result.get("status") or {}).get("allowed"))
