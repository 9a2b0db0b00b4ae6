"""The project's reads and writes of the Kubernetes API: one request path.

Every request goes through `Api.request`: its URL comes from a resource descriptor
(kube/resources.py, each segment quoted), it has a timeout, and a failure raises one of
kube/errors.py, whatever the method. It is sent by aiohttp on the event loop
(kube/transport.py), and so are the watch streams outside kopf (`Api.watch`); the
kubernetes client gives only the configuration and authentication. Objects come back as
plain dicts, as the API server sent them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
from kubernetes import client, config

from shakeout.api.switch import SWITCH_NAME
from shakeout.kube.errors import KubeError, NotFound, Unavailable, error_for
from shakeout.kube.pods import Pod, pod_from, pods_from_table
from shakeout.kube.resources import (
    EXPERIMENTS,
    NAMESPACES,
    PODS,
    RUNS,
    SWITCHES,
    WORKLOADS,
    Resource,
)
from shakeout.kube.transport import Answer, StreamRefusedError, Transport

Obj = dict[str, Any]

# Requests the operator keeps in flight at once (a connection each): the
# attacks and rollbacks over many targets (attacks/fanout.py) are bounded by this.
CONCURRENT_REQUESTS = 32
# No request waits longer for its answer: an API server that stops answering must not
# hang a run's daemon, a webhook or an agent (the agent sets a shorter one).
REQUEST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
TOO_MANY_REQUESTS = 429

# Lists are read in pages of this many objects (limit and continue): no single answer of
# the API server holds every run or pod of a big cluster at once.
PAGE_SIZE = 500

# The API server ends a watch after this many seconds (its timeoutSeconds); a watch that
# says nothing for WATCH_SLACK seconds more is broken.
WATCH_SECONDS = 60
WATCH_SLACK = 10

# client-go's rule: a 429 that says when to try again (Retry-After: the API server's
# priority and fairness, or a resource's storage still initializing after its CRD was
# created) is tried again, at most this many times, waiting at most MAX_RETRY_AFTER.
RETRIES_AFTER = 10
MAX_RETRY_AFTER = 1.0

JSON = "application/json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def timestamp(moment: datetime) -> str:
    """A time as Kubernetes writes it (RFC 3339, UTC, seconds)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load_config(config_file: str | None = None) -> None:
    if config_file is not None:
        config.load_kube_config(config_file=config_file)
        return
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


