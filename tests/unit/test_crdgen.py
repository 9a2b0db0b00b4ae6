"""The generated CRDs are structural, documented and match crds/ on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shakeout import crds
from shakeout.api.crdgen import CRDS, SchemaError, _check_descriptions, all_crds

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN_KEYS = {"$ref", "$defs", "anyOf", "allOf", "oneOf", "title", "const"}


def walk(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        out.append((path, schema))
        for name, sub in schema.get("properties", {}).items():
            out += walk(sub, f"{path}.{name}")
        if isinstance(schema.get("items"), dict):
            out += walk(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            out += walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.fixture(params=[c.kind for c in CRDS])
def schema(request: pytest.FixtureRequest) -> dict[str, Any]:
    crd = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == request.param)
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_structural_every_node_typed_and_no_forbidden_keys(schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        assert not FORBIDDEN_KEYS & node.keys(), f"{path} has {FORBIDDEN_KEYS & node.keys()}"
        assert node.get("additionalProperties") is not False, path
        assert "type" in node, f"{path} has no type"
        assert node.get("default", 0) is not None, f"{path} has default null"


def test_every_field_has_a_description(schema: dict[str, Any]) -> None:
    for path, node in walk(schema):
        scalar_item = path.endswith(("[]", "{}")) and node.get("type") != "object"
        if (
            path and path != ".metadata" and not scalar_item
        ):  # the root is described by the kind's docstring
            assert node.get("description"), f"{path} has no description"


def test_description_check_refuses_an_undocumented_field() -> None:
    with pytest.raises(SchemaError, match=r"X\.spec\.bare has no description"):
        _check_descriptions(
            {"properties": {"spec": {"description": "d", "properties": {"bare": {}}}}}, "X"
        )


def test_names_short_names_category_and_status_subresource() -> None:
    by_kind = {c["spec"]["names"]["kind"]: c for c in all_crds().values()}
    assert set(by_kind) == {"Experiment", "ExperimentRun", "ChaosSwitch", "NodeAttack"}
    assert by_kind["NodeAttack"]["spec"]["scope"] == "Namespaced"
    assert by_kind["ChaosSwitch"]["spec"]["scope"] == "Cluster"
    for crd in by_kind.values():
        assert crd["spec"]["names"]["categories"] == ["chaos"]
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    short = [s for c in by_kind.values() for s in c["spec"]["names"]["shortNames"]]
    # cs is componentstatuses, ex/exp must not clash among ours
    assert "cs" not in short
    assert len(short) == len(set(short))


def test_printer_columns() -> None:
    cols = {
        c["spec"]["names"]["kind"]: [
            col["name"] for col in c["spec"]["versions"][0]["additionalPrinterColumns"]
        ]
        for c in all_crds().values()
    }
    assert cols["ExperimentRun"][:4] == ["Experiment", "Phase", "Targets", "Action Required"]
    assert cols["Experiment"] == ["Attacks", "Schedule", "Last Run", "Matched", "Allowed", "Age"]
    assert cols["ChaosSwitch"][:2] == ["Enabled", "Active Run"]


def test_the_attacks_column_shows_every_type() -> None:
    # A JSONPath over the attacks would show the first one only: the column reads the
    # status field that lists them all.
    experiment = next(c for c in all_crds().values() if c["spec"]["names"]["kind"] == "Experiment")
    version = experiment["spec"]["versions"][0]
    column = next(c for c in version["additionalPrinterColumns"] if c["name"] == "Attacks")
    assert column["jsonPath"] == ".status.attackTypes"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["attackTypes"]["type"] == "string"


def test_cel_rules_examples_are_present() -> None:
    text = "".join(crds.render().values())
    assert "self.metadata.name == 'default'" in text
    assert "experimentRef is immutable" in text
    assert "maximum: 100" in text


def test_crds_on_disk_match_the_models() -> None:
    assert crds.drift(REPO / "crds") == [], "run `make crds` and commit"


def test_drift_detects_a_hand_edit(tmp_path: Path) -> None:
    crds.write(tmp_path)
    target = next(tmp_path.glob("*.yaml"))
    target.write_text(target.read_text().replace("minimum: 1", "minimum: 2", 1))
    assert crds.drift(tmp_path) == [target.name]
