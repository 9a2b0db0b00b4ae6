"""An in-memory API server behind `Api.request`, and a RunHost, for driving the executor.

`FakeApi` is an `Api` whose `request` serves the requests itself: the verbs and typed
helpers of kube/client.py run unchanged on top of it. It keeps objects by (collection path,
name), counts a resourceVersion up on every write, and answers as the API server would in
the ways the operator depends on: merge patches (RFC 7386), JSON patches with `test`,
compare-and-swap on metadata.resourceVersion, status and scale subresources, label and
field selectors, Table listings and SubjectAccessReviews. Every request is recorded
(`calls`), failures and delays can be injected (`fail`, `delay`) and hooks run when a
request arrives (`on`), so that a test can change the world at an exact point of a run.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from shakeout.api.common import API_VERSION, LABEL_KEY
from shakeout.api.labels import STARTED_BY
from shakeout.api.switch import SWITCH_NAME
from shakeout.kube.client import JSON, Api, Obj
from shakeout.kube.errors import Conflict, Invalid, KubeError, NotFound
from shakeout.kube.resources import (
    DEPLOYMENTS,
    EXPERIMENTS,
    NAMESPACES,
    PODS,
    RUNS,
    STATEFULSETS,
    SWITCHES,
    Resource,
)

# The kinds whose /scale subresource the fake serves.
SCALABLE = {(DEPLOYMENTS.group, DEPLOYMENTS.plural), (STATEFULSETS.group, STATEFULSETS.plural)}
# The pod fields a field selector may name (the API server refuses others with 400).
POD_FIELDS: dict[str, Callable[[Obj], str]] = {
    "status.phase": lambda o: (o.get("status") or {}).get("phase") or "",
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName") or "",
    "metadata.name": lambda o: o["metadata"]["name"],
    "metadata.namespace": lambda o: o["metadata"].get("namespace") or "",
}
META_FIELDS = {k: v for k, v in POD_FIELDS.items() if k.startswith("metadata.")}


@dataclass
class Call:
    """One request as the fake received it."""

    seq: int
    method: str
    path: str
    body: Any
    query: dict[str, str]
    merge_patch: bool
    json_patch: list[Obj] | None
    accept: str
    timeout: float | None
    # The error the fake answered with, if any.
    error: Exception | None = None

    @property
    def payload(self) -> Any:
        """What was sent: the JSON patch, else the body."""
        return self.json_patch if self.json_patch is not None else self.body


def _factory(error: Exception | Callable[[Call], Exception]) -> Callable[[Call], Exception]:
    """Each failure raises an exception of its own (a copy of the one given)."""
    if not isinstance(error, Exception):
        return error
    return lambda _call: copy.copy(error)


@dataclass
class Failure:
    method: str
    pattern: re.Pattern[str]
    error: Callable[[Call], Exception]
    times: int | None
    when: Callable[[Call], bool] | None
    after: bool

    def matches(self, call: Call) -> bool:
        return (
            self.method in (call.method, "*")
            and self.pattern.search(call.path) is not None
            and (self.times is None or self.times > 0)
            and (self.when is None or self.when(call))
        )


@dataclass
class Hook:
    method: str
    pattern: re.Pattern[str]
    action: Callable[[Call], object]
    when: Callable[[Call], bool] | None

    def matches(self, call: Call) -> bool:
        return (
            self.method in (call.method, "*")
            and self.pattern.search(call.path) is not None
            and (self.when is None or self.when(call))
        )


@dataclass(frozen=True)
class Ref:
    """A request path, parsed: /api/v1 or /apis/GROUP/VERSION, then the resource."""

    prefix: str
    namespace: str | None
    plural: str
    name: str | None = None
    subresource: str | None = None

    @property
    def group(self) -> str:
        parts = self.prefix.split("/")
        return parts[2] if parts[1] == "apis" else ""

    @property
    def collection(self) -> str:
        ns = f"/namespaces/{self.namespace}" if self.namespace is not None else ""
        return f"{self.prefix}{ns}/{self.plural}"


def parse(path: str) -> Ref:
    raw = path.split("?", maxsplit=1)[0].strip("/").split("/")
    parts = [unquote(p) for p in raw]
    if parts[0] == "api" and len(parts) >= 3:
        prefix, rest = "/" + "/".join(parts[:2]), parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        prefix, rest = "/" + "/".join(parts[:3]), parts[3:]
    else:
        raise NotFound(f"no such API path {path}")
    if any(p in ("", ".", "..") for p in rest):
        raise Invalid(f"bad path segment in {path}")
    if rest[0] == "namespaces" and len(rest) >= 3:
        ns, rest = rest[1], rest[2:]
    else:
        ns = None
    if len(rest) > 3:
        raise NotFound(f"no such API path {path}")
    return Ref(prefix, ns, rest[0], *rest[1:])


def ref_of(resource: Resource, namespace: str | None, name: str | None = None) -> Ref:
    return parse(resource.path(namespace, name))


# -- RFC 7386 and RFC 6902 --------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise Conflict(f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, tokens: list[str]) -> tuple[Any, str]:
    node = doc
    for token in tokens[:-1]:
        try:
            node = node[int(token)] if isinstance(node, list) else node[token]
        except (KeyError, IndexError, ValueError, TypeError) as err:
            raise Conflict(f"no path {'/'.join(tokens)}") from err
    return node, tokens[-1]


def _get(doc: Any, tokens: list[str]) -> Any:
    parent, last = _parent(doc, tokens)
    try:
        return parent[int(last)] if isinstance(parent, list) else parent[last]
    except (KeyError, IndexError, ValueError, TypeError) as err:
        raise Conflict(f"no path {'/'.join(tokens)}") from err


def _set(parent: Any, last: str, value: Any, insert: bool, path: str) -> None:
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if insert:
            parent.insert(index, value)
        else:
            parent[index] = value
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise Conflict(f"no object at {path}")


def json_patch(doc: Obj, ops: list[Obj]) -> Obj:
    """RFC 6902 (add, remove, replace, test). Any failure is the client's Conflict: the API
    server answers 422 and kube.errors maps a JSON Patch's 422 to Conflict."""
    result = copy.deepcopy(doc)
    for op in ops:
        tokens = _pointer(op["path"])
        kind = op["op"]
        if kind == "test":
            if _get(result, tokens) != op["value"]:
                raise Conflict(f"test of {op['path']} failed")
            continue
        parent, last = _parent(result, tokens)
        if kind in ("remove", "replace"):
            _get(result, tokens)  # must exist
        if kind == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif kind in ("add", "replace"):
            _set(parent, last, copy.deepcopy(op["value"]), kind == "add", op["path"])
        else:
            raise Invalid(f"unsupported JSON patch op {kind}")
    return result