class Api:
    """An API client: `request` by resource descriptor, and the reads and writes the
    operator and the node agent share."""

    def __init__(
        self, request_timeout: float = REQUEST_TIMEOUT, config_file: str | None = None
    ) -> None:
        _load_config(config_file)
        self.request_timeout = request_timeout
        self.configuration = client.Configuration.get_default_copy()
        # As many connections as requests in flight (attacks on many targets at once).
        self.transport = Transport(self.configuration, CONCURRENT_REQUESTS)
        # Watches hold a connection each for as long as they last, so they have their own.
        self.streams = Transport(self.configuration, 0)

    async def close(self) -> None:
        """Close the connections of the running event loop's sessions."""
        await self.transport.close()
        await self.streams.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, str] | None = None,
        merge_patch: bool = False,
        json_patch: list[Obj] | None = None,
        accept: str = JSON,
        timeout: float | None = None,
    ) -> Obj:
        """One REST call; raises kube.errors (NotFound, Conflict, ...) on failure.

        json_patch: a JSON Patch (RFC 6902) as the body; a failed "test" raises Conflict.
        """
        headers = {"Accept": accept}
        if json_patch is not None:
            headers["Content-Type"] = "application/json-patch+json"
        elif body is not None:
            headers["Content-Type"] = "application/merge-patch+json" if merge_patch else JSON
        payload: Any = json_patch if json_patch is not None else body
        read_timeout = timeout or self.request_timeout
        data = json.dumps(payload).encode() if payload is not None else None
        for attempt in range(RETRIES_AFTER + 1):
            try:
                answer = await self.transport.send(
                    method,
                    path,
                    query=list((query or {}).items()),
                    headers=headers,
                    data=data,
                    connect_timeout=min(CONNECT_TIMEOUT, read_timeout),
                    read_timeout=read_timeout,
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as err:
                raise Unavailable(f"{method} {path}: {err or type(err).__name__}", 0) from err
            if not _try_again(answer, attempt):
                break
            await asyncio.sleep(min(answer.retry_after or 0.0, MAX_RETRY_AFTER))
        if answer.status >= 400:
            message = f"{method} {path}: {answer.status} {_message(answer.data)}"
            raise error_for(answer.status, message, json_patch=json_patch is not None)
        return dict(json.loads(answer.data)) if answer.data else {}

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        labels: str = "",
        fields: str = "",
        version: str = "",
        seconds: int = WATCH_SECONDS,
    ) -> AsyncIterator[Obj]:
        """Each event ({type, object}) of a watch, on the event loop, until the API server
        ends it (after `seconds`). Without a version, every object that exists comes
        first as ADDED. A refused or broken stream raises kube.errors, and so does an
        ERROR event (Unavailable; e.g. 410 Gone, the version is too old): the caller
        lists again, or watches again without a version."""
        query = [*_list_query(labels, fields, False).items(), ("watch", "true")]
        query.append(("timeoutSeconds", str(seconds)))
        if version:
            query.append(("resourceVersion", version))
        path = resource.path(namespace)
        try:
            async for line in self.streams.lines(
                path,
                query=query,
                headers={"Accept": JSON},
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=seconds + WATCH_SLACK,
            ):
                event = json.loads(line)
                if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
                    raise ValueError(f"not a watch event: {line[:200]!r}")
                if event.get("type") == "ERROR":
                    raise Unavailable(f"watch {path}: {event['object']}", 0)
                yield event
        except StreamRefusedError as refused:
            status, data = refused.answer.status, refused.answer.data
            raise error_for(status, f"watch {path}: {status} {_message(data)}") from None
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as err:
            raise Unavailable(f"watch {path}: {err or type(err).__name__}", 0) from err

    # -- verbs by descriptor -------------------------------------------------------------

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """One object, or None when it does not exist."""
        try:
            return await self.request("GET", resource.path(namespace, name))
        except NotFound:
            return None

    async def list_objects(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        labels: str = "",
        fields: str = "",
        cached: bool = False,
    ) -> list[Obj]:
        """The objects matching the selectors (cached: from the watch cache, see list_pods),
        read in pages of PAGE_SIZE."""
        items: list[Obj] = []
        async for page in self._pages(
            resource.path(namespace), _list_query(labels, fields, cached)
        ):
            items.extend(page.get("items") or [])
        return items

    async def _pages(
        self, path: str, query: dict[str, str], accept: str = JSON
    ) -> AsyncIterator[Obj]:
        """Each page of a list: `limit`, then `continue` with the token of the page before.

        A cached list (resourceVersion 0: one namespace's pods for picking targets) is
        answered whole by the API server's watch cache, which does not page: it is asked
        for once, as it is served.
        """
        if query.get("resourceVersion") != "0":
            query = {**query, "limit": str(PAGE_SIZE)}
        while True:
            page = await self.request("GET", path, query=query, accept=accept)
            yield page
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return
            query = {k: v for k, v in query.items() if k != "resourceVersion"}
            query["continue"] = str(token)

    async def create(self, resource: Resource, namespace: str | None, body: Obj) -> Obj:
        return await self.request("POST", resource.path(namespace), body)

    async def merge_patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Obj,
        subresource: str | None = None,
    ) -> Obj:
        """A JSON merge patch; a metadata.resourceVersion in it makes it a compare-and-swap."""
        path = resource.path(namespace, name, subresource)
        return await self.request("PATCH", path, patch, merge_patch=True)

    async def delete(self, resource: Resource, namespace: str | None, name: str) -> bool:
        """Delete an object; False when it was gone already (the delete is idempotent)."""
        try:
            await self.request("DELETE", resource.path(namespace, name))
        except NotFound:
            return False
        return True

    # -- shakeout objects ---------------------------------------------------------------

    async def get_experiment(self, namespace: str, name: str) -> Obj | None:
        return await self.get(EXPERIMENTS, namespace, name)

    async def get_run(self, namespace: str, name: str) -> Obj | None:
        return await self.get(RUNS, namespace, name)

    async def list_runs(self, namespace: str | None = None, selector: str = "") -> list[Obj]:
        return await self.list_objects(RUNS, namespace, labels=selector)

    async def create_run(self, namespace: str, body: Obj) -> Obj:
        return await self.create(RUNS, namespace, body)

    async def delete_run(self, namespace: str, name: str) -> None:
        await self.delete(RUNS, namespace, name)

    async def get_switch(self) -> Obj | None:
        return await self.get(SWITCHES, None, SWITCH_NAME)

    async def patch_switch_status(self, patch: Obj) -> Obj:
        """Merge-patch the switch's status; a metadata.resourceVersion makes it a CAS."""
        return await self.merge_patch(SWITCHES, None, SWITCH_NAME, patch, "status")

    async def patch_run_status(self, namespace: str, name: str, status: Obj) -> Obj:
        return await self.merge_patch(RUNS, namespace, name, {"status": status}, "status")

    async def patch_experiment_status(self, namespace: str, name: str, status: Obj) -> None:
        """A no-op when the Experiment is gone (its status has no one left to read it)."""
        try:
            await self.merge_patch(EXPERIMENTS, namespace, name, {"status": status}, "status")
        except NotFound:
            return

    # -- the cluster's own objects --------------------------------------------------------

    async def list_pods(
        self, namespace: str, selector: str, cached: bool = False, fields: str = ""
    ) -> list[Pod]:
        """The pods matching a selector. cached: served from the API server's watch cache
        (resourceVersion 0: cheap, possibly a moment old), fine for picking targets;
        never for finding what to roll back, which must see every write of ours."""
        items = await self.list_objects(
            PODS, namespace, labels=selector, fields=fields, cached=cached
        )
        return [pod_from(item) for item in items]

    async def list_pod_names(
        self, namespace: str, selector: str, cached: bool = True, fields: str = ""
    ) -> list[Pod]:
        """The pods matching a selector, names and deletion only (cached: as list_pods).

        Asked for as a Table without objects: a few hundred bytes a pod instead of several
        KiB, so that picking 1,000 targets out of 3,000 pods costs milliseconds, not a
        second of JSON. Enough for the attacks that need nothing but the names.
        """
        query = _list_query(selector, fields, cached)
        query["includeObject"] = "None"
        pods: list[Pod] = []
        columns = None
        async for table in self._pages(PODS.path(namespace), query, accept=TABLE):
            if table.get("columnDefinitions"):
                columns = table["columnDefinitions"]
            elif columns is not None:  # a continued page may leave the columns out
                table = {**table, "columnDefinitions": columns}  # noqa: PLW2901
            pods.extend(pods_from_table(table))
        return pods

    async def namespace_labels(self, name: str) -> dict[str, str]:
        """A namespace's labels ({} when it does not exist)."""
        obj = await self.get(NAMESPACES, None, name)
        return dict(((obj or {}).get("metadata") or {}).get("labels") or {})

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> bool:
        """Delete a pod; False when it was already gone (the delete is idempotent)."""
        try:
            grace = {"gracePeriodSeconds": str(grace_seconds)}
            await self.request("DELETE", PODS.path(namespace, name), query=grace)
        except NotFound:
            return False
        return True

    async def get_replicas(self, kind: str, namespace: str, name: str) -> int:
        scale = await self.request("GET", WORKLOADS[kind].path(namespace, name, "scale"))
        return int((scale.get("spec") or {}).get("replicas") or 0)

    async def get_scale(self, kind: str, namespace: str, name: str) -> Obj | None:
        """A workload's Scale (spec.replicas, metadata.resourceVersion); None when gone."""
        try:
            return await self.request("GET", WORKLOADS[kind].path(namespace, name, "scale"))
        except NotFound:
            return None

    async def set_replicas(
        self,
        kind: str,
        namespace: str,
        name: str,
        replicas: int,
        resource_version: str | None = None,
    ) -> None:
        """Scale a workload; with resource_version, a compare-and-swap (Conflict if the
        workload changed since that version was read)."""
        patch: Obj = {"spec": {"replicas": replicas}}
        if resource_version is not None:
            patch["metadata"] = {"resourceVersion": resource_version}
        await self.merge_patch(WORKLOADS[kind], namespace, name, patch, "scale")

    async def get_workload(self, kind: str, namespace: str, name: str) -> Obj | None:
        return await self.get(WORKLOADS[kind], namespace, name)


