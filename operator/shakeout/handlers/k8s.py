"""The operator's reads and writes of the Kubernetes API (the kubernetes client, in threads).

The client is synchronous; every call runs in a worker thread so that the kopf event
loop never blocks. Objects come back as plain dicts, as the API server sent them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from shakeout.api.common import GROUP, VERSION
from shakeout.api.switch import SWITCH_NAME
from shakeout.engine.policies import NamespaceFacts

Obj = dict[str, Any]

RUNS = "experimentruns"
EXPERIMENTS = "experiments"
SWITCHES = "chaosswitches"


# Requests the operator keeps in flight at once (a thread and a connection each): the
# attacks and rollbacks over many targets (handlers/attacks.py) are bounded by this.
CONCURRENT_REQUESTS = 32


def widen_executor() -> None:
    """The client is synchronous: give asyncio.to_thread as many threads as requests."""
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(CONCURRENT_REQUESTS, thread_name_prefix="api")
    )


class Conflict(Exception):  # noqa: N818  (named after the HTTP status)
    """A write lost an optimistic-concurrency race (HTTP 409)."""


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


def _body(resp: Any) -> Obj:
    return dict(json.loads(resp.data)) if resp.data else {}


@dataclass
class Pod:
    name: str
    ready: bool
    deleting: bool
    uid: str = ""
    node: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    owner_kind: str | None = None
    owner_name: str | None = None


def pod_from(item: Obj) -> Pod:
    meta = item["metadata"]
    conditions = item.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    deleting = bool(meta.get("deletionTimestamp"))
    owner: Obj = next((o for o in meta.get("ownerReferences") or [] if o.get("controller")), {})
    return Pod(
        name=meta["name"],
        ready=ready and not deleting,
        deleting=deleting,
        uid=meta.get("uid", ""),
        node=item.get("spec", {}).get("nodeName"),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        owner_kind=owner.get("kind"),
        owner_name=owner.get("name"),
    )


class Api:
    """Thin async wrappers; each method is one API request."""

    def __init__(self, request_timeout: float | None = None, config_file: str | None = None):
        _load_config(config_file)
        # None waits as long as the connection lives (the operator); the node agent sets a
        # bound so that a blackholed API server cannot hang its renewals.
        self.request_timeout = request_timeout
        configuration = client.Configuration.get_default_copy()
        # As many connections as requests in flight (attacks on many targets at once).
        configuration.connection_pool_maxsize = CONCURRENT_REQUESTS
        api_client = client.ApiClient(configuration)
        self.api_client = api_client
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as err:
            if err.status == 409:
                raise Conflict(str(err.reason)) from err
            raise

    async def _get_or_none(self, fn: Any, *args: Any) -> Obj | None:
        try:
            resp = await self._call(fn, *args, _preload_content=False)
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return _body(resp)

    async def request(
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, str] | None = None,
        merge_patch: bool = False,
        json_patch: list[Obj] | None = None,
        accept: str = "application/json",
    ) -> Obj | None:
        """Any REST call by path (objects without a typed client here); None on 404.

        json_patch: a JSON Patch (RFC 6902) as the body; a failed "test" raises Conflict.
        """
        headers = {"Accept": accept}
        if json_patch is not None:
            headers["Content-Type"] = "application/json-patch+json"
        elif body is not None:
            headers["Content-Type"] = (
                "application/merge-patch+json" if merge_patch else "application/json"
            )
        payload: Any = json_patch if json_patch is not None else body

        def call() -> Any:
            serialized = self.api_client.param_serialize(
                method,
                path,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=payload,
                auth_settings=["BearerToken"],
            )
            resp = self.api_client.call_api(*serialized, _request_timeout=self.request_timeout)
            resp.read()
            return resp

        resp = await asyncio.to_thread(call)
        if resp.status == 404:
            return None
        if resp.status == 409 or (json_patch is not None and resp.status == 422):
            raise Conflict(f"{method} {path}: conflict ({resp.status})")
        if resp.status >= 400:
            raise ApiException(status=resp.status, reason=f"{method} {path}: {resp.data[:500]!r}")
        return _body(resp)

    # -- shakeout objects ------------------------------------------------------

    async def get_experiment(self, namespace: str, name: str) -> Obj | None:
        return await self._get_or_none(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, EXPERIMENTS, name
        )

    async def get_run(self, namespace: str, name: str) -> Obj | None:
        return await self._get_or_none(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, RUNS, name
        )

    async def list_runs(self, namespace: str | None = None, selector: str = "") -> list[Obj]:
        if namespace is None:
            resp = await self._call(
                self.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                RUNS,
                label_selector=selector,
                _preload_content=False,
            )
        else:
            resp = await self._call(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                RUNS,
                label_selector=selector,
                _preload_content=False,
            )
        return list(_body(resp).get("items", []))

    async def create_run(self, namespace: str, body: Obj) -> Obj:
        resp = await self._call(
            self.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            RUNS,
            body,
            _preload_content=False,
        )
        return _body(resp)

    async def delete_run(self, namespace: str, name: str) -> None:
        try:
            await self._call(
                self.custom.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                RUNS,
                name,
                _preload_content=False,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    async def get_switch(self) -> Obj | None:
        return await self._get_or_none(
            self.custom.get_cluster_custom_object, GROUP, VERSION, SWITCHES, SWITCH_NAME
        )

    async def patch_switch_status(self, patch: Obj) -> Obj:
        """Merge-patch the switch's status; a metadata.resourceVersion makes it a CAS."""
        resp = await self._call(
            self.custom.patch_cluster_custom_object_status,
            GROUP,
            VERSION,
            SWITCHES,
            SWITCH_NAME,
            patch,
            _preload_content=False,
        )
        return _body(resp)

    async def patch_run_status(self, namespace: str, name: str, status: Obj) -> Obj:
        resp = await self._call(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            RUNS,
            name,
            {"status": status},
            _preload_content=False,
        )
        return _body(resp)

    async def patch_experiment_status(self, namespace: str, name: str, status: Obj) -> None:
        try:
            await self._call(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                EXPERIMENTS,
                name,
                {"status": status},
                _preload_content=False,
            )
        except ApiException as err:
            if err.status != 404:
                raise

    # -- the cluster's own objects ---------------------------------------------

    async def list_pods(self, namespace: str, selector: str, cached: bool = False) -> list[Pod]:
        """The pods matching a selector. cached: served from the API server's watch cache
        (resourceVersion 0: cheap, possibly a moment old), fine for picking targets;
        never for finding what to roll back, which must see every write of ours."""
        extra = {"resource_version": "0"} if cached else {}
        resp = await self._call(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=selector,
            _preload_content=False,
            **extra,
        )
        return [pod_from(item) for item in _body(resp).get("items", [])]

    async def list_pod_names(self, namespace: str, selector: str, cached: bool = True) -> list[Pod]:
        """The pods matching a selector, names and deletion only (cached: from the watch
        cache, as list_pods).

        Asked for as a Table without objects: a few hundred bytes a pod instead of several
        KiB, so that picking 1,000 targets out of 3,000 pods costs milliseconds, not a
        second of JSON. Enough for the attacks that need nothing but the names.
        """
        query = {"labelSelector": selector, "includeObject": "None"}
        if cached:
            query["resourceVersion"] = "0"
        table = await self.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            query=query,
            accept="application/json;as=Table;v=v1;g=meta.k8s.io",
        )
        columns = [c["name"] for c in (table or {}).get("columnDefinitions", [])]
        name_at, status_at = columns.index("Name"), columns.index("Status")
        pods = []
        for row in (table or {}).get("rows", []):
            cells = row["cells"]
            # kubectl's own rule: a pod with a deletionTimestamp shows as Terminating.
            deleting = cells[status_at] == "Terminating"
            pods.append(Pod(name=cells[name_at], ready=False, deleting=deleting))
        return pods

    async def namespace_facts(self, name: str) -> NamespaceFacts:
        """The namespace as the blast-radius rails see it (its labels)."""
        obj = await self._get_or_none(self.core.read_namespace, name)
        return NamespaceFacts(name, dict(((obj or {}).get("metadata") or {}).get("labels") or {}))

    async def delete_pod(self, namespace: str, name: str, grace_seconds: int) -> bool:
        """Delete a pod; False when it was already gone (the delete is idempotent)."""
        try:
            await self._call(
                self.core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_seconds,
                _preload_content=False,
            )
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def _scale_fns(self, kind: str) -> tuple[Any, Any]:
        if kind == "Deployment":
            return self.apps.read_namespaced_deployment_scale, (
                self.apps.patch_namespaced_deployment_scale
            )
        return self.apps.read_namespaced_stateful_set_scale, (
            self.apps.patch_namespaced_stateful_set_scale
        )

    async def get_replicas(self, kind: str, namespace: str, name: str) -> int:
        read, _ = self._scale_fns(kind)
        resp = await self._call(read, name, namespace, _preload_content=False)
        return int(_body(resp).get("spec", {}).get("replicas") or 0)

    async def set_replicas(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        _, patch = self._scale_fns(kind)
        await self._call(
            patch, name, namespace, {"spec": {"replicas": replicas}}, _preload_content=False
        )

    async def get_workload(self, kind: str, namespace: str, name: str) -> Obj | None:
        read = (
            self.apps.read_namespaced_deployment
            if kind == "Deployment"
            else self.apps.read_namespaced_stateful_set
        )
        return await self._get_or_none(read, name, namespace)


_api: Api | None = None


def api(request_timeout: float | None = None) -> Api:
    """The process-wide client, made on first use (after kopf has logged in)."""
    global _api  # noqa: PLW0603
    if _api is None:
        _api = Api(request_timeout)
    return _api


def use(client_api: Api) -> None:
    """Make `client_api` the process-wide client (benchmarks drive handler code with it)."""
    global _api  # noqa: PLW0603
    _api = client_api
