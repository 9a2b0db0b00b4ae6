"""Asking the API server's authorizer about a user: SubjectAccessReview."""

from __future__ import annotations

import asyncio

from kubernetes import client

from shakeout.api.common import GROUP
from shakeout.api.run import UserInfo
from shakeout.handlers.k8s import api


async def may_run_in(user: UserInfo, namespace: str) -> bool:
    """Whether the user is a member of the team: may create ExperimentRuns in its namespace.

    Cancel and Stop All are open to every authenticated user; creating runs (and so
    editing a run's findings) is what RBAC reserves for members.
    """
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user.username,
            groups=user.groups,
            resource_attributes=client.V1ResourceAttributes(
                group=GROUP, resource="experimentruns", verb="create", namespace=namespace
            ),
        )
    )
    authz = client.AuthorizationV1Api(api().core.api_client)
    result = await asyncio.to_thread(authz.create_subject_access_review, review)
    return bool(result.status is not None and result.status.allowed)