def _list_query(labels: str, fields: str, cached: bool) -> dict[str, str]:
    query: dict[str, str] = {}
    if labels:
        query["labelSelector"] = labels
    if fields:
        query["fieldSelector"] = fields
    if cached:
        query["resourceVersion"] = "0"
    return query


def _try_again(answer: Answer, attempt: int) -> bool:
    return (
        answer.status == TOO_MANY_REQUESTS
        and answer.retry_after is not None
        and (attempt < RETRIES_AFTER)
    )


def _message(data: bytes | None) -> str:
    """The API server's own message from a Status body (or the first bytes of the body)."""
    try:
        return str(json.loads(data or b"{}").get("message") or "")[:500]
    except ValueError:
        return repr((data or b"")[:500])


_api: Api | None = None


def api() -> Api:
    """The process-wide client, made on first use (after kopf has logged in)."""
    global _api  # noqa: PLW0603
    if _api is None:
        _api = Api()
    return _api


def use(client_api: Api) -> None:
    """Make `client_api` the process-wide client (tests and benchmarks drive code with a
    client of their own)."""
    global _api  # noqa: PLW0603
    _api = client_api


__all__ = ["CONCURRENT_REQUESTS", "Api", "KubeError", "Obj", "Pod", "api", "timestamp", "use"]
