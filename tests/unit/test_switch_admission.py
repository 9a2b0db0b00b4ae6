"""The switch's mutating webhook (who, when, which generation; a user-written stamp is
refused) and the deployed policy and role that keep the rails for admins."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from shakeout.admission.switch import STAMP, record_switch_change
from shakeout.api.labels import CHANGED_AT, CHANGED_BY, CHANGED_GENERATION

REPO = Path(__file__).resolve().parents[2]
CAROL = {"username": "carol", "groups": ["system:authenticated"]}


def obj(spec: dict[str, Any], generation: int = 4, **annotations: str) -> dict[str, Any]:
    meta = {"name": "default", "generation": generation, "annotations": annotations}
    return {"metadata": meta, "spec": spec}


def mutate(body: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    patch = kopf.Patch()
    asyncio.run(record_switch_change(body=kopf.Body(body), userinfo=CAROL, patch=patch, old=old))
    return dict(patch)


def test_every_spec_change_is_stamped_with_the_generation_it_makes() -> None:
    old = obj({"enabled": True, "caps": {"maxTargets": 2}})
    stamp = mutate(obj({"enabled": True, "caps": None}), old)["metadata"]["annotations"]
    assert stamp[CHANGED_BY] == "carol"
    assert stamp[CHANGED_GENERATION] == "5"
    assert stamp[CHANGED_AT].endswith("Z")
    created = mutate(obj({"enabled": True}, generation=0), None)["metadata"]["annotations"]
    assert created[CHANGED_GENERATION] == "1"
    # a switch restored from a backup: its old stamp is replaced, not refused
    restored = obj({"enabled": True}, **{CHANGED_BY: "bob", CHANGED_GENERATION: "9"})
    stamp = mutate(restored, None)["metadata"]["annotations"]
    assert (stamp[CHANGED_BY], stamp[CHANGED_GENERATION]) == ("carol", "1")


def test_no_spec_change_no_stamp() -> None:
    old = obj({"enabled": False})
    assert mutate(obj({"enabled": False}), old) == {}


@pytest.mark.parametrize("key", STAMP)
def test_a_user_written_stamp_is_refused(key: str) -> None:
    old = obj({"enabled": True}, **{CHANGED_BY: "admin", CHANGED_AT: "x", CHANGED_GENERATION: "4"})
    forged = obj({"enabled": False}, **{**old["metadata"]["annotations"], key: "mallory"})
    with pytest.raises(kopf.AdmissionError, match="only the operator's webhook writes them"):
        mutate(forged, old)
    # the same stamp sent back unchanged (a full update, kubectl edit) is not a forgery
    assert mutate(obj({"enabled": False}, **old["metadata"]["annotations"]), old)


def load(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / path).read_text()) if d]


def test_the_policy_covers_the_switch_and_the_stamp() -> None:
    policy, binding = load("deploy/rbac/switch-rails-policy.yaml")
    assert policy["kind"] == "ValidatingAdmissionPolicy"
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["chaosswitches"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    text = (REPO / "deploy/rbac/switch-rails-policy.yaml").read_text()
    for key in STAMP:
        assert key in text
    assert "check('set-rails')" in text
    assert "switch-rails-policy.yaml" in (REPO / "deploy/rbac/kustomization.yaml").read_text()


def test_the_rails_role_and_the_stoppers() -> None:
    roles = {d["metadata"]["name"]: d for d in load("deploy/rbac/user-roles.yaml")}
    (rule,) = roles["shakeout-rails-admin"]["rules"]
    assert rule["resources"] == ["chaosswitches"]
    assert "set-rails" in rule["verbs"]
    # everyone authenticated may patch the switch (spec.enabled, the policy keeps the rest),
    # but never create or delete it, nor hold the rails verb
    for name, role in roles.items():
        if name == "shakeout-rails-admin" or role["kind"] != "ClusterRole":
            continue
        for r in role["rules"]:
            if "chaosswitches" in r["resources"]:
                assert not {"create", "delete", "set-rails", "*"} & set(r["verbs"]), name
