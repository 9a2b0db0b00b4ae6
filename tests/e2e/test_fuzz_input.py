"""Bad input: objects generated from the CRD schemas, valid and broken, against the real
API server with the operator running.

Every generated object is created; the API server (schema, CEL, the ValidatingAdmission-
Policy) or the operator's webhooks must refuse it with a message, or it is stored and the
operator handles it. A stored object gets one generated merge patch, then it is deleted,
and it must be gone soon after: nothing may hang in Terminating (a live run carries the
operator's finalizer, which the operator must release). Throughout, the operator must
neither raise nor restart.

Generation is deterministic (Hypothesis, derandomized): the same count gives the same
objects, so a failure reproduces. SHAKEOUT_FUZZ_EXAMPLES sets the count (conftest.py).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from shakeout.api.labels import CHANGED_AT, CHANGED_BY, CHANGED_GENERATION
from tests.e2e import crdfuzz
from tests.e2e.conftest import Cluster, Operator
from tests.e2e.crdfuzz import GROUP, KINDS, VERSION, Case
from tests.e2e.runs import deployment


@pytest.fixture(scope="session")
def fuzz_examples() -> int:
    """How many generated cases a fuzz test runs: SHAKEOUT_FUZZ_EXAMPLES, 1000 by default
    (the quick sample of `make test`); `make reliability` passes 10000."""
    value = int(os.environ.get("SHAKEOUT_FUZZ_EXAMPLES", "1000"))
    if value < 1:
        raise pytest.UsageError("SHAKEOUT_FUZZ_EXAMPLES must be a positive number")
    return value


WORKERS = 4
GONE_TIMEOUT = 90.0
REQUEST_TIMEOUT = 60
CEL = crdfuzz.cel_messages()
# What kopf logs when one of our handlers, daemons or webhooks raised, or when its own
# processing broke; and what our scheduler logs when a tick raised. Admission refusals are
# logged as "failed permanently" (AdmissionError) and are not in this list.
EXCEPTION_MARKERS = (
    "Traceback (most recent call last)",
    "failed with an exception",
    "has failed with an unrecoverable error",
    "Throttling for",
    "exception was never retrieved",
    "scheduler tick failed",
)

ANY_TYPE = re.compile(r"'\w+' object")
OUR_FRAME = re.compile(r'^\s*File ".*/shakeout/')


@dataclass
class Tally:
    """Outcomes, by step and kind; what went wrong, grouped by what was said."""

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    # The error (names taken out) -> how often, and the first case that caused it.
    problems: dict[str, list[Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, row: str, column: str) -> None:
        with self.lock:
            self.counts[row, column] += 1

    def problem(self, case: Case, what: str) -> None:
        # Grouped by the first line, without names and types, so that one bug is one entry.
        key = (what.replace(case.name, "NAME") if case.name else what).splitlines()[0][:160]
        key = ANY_TYPE.sub("'…' object", key)
        with self.lock:
            self.counts["problems", "all"] += 1
            entry = self.problems.setdefault(key, [0, case, what])
            entry[0] += 1

    def report(self) -> str:
        out = []
        for count, case, what in self.problems.values():
            out.append(
                f"{count}x {what}\n  first seen with {case.kind} {case.name} "
                f"(mutation {case.mutation}, patch {case.patch_mutation}, {case.notes}):\n"
                f"  object: {json.dumps(case.body)[:1500]}\n"
                f"  patch: {json.dumps(case.patch)[:500]}"
                + (f"\n  companion: {json.dumps(case.companion)[:800]}" if case.companion else "")
            )
        return "\n".join(out)


def refusal_kind(err: ApiException) -> tuple[str, str]:
    """Who refused a request, and the message; ('', text) when it is no proper refusal."""
    try:
        status = json.loads(err.body or "{}")
    except ValueError:
        return "", f"HTTP {err.status}, body not JSON: {err.body!r:.300}"
    message = str(status.get("message") or "")
    if not message.strip():
        return "", f"HTTP {err.status} without a message: {err.body!r:.300}"
    if err.status is None or err.status >= 500 or err.status in (404, 409):
        return "", f"HTTP {err.status}: {message[:600]}"
    if "admission webhook" in message:
        return "webhook", message
    if "ValidatingAdmissionPolicy" in message:
        return "policy", message
    if err.status == 422:
        causes = [str(c.get("message", "")) for c in status.get("details", {}).get("causes", [])]
        causes = causes or [message]
        if all(any(rule in c for rule in CEL) for c in causes):
            return "cel", message
        return "schema", message
    if err.status == 400:
        return "schema", message  # strict decoding (unknown field), apiVersion or kind
    return "other", message


class Fuzzer:
    """Creates, patches and deletes the cases' objects in one namespace, and keeps count."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.api = client.CustomObjectsApi(
            config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
        )
        self.namespace = namespace
        self.tally = Tally()

    # -- one request each --------------------------------------------------------

    def call(self, verb: str, kind: str, *args: Any, **kwargs: Any) -> Any:
        """CustomObjectsApi.<verb>_{namespaced,cluster}_custom_object for a kind."""
        spec = KINDS[kind]
        if spec.namespaced:
            method = getattr(self.api, f"{verb}_namespaced_custom_object")
            where: tuple[str, ...] = (GROUP, VERSION, self.namespace, spec.plural)
        else:
            method = getattr(self.api, f"{verb}_cluster_custom_object")
            where = (GROUP, VERSION, spec.plural)
        return method(*where, *args, _request_timeout=REQUEST_TIMEOUT, **kwargs)

    def create(self, case: Case, body: dict[str, Any], role: str) -> bool:
        row = "Experiment (a run's)" if role == "companion" else case.kind
        kind = "Experiment" if role == "companion" else case.kind
        try:
            self.call("create", kind, body, field_validation="Strict", _preload_content=False)
        except ApiException as err:
            who, message = refusal_kind(err)
            if not who:
                self.tally.problem(case, f"create of the {role}: {message}")
            else:
                self.tally.count(row, who)
            return False
        self.tally.count(row, "created")
        return True

    def patch(self, case: Case) -> None:
        try:
            self.call(
                "patch",
                case.kind,
                case.name,
                case.patch,
                field_validation="Strict",
                _content_type="application/merge-patch+json",
                _preload_content=False,
            )
        except ApiException as err:
            who, message = refusal_kind(err)
            if not who:
                self.tally.problem(case, f"merge patch: {message}")
            else:
                self.tally.count("merge patches", who)
            return
        self.tally.count("merge patches", "applied")

    def delete(self, case: Case, kind: str, name: str) -> None:
        try:
            self.call("delete", kind, name, _preload_content=False)
        except ApiException as err:
            self.tally.problem(case, f"delete {kind} {name}: HTTP {err.status} {err.body!r:.300}")
            return
        self.tally.count("deletions", "accepted")

    # -- a case ------------------------------------------------------------------

    def run(self, case: Case) -> None:
        stored: list[tuple[str, str]] = []
        try:
            if case.companion is not None and self.create(case, case.companion, "companion"):
                stored.append(("Experiment", case.companion["metadata"]["name"]))
            if self.create(case, case.body, "object"):
                stored.append((case.kind, case.name))
                if case.hold:
                    time.sleep(case.hold)
                self.patch(case)
        except Exception as err:  # noqa: BLE001  (a client error is a finding, not a crash)
            self.tally.problem(case, f"{type(err).__name__}: {err}")
        finally:
            for kind, name in reversed(stored):
                self.delete(case, kind, name)

    # -- leftovers ---------------------------------------------------------------

    def leftovers(self) -> list[dict[str, Any]]:
        found = []
        for kind in ("Experiment", "ExperimentRun", "NodeAttack"):
            listing = self.api.list_namespaced_custom_object(
                GROUP, VERSION, self.namespace, KINDS[kind].plural
            )
            found += listing["items"]
        switches = self.api.list_cluster_custom_object(
            GROUP, VERSION, "chaosswitches", label_selector=crdfuzz.FUZZ_LABEL
        )
        return found + list(switches["items"])

    def wait_gone(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while (left := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return left

    def faults(self) -> dict[str, Any]:
        """What attacks change, for runs that really ran: cordoned nodes, the Deployment's
        replicas, NetworkPolicies and the attack marks on the namespace's pods."""
        core = client.CoreV1Api(self.api.api_client)
        nodes = core.list_node().items
        pods = core.list_namespaced_pod(self.namespace).items
        marks = sorted(
            key
            for pod in pods
            for key in [*(pod.metadata.labels or {}), *(pod.metadata.annotations or {})]
            if key.startswith("shakeout.dev/")
        )
        target = client.AppsV1Api(self.api.api_client).read_namespaced_deployment(
            crdfuzz.TARGET_APP, self.namespace
        )
        policies = client.NetworkingV1Api(self.api.api_client).list_namespaced_network_policy(
            self.namespace
        )
        return {
            "cordoned": sorted(n.metadata.name for n in nodes if n.spec.unschedulable),
            "replicas": target.spec.replicas,
            "networkpolicies": sorted(p.metadata.name for p in policies.items),
            "pod marks": marks,
        }

    def get_switch(self) -> dict[str, Any] | None:
        try:
            return dict(
                self.api.get_cluster_custom_object(GROUP, VERSION, "chaosswitches", "default")
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def switch_gone(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (left := self.get_switch()) is not None:
            if time.monotonic() > deadline:
                meta = left["metadata"]
                raise AssertionError(
                    f"ChaosSwitch default not gone after {timeout}s: finalizers "
                    f"{meta.get('finalizers')}, deletionTimestamp {meta.get('deletionTimestamp')}"
                )
            time.sleep(0.1)


def generate(count: int, each: Callable[[Case], None]) -> int:
    """Draw `count` cases with Hypothesis (derandomized) and hand each over at once."""
    drawn = 0
    short = {"Experiment": "exp", "ExperimentRun": "run", "ChaosSwitch": "csw", "NodeAttack": "na"}

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(crdfuzz.cases())
    def draw(case: Case) -> None:
        nonlocal drawn
        drawn += 1
        tag = f"{short[case.kind]}-{drawn}"
        meta = case.body.setdefault("metadata", {})
        meta["labels"][crdfuzz.FUZZ_LABEL] = tag
        if case.kind == "ChaosSwitch" and "default" in case.notes:
            meta["name"] = "default"
        elif case.kind != "ChaosSwitch" and not meta.get("name"):
            meta["name"] = f"fz-{tag}"
        if case.companion is not None:
            companion = f"fz-{tag}-exp"
            case.companion["metadata"].update(name=companion, labels={crdfuzz.FUZZ_LABEL: tag})
            if isinstance(case.body.get("spec"), dict):
                case.body["spec"]["experimentRef"] = {"name": companion}
        each(case)

    draw()
    return drawn


RECORD = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+\] ")
RAISED = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b")


def exceptions_in(log: str) -> dict[str, list[Any]]:
    """The operator's log records that tell of an exception, grouped: (the record's first
    line without its timestamp, the exception raised) -> [how often, the first record]."""
    records: list[list[str]] = []
    for line in log.splitlines():
        if RECORD.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    found: dict[str, list[Any]] = {}
    for record in records:
        text = "\n".join(record)
        if not any(marker in text for marker in EXCEPTION_MARKERS):
            continue
        raised = [line for line in record if RAISED.match(line)]
        head = RECORD.sub("", record[0])[:160]
        key = ANY_TYPE.sub("'…' object", f"{head} | {raised[-1][:160] if raised else ''}")
        # The first line, our frames (with their source line), what was raised.
        ours = [
            "\n".join(record[i : i + 2]) for i, line in enumerate(record) if OUR_FRAME.match(line)
        ]
        excerpt = "\n".join([record[0][:400], *ours, *(raised[-1:] or record[1:4])])
        entry = found.setdefault(key, [0, excerpt])
        entry[0] += 1
    return found


@pytest.fixture
def fuzz_namespace(ready: Cluster, namespace: str) -> str:
    """The test's namespace, with two Ready pods of a Deployment for runs to attack."""
    deployment(ready, crdfuzz.TARGET_APP, replicas=2, namespace=namespace)
    return namespace


def test_generated_objects_are_refused_or_handled(
    ready: Cluster,
    live_operator: Operator,
    fuzz_namespace: str,
    fuzz_examples: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    op = live_operator
    assert op.process is not None
    pid, log_from, runs_before = op.process.pid, len(op.output()), run_outcomes(op)
    fuzzer = Fuzzer(ready, fuzz_namespace)
    saved = fuzzer.get_switch()
    faults_before = fuzzer.faults()
    started = time.monotonic()

    # All but the real switch in parallel; the cases of the switch named default one by
    # one afterwards, as there is only one of it.
    drawn: list[Case] = []
    singletons: list[Case] = []
    futures: list[Future[None]] = []
    with ThreadPoolExecutor(WORKERS) as pool:

        def each(case: Case) -> None:
            drawn.append(case)
            if case.kind == "ChaosSwitch" and case.name == "default":
                singletons.append(case)
            else:
                futures.append(pool.submit(fuzzer.run, case))

        generate(fuzz_examples, each)
        for future in futures:
            future.result()
    try:
        for case in singletons:
            if fuzzer.get_switch() is not None:
                fuzzer.delete(case, "ChaosSwitch", "default")
                fuzzer.switch_gone()
            fuzzer.run(case)
            fuzzer.switch_gone()
    finally:
        restored = restore_switch(fuzzer, saved)
    requests_done = time.monotonic()
    left = fuzzer.wait_gone(GONE_TIMEOUT)
    gone_after = time.monotonic() - requests_done
    faults_after = fuzzer.faults()

    with capsys.disabled():
        print(summary(drawn, fuzzer.tally, requests_done - started, gone_after))
        print(f"   runs the operator ended: {run_outcomes(op) - runs_before}")

    failures = []
    if len(drawn) < fuzz_examples:
        failures.append(f"Hypothesis drew only {len(drawn)} of {fuzz_examples} cases")
    if not restored:
        failures.append(f"the ChaosSwitch default was not restored: saved {saved}")
    tally = fuzzer.tally
    if tally.problems:
        failures.append(
            f"{tally.counts['problems', 'all']} requests were neither refused with a message "
            f"nor handled ({len(tally.problems)} distinct):\n{tally.report()}"
        )
    if left:
        failures.append(
            f"{len(left)} objects still there {GONE_TIMEOUT:.0f} s after their deletion:\n"
            + "\n".join(describe(obj) for obj in left[:20])
        )
    if faults_after != faults_before:
        failures.append(f"faults left behind: before {faults_before}, after {faults_after}")
    if not op.running():
        failures.append(f"the operator exited:\n{op.output()[-3000:]}")
    elif op.process.pid != pid:
        failures.append("the operator was restarted during the test")
    found = exceptions_in(op.output()[log_from:])
    if found:
        failures.append(
            f"the operator logged {sum(n for n, _ in found.values())} exceptions "
            f"({len(found)} distinct) while handling generated objects:\n"
            + "\n----\n".join(f"{n}x: {excerpt}" for n, excerpt in found.values())
        )
    assert not failures, (
        "Bad input: every generated object must be refused with a message or handled, and "
        "be gone once deleted, with the operator raising nothing. Operator bugs found "
        f"(reproduce with SHAKEOUT_FUZZ_EXAMPLES={fuzz_examples}):\n\n" + "\n\n".join(failures)
    )


COLUMNS = ["created", "schema", "cel", "webhook", "policy", "other"]
ROWS = ["Experiment", "ExperimentRun", "NodeAttack", "ChaosSwitch", "Experiment (a run's)"]


def summary(cases: list[Case], tally: Tally, seconds: float, gone_after: float) -> str:
    """The figures for the docs: what was sent, and who refused what."""
    kinds = Counter(
        "broken" if c.mutation not in ("valid", "schema-valid") else c.mutation for c in cases
    )
    distinct = len({fingerprint(c) for c in cases})
    sent = len(cases) + sum(c.companion is not None for c in cases)
    lines = [
        f"\n== bad input: {len(cases)} cases ({distinct} distinct; {kinds['valid']} valid, "
        f"{kinds['schema-valid']} schema-valid, {kinds['broken']} broken), {sent} objects "
        f"sent, in {seconds:.0f} s",
        f"   {'':22}" + "".join(f"{c:>9}" for c in COLUMNS),
    ]
    for row in [*ROWS, "merge patches"]:
        cells = ["applied" if row == "merge patches" and c == "created" else c for c in COLUMNS]
        lines.append(f"   {row:22}" + "".join(f"{tally.counts[row, c]:9}" for c in cells))
    total = {c: sum(tally.counts[r, c] for r in ROWS) for c in COLUMNS}
    lines.append(f"   {'objects, all kinds':22}" + "".join(f"{total[c]:9}" for c in COLUMNS))
    lines.append(
        f"   deleted: {tally.counts['deletions', 'accepted']}, all gone {gone_after:.1f} s "
        f"after the last request; problems: {tally.counts['problems', 'all']}"
    )
    return "\n".join(lines)


def fingerprint(case: Case) -> str:
    """A case without the names and labels that every case gets."""
    body = {k: v for k, v in case.body.items() if k != "metadata"}
    name = case.body.get("metadata", {}).get("name", "")
    if "fz-" in name or name == "default":
        name = ""  # given, not generated
    if isinstance(body.get("spec"), dict) and case.companion is not None:
        body["spec"] = {k: v for k, v in body["spec"].items() if k != "experimentRef"}
    companion = case.companion["spec"] if case.companion else None
    return json.dumps([name, body, case.patch, companion, case.notes], sort_keys=True)


def run_outcomes(op: Operator) -> Counter[str]:
    """The operator's count of runs that ended, by phase and reason (its /metrics)."""
    found: Counter[str] = Counter()
    for key, value in op.metrics().items():
        if key.startswith("shakeout_runs_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', key))
            found[f"{labels.get('phase')}/{labels.get('reason')}"] += int(value)
    return found


def describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    phase = (obj.get("status") or {}).get("phase")
    return (
        f"{obj['kind']} {meta['name']}: deletionTimestamp {meta.get('deletionTimestamp')}, "
        f"finalizers {meta.get('finalizers')}, phase {phase}"
    )


STAMP = (CHANGED_BY, CHANGED_AT, CHANGED_GENERATION)


def restore_switch(fuzzer: Fuzzer, saved: dict[str, Any] | None) -> bool:
    """Put the ChaosSwitch default back as it was before the test; True if it is."""
    current = fuzzer.get_switch()
    if saved is None:
        if current is not None:
            fuzzer.api.delete_cluster_custom_object(GROUP, VERSION, "chaosswitches", "default")
            fuzzer.switch_gone()
        return True
    if current is not None and current.get("spec") == saved.get("spec"):
        return True
    if current is not None:
        fuzzer.api.delete_cluster_custom_object(GROUP, VERSION, "chaosswitches", "default")
        fuzzer.switch_gone()
    meta = saved["metadata"]
    body = {
        "apiVersion": saved["apiVersion"],
        "kind": saved["kind"],
        "metadata": {
            "name": "default",
            "labels": meta.get("labels") or {},
            # The change stamp is the webhook's to write (it stamps this create anew).
            "annotations": {
                k: v for k, v in (meta.get("annotations") or {}).items() if k not in STAMP
            },
        },
        "spec": saved["spec"],
    }
    fuzzer.api.create_cluster_custom_object(GROUP, VERSION, "chaosswitches", body)
    now = fuzzer.get_switch()
    return now is not None and now.get("spec") == saved.get("spec")
