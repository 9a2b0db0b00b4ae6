"""Who may skip the Run button's checks, and whose identity is trusted (SEC-20, SEC-21):
only the operator's own scheduled runs skip the preconditions at admission, decided by the
requesting user, not by a label; a creator not recorded by the mutating webhook is
refused at admission and at pick-up."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from shakeout.admission import runs as admission
from shakeout.api.labels import SCHEDULED_TRIGGER, STARTED_BY, TRIGGER_LABEL
from shakeout.api.run import UserInfo
from shakeout.execution.executor import RunExecutor
from shakeout.execution.live_runs import StopSignal
from shakeout.gather import agents as gather_agents
from shakeout.gather import facts
from shakeout.gather import switch as gather_switch
from shakeout.gather import targets as gather_targets
from shakeout.gather.switch import SwitchView
from shakeout.gather.targets import RecentResolutions
from shakeout.kube import client as kube_client
from shakeout.kube.resources import SELF_SUBJECT_REVIEWS, SWITCHES
from tests.unit.fake_kube import FakeApi, FakeHost

Obj = dict[str, Any]
NS = "team-a"
OPERATOR = UserInfo(username="system:serviceaccount:shakeout-system:shakeout-operator")
ALICE = {"username": "alice", "groups": ["team-a", "system:authenticated"]}
SPEC: Obj = {
    "blastRadius": {"selector": {"matchLabels": {"app": "web"}}},
    "attacks": [{"name": "kill", "type": "PodDelete", "durationSeconds": 1}],
}


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    """team-a with its Experiment and pods; the switch disabled, so that any run that is
    checked is refused; the operator's identity known and identities recorded."""
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    monkeypatch.setattr(gather_targets, "RECENT", RecentResolutions())
    monkeypatch.setattr(gather_switch, "SWITCH", SwitchView())
    monkeypatch.setattr(gather_agents, "AGENTS", {})
    identities = facts.Identities(operator=OPERATOR, recorded=True)
    monkeypatch.setattr(facts, "IDENTITIES", identities)
    api.add_namespace(NS)
    api.add_switch(enabled=False)
    api.add_experiment(NS, "exp", SPEC)
    api.add_pod(NS, "web-1", {"app": "web"})
    api.members.add(("alice", NS))
    return api


def lock_free(fake: FakeApi) -> bool:
    switch = fake.switch()
    return switch is not None and not (switch.get("status") or {}).get("activeRun")


def run_body(labels: dict[str, str] | None = None, started_by: Obj | str | None = None) -> Obj:
    annotations = {}
    if started_by is not None:
        value = started_by if isinstance(started_by, str) else json.dumps(started_by)
        annotations[STARTED_BY] = value
    return {
        "metadata": {
            "name": "run-1",
            "namespace": NS,
            "uid": "uid-run-1",
            "labels": labels or {},
            "annotations": annotations,
        },
        "spec": {"experimentRef": {"name": "exp"}},
    }


async def validate(body: Obj, userinfo: Obj) -> list[str]:
    warnings: list[str] = []
    await admission.validate_run(body=kopf.Body(body), userinfo=userinfo, warnings=warnings)
    return warnings


SCHEDULED = {TRIGGER_LABEL: SCHEDULED_TRIGGER}


async def test_a_users_run_labelled_scheduled_is_checked_like_any_run(fake: FakeApi) -> None:
    with pytest.raises(kopf.AdmissionError, match="disabled"):
        await validate(run_body(SCHEDULED, started_by=ALICE), ALICE)


async def test_the_operators_own_scheduled_run_skips_the_check(fake: FakeApi) -> None:
    me = {"username": OPERATOR.username, "groups": []}
    await validate(run_body(SCHEDULED, started_by=me), me)
    assert fake.calls == []  # nothing read: it is recorded FAILED at pick-up instead
    # Unlabelled, the operator's run is checked as any other.
    with pytest.raises(kopf.AdmissionError, match="disabled"):
        await validate(run_body(started_by=me), me)