# -- selectors ---------------------------------------------------------------------------


def _split_terms(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current.strip())
    return terms


_SET_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s+(?P<op>in|notin)\s+\((?P<values>[^()]*)\)$")
_EQ_TERM = re.compile(r"^(?P<key>[^\s!=(),]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s!=(),]*)$")
_EXISTS_TERM = re.compile(r"^(?P<neg>!?)\s*(?P<key>[^\s!=(),]+)$")


def _label_test(op: str, key: str, values: frozenset[str]) -> Callable[[dict[str, str]], bool]:
    """One requirement; `!=` and `notin` match objects without the key, as in Kubernetes."""

    def test(labels: dict[str, str]) -> bool:
        if op == "exists":
            return key in labels
        if op == "!":
            return key not in labels
        if op in ("=", "==", "in"):
            return labels.get(key) in values
        return labels.get(key) not in values  # != and notin

    return test


def label_matcher(selector: str) -> Callable[[dict[str, str]], bool]:
    """A label selector (k=v, k==v, k!=v, k, !k, k in (..), k notin (..), comma-joined)."""
    tests: list[Callable[[dict[str, str]], bool]] = []
    for term in _split_terms(selector):
        if m := _SET_TERM.match(term):
            key, op = m["key"], m["op"]
            values = frozenset(v.strip() for v in m["values"].split(","))
        elif m := _EQ_TERM.match(term):
            key, op, values = m["key"], m["op"], frozenset({m["value"]})
        elif m := _EXISTS_TERM.match(term):
            key, op, values = m["key"], "!" if m["neg"] else "exists", frozenset()
        else:
            raise Invalid(f"unable to parse requirement {term!r}")
        if len(key) > 317 or not re.match(LABEL_KEY, key):
            raise Invalid(f"invalid label key {key!r}")
        tests.append(_label_test(op, key, values))
    return lambda labels: all(t(labels) for t in tests)


