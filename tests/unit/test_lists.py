"""Lists that can be large (SEC-17): read in pages, and the clean-up sweep reads only the
runs its marks name."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from shakeout.api.labels import FINISHED_LABEL, ISOLATED
from shakeout.execution import cleanup
from shakeout.kube import client as kube_client
from shakeout.kube.client import JSON, PAGE_SIZE, Api
from shakeout.kube.resources import PODS, RUNS
from tests.unit.fake_kube import FakeApi

Obj = dict[str, Any]


class PagedApi(Api):
    """An Api whose list answers come from a list of pages, each request recorded."""

    def __init__(self, pages: list[Obj]) -> None:  # no kubeconfig, no client
        self.request_timeout = 30.0
        self.pages = pages
        self.queries: list[dict[str, str]] = []

    async def request(  # type: ignore[override]
        self,
        method: str,
        path: str,
        body: Obj | None = None,
        *,
        query: dict[str, str] | None = None,
        accept: str = JSON,
        **_: Any,
    ) -> Obj:
        assert method == "GET"
        self.queries.append(dict(query or {}))
        return self.pages[len(self.queries) - 1]


def page(names: list[str], token: str | None) -> Obj:
    meta = {"continue": token} if token else {}
    return {"metadata": meta, "items": [{"metadata": {"name": n}} for n in names]}


async def test_a_list_is_read_across_three_pages() -> None:
    api = PagedApi([page(["a", "b"], "t1"), page(["c"], "t2"), page(["d"], None)])

    items = await api.list_objects(RUNS, labels="x=y")

    assert [i["metadata"]["name"] for i in items] == ["a", "b", "c", "d"]
    limit = str(PAGE_SIZE)
    assert api.queries == [
        {"labelSelector": "x=y", "limit": limit},
        {"labelSelector": "x=y", "limit": limit, "continue": "t1"},
        {"labelSelector": "x=y", "limit": limit, "continue": "t2"},
    ]
    assert PAGE_SIZE <= 500


async def test_a_pod_table_is_read_across_pages_its_columns_from_the_first() -> None:
    columns = [{"name": "Name"}, {"name": "Status"}]
    first = {"metadata": {"continue": "t1"}, "columnDefinitions": columns}
    first["rows"] = [{"cells": ["web-1", "Running"]}]
    second = {"metadata": {"continue": "t2"}, "rows": [{"cells": ["web-2", "Terminating"]}]}
    third = {"metadata": {}, "columnDefinitions": columns, "rows": [{"cells": ["web-3", "x"]}]}
    api = PagedApi([first, second, third])

    pods = await api.list_pod_names("ns", "app=web", cached=False)

    assert [(p.name, p.deleting) for p in pods] == [
        ("web-1", False),
        ("web-2", True),
        ("web-3", False),
    ]
    assert [q.get("continue") for q in api.queries] == [None, "t1", "t2"]
    assert all(q["includeObject"] == "None" for q in api.queries)


async def test_a_cached_list_is_asked_for_once_as_the_watch_cache_serves_it() -> None:
    api = PagedApi([page(["a"], None)])

    await api.list_objects(PODS, "ns", labels="app=web", cached=True)

    assert api.queries == [{"labelSelector": "app=web", "resourceVersion": "0"}]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeApi:
    api = FakeApi()
    monkeypatch.setattr(kube_client, "_api", None)
    kube_client.use(api)
    for namespace in ("team-a", "team-b", "team-c"):
        api.add_namespace(namespace)
    return api


async def test_the_sweep_reads_only_the_unfinished_runs_of_the_marked_namespaces(
    fake: FakeApi,
) -> None:
    live = fake.add_run("team-a", "live", "exp", status={"phase": "ATTACKS_STARTED"})
    over = fake.add_run("team-a", "over", "exp", status={"phase": "COMPLETED"})
    fake.add_run("team-c", "elsewhere", "exp", status={"phase": "COMPLETED"})
    live_uid, over_uid = live["metadata"]["uid"], over["metadata"]["uid"]
    fake.add_pod("team-a", "web-1", {"app": "web", ISOLATED: live_uid})
    fake.add_pod("team-a", "web-2", {"app": "web", ISOLATED: over_uid})
    fake.add_pod("team-b", "bait", {ISOLATED: "made-up"})  # any team may label its pods

    assert await cleanup.sweep() == 2

    labels = {
        name: fake.peek(PODS, ns, name)["metadata"]["labels"]  # type: ignore[index]
        for ns, name in (("team-a", "web-1"), ("team-a", "web-2"), ("team-b", "bait"))
    }
    assert labels["web-1"][ISOLATED] == live_uid  # its run is live: kept
    assert ISOLATED not in labels["web-2"]
    assert ISOLATED not in labels["bait"]
    run_lists = fake.find("GET", r"/experimentruns$")
    assert sorted(c.path.split("/")[-2] for c in run_lists) == ["team-a", "team-b"]
    assert all(c.query.get("labelSelector") == f"!{FINISHED_LABEL}" for c in run_lists)


async def test_the_sweep_leaves_the_marks_of_a_run_whose_clean_up_goes_on(
    fake: FakeApi,
) -> None:
    over = fake.add_run("team-a", "over", "exp", status={"phase": "CANCELED"})
    over_uid = over["metadata"]["uid"]
    fake.add_pod("team-a", "web-1", {"app": "web", ISOLATED: over_uid})
    release = asyncio.Event()

    async def unmarking() -> None:  # the run's own clean-up, still at work
        await release.wait()

    clean_up = asyncio.create_task(
        cleanup.outliving_the_caller(unmarking(), "clean-up of run over", ("team-a", over_uid))
    )
    await asyncio.sleep(0)

    assert await cleanup.sweep() == 0
    assert fake.find("PATCH", r"/pods/") == []  # no second unmarking beside its own
    release.set()
    await clean_up
    assert await cleanup.sweep() == 1  # once it is over, what it left is the sweep's
    assert ISOLATED not in fake.peek(PODS, "team-a", "web-1")["metadata"]["labels"]  # type: ignore[index]


async def test_one_sweep_looks_at_a_bounded_number_of_marks(
    fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cleanup, "MAX_MARKS_PER_SWEEP", 3)
    for n in range(8):
        fake.add_pod("team-b", f"bait-{n}", {ISOLATED: f"made-up-{n}"})

    assert await cleanup.sweep() == 3
    assert await cleanup.sweep() == 3
    assert await cleanup.sweep() == 2
    assert await cleanup.sweep() == 0