async def test_with_the_operator_unknown_nothing_skips_the_check(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(facts.IDENTITIES, "operator", None)
    nobody = {"username": "", "groups": []}
    with pytest.raises(kopf.AdmissionError):
        await validate(run_body(SCHEDULED, started_by=nobody), nobody)


@pytest.mark.parametrize("started_by", [None, "{not json", '{"groups": []}'])
async def test_a_creator_not_recorded_is_refused_at_admission(
    fake: FakeApi, started_by: str | None
) -> None:
    with pytest.raises(kopf.AdmissionError, match="who started the run is not recorded"):
        await validate(run_body(started_by=started_by), ALICE)


async def test_a_hand_written_creator_is_refused_at_admission(fake: FakeApi) -> None:
    bob = {"username": "bob", "groups": ["team-a"]}
    with pytest.raises(kopf.AdmissionError, match="names bob, but alice creates the run"):
        await validate(run_body(started_by=bob), ALICE)


def pick_up(fake: FakeApi, annotations: dict[str, str]) -> tuple[RunExecutor, FakeHost]:
    fake.add_run(NS, "run-1", "exp", annotations=annotations)
    host = FakeHost(fake, NS, "run-1")
    return RunExecutor(host, StopSignal(), frozenset()), host


@pytest.mark.parametrize("annotations", [{}, {STARTED_BY: "garbage"}])
async def test_a_stored_run_whose_creator_is_not_recorded_is_refused_unauthorized(
    fake: FakeApi, annotations: dict[str, str]
) -> None:
    # Everything else holds: the identity is the one precondition that fails.
    fake.edit(SWITCHES, None, "default", {"spec": {"enabled": True}})
    executor, host = pick_up(fake, annotations)

    assert await executor.pick_up() is False

    status = fake.run(NS, "run-1")["status"]
    assert status["phase"] == "FAILED"
    assert status["reason"] == "Unauthorized"
    assert "who started the run is not recorded" in status["message"]
    assert [e.reason for e in host.events] == ["Unauthorized"]
    assert not fake.find("POST", r"subjectaccessreviews")
    assert lock_free(fake)  # refused before the lock


async def test_without_webhooks_rbac_alone_decided(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-webhook: no identity is ever recorded; the run is checked without one."""
    monkeypatch.setattr(facts.IDENTITIES, "recorded", False)
    executor, _ = pick_up(fake, {})

    assert await executor.pick_up() is False

    status = fake.run(NS, "run-1")["status"]
    assert status["reason"] != "Unauthorized"  # refused for the switch, not the identity


async def test_the_operators_identity_in_a_cluster_and_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(facts.OPERATOR_USERNAME_ENV, raising=False)
    monkeypatch.delenv(facts.SERVICE_ACCOUNT_ENV, raising=False)
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    assert facts.configured_operator() is None
    monkeypatch.setenv("POD_NAMESPACE", "shakeout-system")
    me = facts.configured_operator()
    assert me is not None
    assert me.username == "system:serviceaccount:shakeout-system:shakeout-operator"
    monkeypatch.setenv(facts.SERVICE_ACCOUNT_ENV, "chaos")
    assert await facts.operator_identity() == UserInfo(
        username="system:serviceaccount:shakeout-system:chaos",
        groups=[
            "system:serviceaccounts",
            "system:serviceaccounts:shakeout-system",
            "system:authenticated",
        ],
    )
    monkeypatch.setenv(facts.OPERATOR_USERNAME_ENV, "shakeout")
    assert (await facts.operator_identity()).username == "shakeout"  # type: ignore[union-attr]


async def test_out_of_a_cluster_the_api_server_says_who_the_operator_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (facts.OPERATOR_USERNAME_ENV, facts.SERVICE_ACCOUNT_ENV, "POD_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    answer = {"status": {"userInfo": {"username": "admin", "groups": ["system:masters"]}}}
    monkeypatch.setattr(api, "serve", lambda call: answer)

    me = await facts.operator_identity()

    assert me == UserInfo(username="admin", groups=["system:masters"])
    assert [c.path for c in api.calls] == [SELF_SUBJECT_REVIEWS.path()]
