"""An Experiment's preview: the engine's verdict is the run's own precondition chain
(engine/preview.py), and the loop that keeps status.preview current against the in-memory
API server (execution/previews.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shakeout.api.experiment import ExperimentPreview
from shakeout.api.labels import PREVIEW_REQUESTED
from shakeout.api.switch import ChaosSwitchSpec
from shakeout.engine.preconditions import (
    ADMISSION,
    PREVIEW,
    creator_still_member,
    evaluate,
    no_other_run_holds_lock,
)
from shakeout.engine.preview import (
    COST_SPACING,
    MAX_SPACING,
    MIN_SECONDS_BETWEEN,
    NOT_CONNECTED,
    Candidate,
    Stamp,
    preview,
    refresh_due,
    valid_request,
)
from shakeout.engine.targets import Selection
from shakeout.execution import previews
from shakeout.gather import agents as gather_agents
from shakeout.gather import targets as gather_targets
from shakeout.gather.targets import RecentResolutions
from shakeout.kube import client as kube_client
from shakeout.kube.resources import EXPERIMENTS, SWITCHES
from tests.unit.fake_kube import FakeApi
from tests.unit.test_preconditions import (
    CASES,
    CORDON_SPEC,
    OK,
    POD_SPEC,
    Case,
    allowing,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CANDIDATES = [Candidate("web-1", "n1"), Candidate("web-2", "n2"), Candidate("web-3", "n2")]


def look(facts: Any, missing: tuple[str, ...] = ()) -> ExperimentPreview:
    return preview(facts, CANDIDATES, missing, now=T0, generation=3, request="r1")


# -- the verdict is the run's own -------------------------------------------------------------


def test_the_preview_chain_is_admission_but_the_lock() -> None:
    assert [c for c in ADMISSION if c is not no_other_run_holds_lock] == list(PREVIEW)
    assert creator_still_member not in PREVIEW


def test_a_preview_of_facts_that_hold_allows_a_run() -> None:
    seen = look(OK)
    assert (seen.allowed, seen.reason) == (True, None)
    assert seen.message.startswith("a run created now would be admitted: 2 of 3 matching pods")
    assert "picked at random" in seen.message
    assert (seen.matched, seen.selected) == (3, 2)
    assert (seen.time, seen.observed_generation, seen.request) == (T0, 3, "r1")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_the_preview_says_what_admission_says(case: Case) -> None:
    """Every refusal of the precondition chain: the preview refuses with the very reason
    and message that admission would, except for the checks it leaves out (the lock, and
    the creator, whom a preview does not have)."""
    seen = look(case.facts)
    refusal = evaluate(ADMISSION, case.facts)
    if case.check in PREVIEW:
        assert refusal is not None
        assert (seen.allowed, seen.reason, seen.message) == (False, refusal.reason, refusal.message)
    else:
        assert seen.allowed, seen.message
        assert seen.reason is None


def test_a_refusal_keeps_the_counts_and_lists() -> None:
    facts = replace(OK, switch=ChaosSwitchSpec(enabled=False))
    seen = look(facts)
    assert (seen.allowed, seen.reason) == (False, "ExperimentingDisabled")
    assert [p.name for p in seen.pods] == ["web-1", "web-2", "web-3"]
    assert seen.nodes == ["n1", "n2"]


def test_agents_of_node_level_attacks_are_listed_with_their_problems() -> None:
    facts = replace(OK, agent_capabilities={"n1": {"CpuStress": "cgroup v1"}})
    seen = look(facts, missing=("n2",))
    assert [(a.node, a.connected) for a in seen.agents] == [("n1", True), ("n2", False)]
    assert seen.agents[0].problem == "the agent of node n1 cannot do CpuStress: cgroup v1"
    assert seen.agents[1].problem == NOT_CONNECTED
    assert seen.reason == "AttackUnsupported"
    # Without node-level attacks no agent is involved.
    assert look(replace(OK, experiment=POD_SPEC)).agents == []


def test_the_nodes_a_cordon_would_take_are_listed() -> None:
    facts = replace(
        OK,
        experiment=CORDON_SPEC,
        switch=allowing("team-a", max_nodes=2),
        scheduled_target_nodes=("n1", "n2"),
    )
    seen = look(facts)
    assert seen.allowed, seen.message
    assert seen.cordon_nodes == ["n1", "n2"]


def test_irreversible_attacks_are_named() -> None:
    assert look(replace(OK, experiment=POD_SPEC)).irreversible_attacks == ["kill (PodDelete)"]


def test_lists_are_bounded_and_counted() -> None:
    many = [Candidate(f"p{i:03}", f"n{i:03}") for i in range(120)]
    facts = replace(
        OK,
        experiment=POD_SPEC,
        selection=Selection(matched=120, targets=tuple(c.name for c in many)),
    )
    seen = preview(facts, many, (), now=T0, generation=1, request=None)
    assert len(seen.pods) == len(seen.nodes) == 50
    assert (seen.matched, seen.node_count) == (120, 120)
    assert seen.pods[0].name == "p000"
    ExperimentPreview.model_validate(seen.to_k8s())  # within the schema's bounds


# -- when a preview is computed ----------------------------------------------------------------


def stored() -> Stamp:
    return Stamp.of(look(OK))


@pytest.mark.parametrize(
    ("last", "generation", "asked", "after", "attempt", "due"),
    [
        (None, 1, None, 0, None, True),
        ("same", 3, "r1", 10, None, False),
        ("same", 4, "r1", 1, None, True),  # the spec changed
        ("same", 3, "r2", 1, None, True),  # a new request
        ("same", 3, None, 1, None, False),  # the annotation was removed: nothing new
        ("same", 3, "r1", 60, None, True),  # the interval is over
        ("same", 3, "r1", 60, 30, False),  # ... but an attempt was made 30 s ago
        ("same", 4, "r1", 60, 59.5, False),  # never twice within MIN_SECONDS_BETWEEN
    ],
)
def test_refresh_due(
    *,
    last: str | None,
    generation: int,
    asked: str | None,
    after: float,
    attempt: float | None,
    due: bool,
) -> None:
    now = T0 + timedelta(seconds=after)
    assert (
        refresh_due(
            stored() if last else None,
            generation=generation,
            request=asked,
            now=now,
            interval=60,
            last_attempt=T0 + timedelta(seconds=attempt) if attempt is not None else None,
        )
        is due
    )
    assert MIN_SECONDS_BETWEEN > 0.5


@pytest.mark.parametrize(
    ("cost", "after", "due"),
    [
        (0.01, MIN_SECONDS_BETWEEN + 0.1, True),  # a cheap preview: MIN_SECONDS_BETWEEN
        (0.3, MIN_SECONDS_BETWEEN + 0.1, False),  # 300 ms: not within 20 x 0.3 = 6 s
        (0.3, 0.3 * COST_SPACING + 0.1, True),
        (600.0, MAX_SPACING - 1, False),  # however slow, answered within MAX_SPACING
        (600.0, MAX_SPACING + 0.1, True),
    ],
)
def test_a_costly_preview_is_spaced_by_what_it_took(cost: float, after: float, due: bool) -> None:
    # A change of the spec is due at once, unless the last attempt was too recent.
    assert (
        refresh_due(
            stored(),
            generation=4,
            request="r1",
            now=T0 + timedelta(seconds=after),
            interval=60,
            last_attempt=T0,
            cost=cost,
        )
        is due
    )


def test_an_interval_of_zero_refreshes_on_changes_only() -> None:
    later = T0 + timedelta(days=1)
    kw: dict[str, Any] = {"now": later, "interval": 0, "last_attempt": None}
    assert not refresh_due(stored(), generation=3, request="r1", **kw)
    assert refresh_due(stored(), generation=4, request="r1", **kw)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("1767225600-ab12cd34", "1767225600-ab12cd34"),
        ("x" * 64, "x" * 64),
        ("x" * 65, None),
        ("", None),
        ("a b", None),
        ("\x1b[31mred", None),
        (42, None),
        (None, None),
    ],
)
def test_only_a_well_formed_request_is_echoed(value: object, kept: str | None) -> None:
    assert valid_request(value) == kept


# -- the loop against the in-memory API server --------------------------------------------------


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    monkeypatch.setattr(gather_targets, "RECENT", RecentResolutions())
    monkeypatch.setattr(gather_agents, "AGENTS", {})
    monkeypatch.setattr(previews, "TRACKED", {})
    api.add_namespace("team-a")
    api.add_switch()
    for i, node in enumerate(["node-1", "node-1", "node-2"]):
        api.add_pod("team-a", f"web-{i}", {"app": "web"}, node=node)
    api.add_pod("team-a", "web-pending", {"app": "web"}, phase="Pending")
    api.add_experiment(
        "team-a",
        "exp",
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}, "limit": {"count": 1}},
            "attacks": [{"name": "kill", "type": "PodDelete", "durationSeconds": 1}],
        },
    )
    return api


def experiment(world: FakeApi) -> dict[str, Any]:
    obj = world.peek(EXPERIMENTS, "team-a", "exp")
    assert obj is not None
    return obj


def preview_writes(world: FakeApi) -> int:
    return len(world.find("PATCH", r"/experiments/exp/status$"))


async def test_the_loop_writes_a_preview_and_writes_nothing_else(world: FakeApi) -> None:
    previews.observe("ADDED", experiment(world))

    await previews.tick(T0, 60)

    written = experiment(world)["status"]["preview"]
    assert written["allowed"] is True
    assert (written["matched"], written["selected"]) == (3, 1)
    assert [p["name"] for p in written["pods"]] == ["web-0", "web-1", "web-2"]
    assert (written["nodes"], written["nodeCount"]) == (["node-1", "node-2"], 2)
    assert written["irreversibleAttacks"] == ["kill (PodDelete)"]
    # Reads and the one status write, nothing else.
    writes = [c for c in world.calls if c.method != "GET"]
    assert [(c.method, c.path.rsplit("/", 2)[-2:]) for c in writes] == [
        ("PATCH", ["exp", "status"])
    ]


def pod_lists(world: FakeApi) -> list[str]:
    """How each list of pods was asked for: a Table of names and nodes, or whole pods."""
    return ["table" if "as=Table" in c.accept else "whole" for c in world.find("GET", r"/pods$")]


async def test_the_preview_lists_names_and_nodes_not_whole_pods(world: FakeApi) -> None:
    # Recomputed after every Stop All: whole pods of a 10,000-pod blast radius took
    # seconds of the event loop, the webhooks and every run's first fault behind them.
    previews.observe("ADDED", experiment(world))

    await previews.tick(T0, 60)

    assert pod_lists(world) == ["table"]
    written = experiment(world)["status"]["preview"]
    assert (written["nodes"], written["nodeCount"]) == (["node-1", "node-2"], 2)


@pytest.mark.parametrize("own_blast_radius", [False, True])
async def test_a_cordon_preview_lists_whole_pods_to_know_the_scheduled_nodes(
    world: FakeApi, own_blast_radius: bool
) -> None:
    cordon: dict[str, Any] = {"name": "cordon", "type": "NodeCordon", "durationSeconds": 1}
    kill: dict[str, Any] = {"name": "kill", "type": "PodDelete", "durationSeconds": 1}
    if own_blast_radius:
        kill["blastRadius"] = {"selector": {"matchLabels": {"app": "web"}}}
    world.add_experiment(
        "team-a",
        "exp",
        {
            "blastRadius": {"selector": {"matchLabels": {"app": "web"}}, "limit": {"count": 1}},
            "attacks": [cordon, kill],
        },
    )
    previews.observe("ADDED", experiment(world))

    await previews.tick(T0, 60)

    assert set(pod_lists(world)) == {"whole"}
    assert experiment(world)["status"]["preview"]["cordonNodes"]


async def test_the_loop_answers_requests_and_spec_changes_and_waits_otherwise(
    world: FakeApi,
) -> None:
    previews.observe("ADDED", experiment(world))
    await previews.tick(T0, 60)
    previews.observe("MODIFIED", experiment(world))  # our own write comes back
    await previews.tick(T0 + timedelta(seconds=5), 60)
    assert preview_writes(world) == 1

    world.edit(
        EXPERIMENTS, "team-a", "exp", {"metadata": {"annotations": {PREVIEW_REQUESTED: "r-1"}}}
    )
    previews.observe("MODIFIED", experiment(world))
    await previews.tick(T0 + timedelta(seconds=6), 60)
    assert preview_writes(world) == 2
    assert experiment(world)["status"]["preview"]["request"] == "r-1"

    # A blast radius that matches nothing: refused, with the run's own reason.
    world.edit(
        EXPERIMENTS,
        "team-a",
        "exp",
        {"spec": {"blastRadius": {"selector": {"matchLabels": {"app": "none"}}}}},
    )
    previews.observe("MODIFIED", experiment(world))
    await previews.tick(T0 + timedelta(seconds=9), 60)
    written = experiment(world)["status"]["preview"]
    assert (written["allowed"], written["reason"], written["matched"]) == (False, "NoTargets", 0)
    assert written["observedGeneration"] == experiment(world)["metadata"]["generation"]


async def test_a_change_of_the_switch_makes_every_preview_due(
    world: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(previews, "SWITCH_SEEN", previews.SwitchSeen())
    switch = {"metadata": {"name": "default", "generation": 1}}
    previews.switch_seen("None", switch)  # the first event after a start: nothing changed
    previews.observe("ADDED", experiment(world))
    await previews.tick(T0, 60)
    previews.observe("MODIFIED", experiment(world))
    previews.switch_seen("MODIFIED", switch)  # a status change: same generation
    await previews.tick(T0 + timedelta(seconds=5), 60)
    assert preview_writes(world) == 1

    world.edit(SWITCHES, None, "default", {"spec": {"enabled": False}})  # Stop All
    previews.switch_seen("MODIFIED", {"metadata": {"name": "default", "generation": 2}})
    await previews.tick(T0 + timedelta(seconds=6), 60)
    assert preview_writes(world) == 2
    written = experiment(world)["status"]["preview"]
    assert (written["allowed"], written["reason"]) == (False, "ExperimentingDisabled")
    # Once answered, the change is spent.
    previews.observe("MODIFIED", experiment(world))
    await previews.tick(T0 + timedelta(seconds=9), 60)
    assert preview_writes(world) == 2


async def test_the_loop_spaces_an_experiment_by_what_its_preview_took(world: FakeApi) -> None:
    world.delay("GET", r"/pods$", 0.2)  # a blast radius of thousands of pods
    previews.observe("ADDED", experiment(world))
    await previews.tick(T0, 60)
    tracked = previews.TRACKED[("team-a", "exp")]
    assert tracked.cost >= 0.2

    changed = experiment(world)
    changed["metadata"]["generation"] = 7  # the spec changed: due, but for the spacing
    previews.observe("MODIFIED", changed)
    await previews.tick(T0 + timedelta(seconds=MIN_SECONDS_BETWEEN + 0.1), 60)
    assert preview_writes(world) == 1  # a cheap preview would be written again by now
    await previews.tick(T0 + timedelta(seconds=COST_SPACING * tracked.cost + 0.1), 60)
    assert preview_writes(world) == 2


async def test_a_deleted_experiment_is_forgotten(world: FakeApi) -> None:
    previews.observe("ADDED", experiment(world))
    previews.observe("DELETED", experiment(world))
    await previews.tick(T0, 60)
    assert preview_writes(world) == 0


# -- what kubectl shakeout preview prints ------------------------------------------------------


def test_the_plugin_renders_the_preview_the_lock_and_where_the_rest_is() -> None:
    from shakeout.cli.preview import render

    many = [Candidate(f"p{i:03}", "n1") for i in range(60)]
    facts = replace(
        OK,
        experiment=POD_SPEC,
        selection=Selection(matched=60, targets=("p000",)),
        switch=ChaosSwitchSpec(enabled=False),
    )
    seen = preview(facts, many, (), now=T0, generation=2, request=None)
    obj = {
        "metadata": {"name": "exp", "namespace": "team-a"},
        "spec": {"blastRadius": {"selector": {"matchLabels": {"app": "web"}}}},
        "status": {"preview": seen.to_k8s()},
    }
    text = render(obj, {"namespace": "team-b", "name": "r\x1b[31m1"}, note="a note")
    assert "Verdict:       REFUSED (ExperimentingDisabled): experimenting is disabled" in text
    assert "Lock:          held by team-b/r1: a run created now is refused" in text
    assert "Targets:       1 of 60 pods" in text
    assert (
        "and 10 more: kubectl get pods -n team-a -l 'app=web' "
        "--field-selector status.phase=Running,spec.nodeName!= -o wide"
    ) in text
    assert "Irreversible:  kill (PodDelete) (cannot be rolled back)" in text
    assert text.endswith("Nothing was created: a preview runs nothing.")
    assert "\x1b" not in text
    assert "no preview yet" in render({**obj, "status": {}}, None)