def _field_test(get: Callable[[Obj], str], equal: bool, value: str) -> Callable[[Obj], bool]:
    def test(obj: Obj) -> bool:
        return (get(obj) == value) == equal

    return test


def field_matcher(selector: str, fields: dict[str, Callable[[Obj], str]]) -> Callable[[Obj], bool]:
    """A field selector (f=v, f==v, f!=v, comma-joined) over the fields the kind supports."""
    tests: list[Callable[[Obj], bool]] = []
    for term in _split_terms(selector):
        m = re.match(r"^(?P<field>[A-Za-z.]+)\s*(?P<op>==|=|!=)\s*(?P<value>.*)$", term)
        if m is None:
            raise Invalid(f"invalid field selector {term!r}")
        get = fields.get(m["field"])
        if get is None:
            raise Invalid(f"field label not supported: {m['field']}")
        tests.append(_field_test(get, m["op"] != "!=", m["value"]))
    return lambda obj: all(t(obj) for t in tests)


def now_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the server ---------------------------------------------------------------------------


class FakeApi(Api):
    """An in-memory API server: every request of the operator is served here."""

    def __init__(self, request_timeout: float = 30.0) -> None:  # no kubeconfig, no client
        self.request_timeout = request_timeout
        self.objects: dict[tuple[str, str], Obj] = {}
        self.revision = 100
        self.calls: list[Call] = []
        self.failures: list[Failure] = []
        self.delays: list[tuple[str, re.Pattern[str], float]] = []
        self.hooks: list[Hook] = []
        # SubjectAccessReview: the (username, namespace) pairs allowed to create runs.
        self.members: set[tuple[str, str]] = set()
        self._uids = itertools.count(1)

    # -- injection -----------------------------------------------------------------

    def fail(
        self,
        method: str,
        path_regex: str,
        error: Exception | Callable[[Call], Exception],
        *,
        times: int | None = None,
        when: Callable[[Call], bool] | None = None,
        after: bool = False,
    ) -> None:
        """Answer matching requests with `error` (`times` times; None: always). `when`
        narrows by the request; `after`: the request takes effect, then the answer is lost
        (a timeout after the write)."""
        self.failures.append(
            Failure(method, re.compile(path_regex), _factory(error), times, when, after)
        )

    def delay(self, method: str, path_regex: str, seconds: float) -> None:
        """Answer matching requests `seconds` later."""
        self.delays.append((method, re.compile(path_regex), seconds))

    def on(
        self,
        method: str,
        path_regex: str,
        action: Callable[[Call], object],
        when: Callable[[Call], bool] | None = None,
    ) -> None:
        """Call `action` when a matching request arrives (before it is served)."""
        self.hooks.append(Hook(method, re.compile(path_regex), action, when))

    # -- the request path ------------------------------------------------------------

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
        call = Call(
            seq=len(self.calls),
            method=method,
            path=path,
            body=copy.deepcopy(body),
            query=dict(query or {}),
            merge_patch=merge_patch,
            json_patch=copy.deepcopy(json_patch),
            accept=accept,
            timeout=timeout,
        )
        self.calls.append(call)
        for hook in list(self.hooks):
            if hook.matches(call):
                hook.action(call)
        wait = sum(s for m, p, s in self.delays if m in (method, "*") and p.search(path))
        await asyncio.sleep(wait)  # a real request always lets others run meanwhile
        failure = next((f for f in self.failures if f.matches(call)), None)
        if failure is not None and failure.times is not None:
            failure.times -= 1
        try:
            if failure is not None and not failure.after:
                raise failure.error(call)
            result = self.serve(call)
            if failure is not None:
                raise failure.error(call)
        except KubeError as err:
            call.error = err
            raise
        return copy.deepcopy(result)

    def serve(self, call: Call) -> Obj:
        ref = parse(call.path)
        if ref.plural == "subjectaccessreviews":
            return self.serve_review(call.body or {})
        if call.method == "GET":
            if ref.name is None:
                return self.serve_list(ref, call)
            if ref.subresource == "scale":
                return self.scale_view(ref)
            return self.serve_get(ref)
        if call.method == "POST" and ref.name is None:
            return self.serve_post(ref, call.body or {})
        if call.method == "PATCH" and ref.name is not None:
            return self.serve_patch(ref, call)
        if call.method == "DELETE" and ref.name is not None:
            return self.serve_delete(ref)
        raise Invalid(f"the fake does not serve {call.method} {call.path}")

    # -- verbs -------------------------------------------------------------------------

    def bump(self) -> str:
        self.revision += 1
        return str(self.revision)

    def serve_get(self, ref: Ref) -> Obj:
        assert ref.name is not None
        obj = self.objects.get((ref.collection, ref.name))
        if obj is None:
            raise NotFound(f"{ref.plural} {ref.name!r} not found", 404)
        return obj

    def serve_post(self, ref: Ref, body: Obj) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise Invalid("metadata.name: Required value")
        if ref.namespace is not None:
            if (ref_of(NAMESPACES, None).collection, ref.namespace) not in self.objects:
                raise NotFound(f"namespaces {ref.namespace!r} not found", 404)
            meta["namespace"] = ref.namespace
        key = (ref.collection, name)
        if key in self.objects:
            raise Conflict(f"{ref.plural} {name!r} already exists", 409)
        self.stamp_new(obj)
        self.objects[key] = obj
        return obj

    def stamp_new(self, obj: Obj) -> None:
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{next(self._uids):04d}")
        meta.setdefault("creationTimestamp", now_stamp())
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self.bump()

    def serve_patch(self, ref: Ref, call: Call) -> Obj:
        if ref.subresource == "scale":
            return self.patch_scale(ref, call)
        current = self.serve_get(ref)
        if call.json_patch is not None:
            new = json_patch(current, call.json_patch)
        elif call.merge_patch and isinstance(call.body, dict):
            wanted = ((call.body.get("metadata") or {}).get("resourceVersion")) or None
            if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                raise Conflict(
                    f"the object has been modified (resourceVersion {wanted} is not "
                    f"{current['metadata']['resourceVersion']})",
                    409,
                )
            if ref.subresource == "status":
                # Only status changes through /status (and nothing else does).
                patch = {"status": call.body["status"]} if "status" in call.body else {}
            elif ref.subresource is None:
                patch = {k: v for k, v in call.body.items() if k != "status"}
            else:
                raise NotFound(f"no subresource {ref.subresource}")
            new = merge_patch(current, patch)
        else:
            raise Invalid("the fake serves merge patches and JSON patches only")
        return self.store(ref, current, new)

    def store(self, ref: Ref, current: Obj, new: Obj) -> Obj:
        assert ref.name is not None
        meta = new.setdefault("metadata", {})
        for fixed in ("name", "namespace", "uid", "creationTimestamp"):
            if fixed in current["metadata"]:
                meta[fixed] = current["metadata"][fixed]
        if new.get("spec") != current.get("spec"):
            meta["generation"] = int(current["metadata"].get("generation") or 1) + 1
        meta["resourceVersion"] = self.bump()
        # In place: a live view of the object (the run's host body) sees the change.
        current.clear()
        current.update(new)
        return current

    def scale_view(self, ref: Ref) -> Obj:
        if (ref.group, ref.plural) not in SCALABLE:
            raise NotFound(f"{ref.plural} have no scale subresource")
        obj = self.serve_get(ref)
        replicas = int((obj.get("spec") or {}).get("replicas") or 0)
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": ref.name,
                "namespace": ref.namespace,
                "resourceVersion": obj["metadata"]["resourceVersion"],
            },
            "spec": {"replicas": replicas},
            "status": {"replicas": int((obj.get("status") or {}).get("replicas") or replicas)},
        }

    def patch_scale(self, ref: Ref, call: Call) -> Obj:
        view = self.scale_view(ref)
        if not call.merge_patch or not isinstance(call.body, dict):
            raise Invalid("the fake serves merge patches of /scale only")
        wanted = ((call.body.get("metadata") or {}).get("resourceVersion")) or None
        if wanted is not None and wanted != view["metadata"]["resourceVersion"]:
            raise Conflict(
                f"the object has been modified (resourceVersion {wanted} is not "
                f"{view['metadata']['resourceVersion']})",
                409,
            )
        scaled = merge_patch(view, call.body)
        current = self.serve_get(ref)
        new = merge_patch(current, {"spec": {"replicas": scaled["spec"]["replicas"]}})
        self.store(ref, current, new)
        return self.scale_view(ref)

    def serve_delete(self, ref: Ref) -> Obj:
        assert ref.name is not None
        obj = self.serve_get(ref)
        del self.objects[(ref.collection, ref.name)]
        self.bump()
        return {"kind": "Status", "status": "Success", "details": {"name": obj["metadata"]["name"]}}

    def serve_list(self, ref: Ref, call: Call) -> Obj:
        labels = label_matcher(call.query.get("labelSelector", ""))
        is_pods = ref.group == "" and ref.plural == "pods"
        fields = field_matcher(
            call.query.get("fieldSelector", ""), POD_FIELDS if is_pods else META_FIELDS
        )
        items = [
            obj
            for (collection, _), obj in sorted(self.objects.items())
            if self.in_collection(collection, ref)
            and labels(obj["metadata"].get("labels") or {})
            and fields(obj)
        ]
        if "as=Table" in call.accept:
            return self.table(items, is_pods, call.query.get("includeObject") != "None")
        return {
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": str(self.revision)},
            "items": items,
        }

    @staticmethod
    def in_collection(collection: str, ref: Ref) -> bool:
        if ref.namespace is not None:
            return collection == ref.collection
        stored = parse(collection + "/x")
        return stored.prefix == ref.prefix and stored.plural == ref.plural

    @staticmethod
    def table(items: list[Obj], is_pods: bool, with_objects: bool) -> Obj:
        # The API server's own columns for pods (kubectl -o wide shows them all).
        pod_columns = ["Name", "Ready", "Status", "Restarts", "Age", "IP", "Node"]
        pod_columns += ["Nominated Node", "Readiness Gates"]
        columns = pod_columns if is_pods else ["Name", "Age"]
        rows = []
        for obj in items:
            meta = obj["metadata"]
            if is_pods:
                status = "Terminating" if meta.get("deletionTimestamp") else None
                status = status or (obj.get("status") or {}).get("phase") or "Pending"
                node = (obj.get("spec") or {}).get("nodeName") or "<none>"
                cells: list[Any] = [meta["name"], "1/1", status, 0, "1m", "<none>", node]
                cells += ["<none>", "<none>"]
            else:
                cells = [meta["name"], "1m"]
            row: Obj = {"cells": cells}
            if with_objects:
                row["object"] = {"kind": "PartialObjectMetadata", "metadata": meta}
            rows.append(row)
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "columnDefinitions": [{"name": c, "type": "string"} for c in columns],
            "rows": rows,
        }

    def serve_review(self, body: Obj) -> Obj:
        spec = body.get("spec") or {}
        namespace = (spec.get("resourceAttributes") or {}).get("namespace", "")
        allowed = (spec.get("user"), namespace) in self.members
        return {**copy.deepcopy(body), "status": {"allowed": allowed}}

    # -- seeding and inspection (no request recorded) ------------------------------------

    def put(self, resource: Resource, namespace: str | None, obj: Obj) -> Obj:
        """Store an object as if it had been created."""
        ref = ref_of(resource, namespace)
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if namespace is not None:
            meta["namespace"] = namespace
        self.stamp_new(obj)
        self.objects[(ref.collection, meta["name"])] = obj
        return obj

    def peek(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        """The stored object itself (live: later writes show in it), or None."""
        return self.objects.get((ref_of(resource, namespace).collection, name))

    def edit(self, resource: Resource, namespace: str | None, name: str, patch: Obj) -> Obj:
        """Merge-patch a stored object, status included (a write by someone else)."""
        ref = ref_of(resource, namespace, name)
        current = self.serve_get(ref)
        return self.store(ref, current, merge_patch(current, patch))

    def drop(self, resource: Resource, namespace: str | None, name: str) -> None:
        self.objects.pop((ref_of(resource, namespace).collection, name), None)

    def names(self, resource: Resource, namespace: str | None) -> list[str]:
        collection = ref_of(resource, namespace).collection
        return sorted(n for (c, n) in self.objects if c == collection)

    def find(
        self, method: str, path_regex: str, when: Callable[[Call], bool] | None = None
    ) -> list[Call]:
        """The recorded requests of this method on matching paths, in order."""
        pattern = re.compile(path_regex)
        return [
            c
            for c in self.calls
            if c.method == method and pattern.search(c.path) and (when is None or when(c))
        ]

    # -- the kinds the tests need ---------------------------------------------------------

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        return self.put(NAMESPACES, None, {"metadata": {"name": name, "labels": labels or {}}})

    def add_switch(
        self,
        enabled: bool = True,
        *,
        caps: Obj | None = None,
        namespace_mode: str | None = None,
        active_run: Obj | None = None,
    ) -> Obj:
        spec: Obj = {"enabled": enabled}
        if caps is not None:
            spec["caps"] = caps
        if namespace_mode is not None:
            spec["namespaceMode"] = namespace_mode
        obj: Obj = {
            "apiVersion": API_VERSION,
            "kind": "ChaosSwitch",
            "metadata": {"name": SWITCH_NAME},
            "spec": spec,
        }
        if active_run is not None:
            obj["status"] = {"activeRun": active_run}
        return self.put(SWITCHES, None, obj)

    def switch(self) -> Obj | None:
        return self.peek(SWITCHES, None, SWITCH_NAME)

    def add_experiment(self, namespace: str, name: str, spec: Obj) -> Obj:
        obj = {
            "apiVersion": API_VERSION,
            "kind": "Experiment",
            "metadata": {"name": name},
            "spec": spec,
        }
        return self.put(EXPERIMENTS, namespace, obj)

    def add_run(
        self,
        namespace: str,
        name: str,
        experiment: str,
        *,
        annotations: dict[str, str] | None = None,
        status: Obj | None = None,
        started_by: str | None = None,
        dry_run: bool = False,
    ) -> Obj:
        annotations = dict(annotations or {})
        if started_by is not None:
            annotations[STARTED_BY] = f'{{"username": "{started_by}", "groups": []}}'
        obj: Obj = {
            "apiVersion": API_VERSION,
            "kind": "ExperimentRun",
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"experimentRef": {"name": experiment}},
        }
        if dry_run:
            obj["spec"]["dryRun"] = True
        if status is not None:
            obj["status"] = status
        return self.put(RUNS, namespace, obj)

    def run(self, namespace: str, name: str) -> Obj:
        obj = self.peek(RUNS, namespace, name)
        assert obj is not None, f"run {namespace}/{name} is gone"
        return obj

    def add_deployment(self, namespace: str, name: str, replicas: int) -> Obj:
        obj = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": replicas},
        }
        return self.put(DEPLOYMENTS, namespace, obj)

    def replicas(self, namespace: str, name: str) -> int:
        obj = self.peek(DEPLOYMENTS, namespace, name)
        assert obj is not None
        return int(obj["spec"]["replicas"])

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        *,
        node: str | None = "node-1",
        phase: str = "Running",
        ready: bool = True,
        deleting: bool = False,
        owner: tuple[str, str] | None = None,
    ) -> Obj:
        meta: Obj = {"name": name, "labels": dict(labels)}
        if deleting:
            meta["deletionTimestamp"] = now_stamp()
        if owner is not None:
            meta["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "controller": True}
            ]
        spec: Obj = {"containers": [{"name": "main", "image": "app"}]}
        if node is not None:
            spec["nodeName"] = node
        status: Obj = {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        return self.put(PODS, namespace, {"metadata": meta, "spec": spec, "status": status})


@dataclass
class Event:
    type: str
    reason: str
    message: str


@dataclass
class FakeHost:
    """A RunHost: the run's body as the fake stores it (a live view, as kopf's is), the
    deletion and shutdown flags, and the Events posted."""

    fake: FakeApi
    namespace: str
    name: str
    being_deleted: bool = False
    exiting: bool = False
    events: list[Event] = field(default_factory=list)
    _last: Obj | None = None

    @property
    def body(self) -> Obj:
        live = self.fake.peek(RUNS, self.namespace, self.name)
        if live is not None:
            self._last = live
        assert self._last is not None, "the run was never stored"
        return self._last

    def deleting(self) -> bool:
        return self.being_deleted or bool(self.body["metadata"].get("deletionTimestamp"))

    def shutting_down(self) -> bool:
        return self.exiting

    def post_event(self, type: str, reason: str, message: str) -> None:  # noqa: A002
        self.events.append(Event(type, reason, message))

    def cancel(self) -> None:
        """A user sets spec.cancel (what the run's watch would show)."""
        self.body["spec"]["cancel"] = True
