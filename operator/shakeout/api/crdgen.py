"""Turns the pydantic models into CustomResourceDefinitions with structural schemas.

pydantic emits JSON Schema 2020-12; a CRD wants a structural OpenAPI v3 subset: no
`$ref`, no `anyOf` around types, no `title`, no `additionalProperties: false`, no
`default: null`. This module rewrites one into the other, and refuses (raises) rather
than emit a field without a description, so that `kubectl explain` teaches every field.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from shakeout.api.common import GROUP, VERSION, Resource
from shakeout.api.experiment import Experiment
from shakeout.api.nodeattack import NodeAttack
from shakeout.api.run import ExperimentRun
from shakeout.api.switch import ChaosSwitch

CATEGORY = "chaos"

Schema = dict[str, Any]


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class CrdInfo:
    model: type[Resource]
    singular: str
    scope: str
    short_names: list[str]
    columns: list[PrinterColumn] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.model.KIND

    @property
    def plural(self) -> str:
        return self.model.PLURAL

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


CRDS: list[CrdInfo] = [
    CrdInfo(
        model=Experiment,
        singular="experiment",
        scope="Namespaced",
        short_names=["exp"],
        columns=[
            # A column shows the first value of a JSONPath only: every type is in one field.
            PrinterColumn("Attacks", ".status.attackTypes", description="Attack types"),
            PrinterColumn("Schedule", ".spec.schedule.cron", description="Cron schedule"),
            PrinterColumn("Last Run", ".status.lastRun.name", description="Most recent run"),
            PrinterColumn(
                "Matched", ".status.preview.matched", "integer", "Pods matching now", priority=1
            ),
            PrinterColumn(
                "Allowed", ".status.preview.allowed", "boolean", "Rails allow a run", priority=1
            ),
            AGE,
        ],
    ),
    CrdInfo(
        model=ExperimentRun,
        singular="experimentrun",
        scope="Namespaced",
        short_names=["erun"],
        columns=[
            PrinterColumn("Experiment", ".spec.experimentRef.name", description="Experiment run"),
            PrinterColumn("Phase", ".status.phase", description="Phase of the run"),
            PrinterColumn("Targets", ".status.targets.selected", "integer", "Target pods"),
            PrinterColumn(
                "Action Required", ".spec.actionRequired", description="Follow-up needed"
            ),
            PrinterColumn("Reason", ".status.reason", description="Why", priority=1),
            PrinterColumn("Dry Run", ".spec.dryRun", "boolean", "Applies nothing", priority=1),
            AGE,
        ],
    ),
    CrdInfo(
        model=NodeAttack,
        singular="nodeattack",
        scope="Namespaced",
        short_names=["na"],
        columns=[
            PrinterColumn("Run", ".spec.runName", description="The run"),
            PrinterColumn("Attack", ".spec.attack.type", description="Attack type"),
            PrinterColumn("Node", ".spec.node", description="The node"),
            PrinterColumn("Phase", ".status.phase", description="The agent's report"),
            PrinterColumn("Rollback", ".spec.rollback", "boolean", "Rollback requested"),
            AGE,
        ],
    ),
    CrdInfo(
        model=ChaosSwitch,
        singular="chaosswitch",
        scope="Cluster",
        short_names=["csw"],
        columns=[
            PrinterColumn("Enabled", ".spec.enabled", "boolean", "Experimenting enabled"),
            PrinterColumn("Active Run", ".status.activeRun.name", description="Run holding lock"),
            PrinterColumn(
                "Run Namespace", ".status.activeRun.namespace", description="Its namespace"
            ),
            PrinterColumn("Changed By", ".status.lastChange.by", priority=1),
            AGE,
        ],
    ),
]

_DROP = {"title", "$defs"}


class SchemaError(ValueError):
    """The models cannot be expressed as a structural schema."""


def _inline_ref(node: Schema, defs: dict[str, Schema]) -> Schema:
    """Replace a $ref by a copy of its target; the field's own keys win over the model's."""
    target = copy.deepcopy(defs[node.pop("$ref").rsplit("/", 1)[-1]])
    # Sibling keys of a $ref (the field's description, its CEL rules) win over the
    # referenced model's own, and rules of both are kept.
    return _merge(target, node)


def _merge(inner: Schema, outer: Schema) -> Schema:
    rules = inner.get("x-kubernetes-validations", []) + outer.pop("x-kubernetes-validations", [])
    inner.update(outer)
    if rules:
        inner["x-kubernetes-validations"] = rules
    return inner


def _unwrap_optional(node: Schema, defs: dict[str, Schema]) -> Schema:
    """`anyOf: [X, null]` (an Optional field) becomes X: absent is how a CRD says None."""
    non_null = [s for s in node.pop("anyOf") if s.get("type") != "null"]
    if len(non_null) != 1:
        raise SchemaError(f"unions are not structural: {non_null}")
    return _merge(_resolve(non_null[0], defs), node)


def _keep(key: str, value: Any) -> bool:
    if key in _DROP:
        return False
    if key == "additionalProperties" and value is False:
        return False
    return not (key == "default" and value is None)


def _resolve(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        node = _inline_ref(node, defs)
    if "anyOf" in node:
        node = _unwrap_optional(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if not _keep(key, value):
            continue
        if key == "properties":
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
        elif key in {"items", "additionalProperties"}:
            out[key] = _resolve(value, defs)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if "format" in out and out["format"] not in {"date-time", "int32", "int64"}:
        del out["format"]
    return out


def _check_descriptions(schema: Schema, path: str) -> None:
    for name, sub in schema.get("properties", {}).items():
        where = f"{path}.{name}"
        if where.count(".") == 1 and name == "metadata":
            continue
        if not sub.get("description"):
            raise SchemaError(f"{where} has no description")
        _check_descriptions(sub, where)
    items = schema.get("items")
    if isinstance(items, dict):
        _check_descriptions(items, f"{path}[]")


def openapi_schema(model: type[Resource]) -> Schema:
    """The structural openAPIV3Schema of one kind."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: Schema = _resolve(raw, defs)
    props = schema["properties"]
    props["apiVersion"] = {
        "type": "string",
        "description": "APIVersion of the object: shakeout.dev/v1alpha1.",
    }
    props["kind"] = {"type": "string", "description": f"Kind of the object: {model.KIND}."}
    # The API server owns metadata's schema and refuses anything but its type here.
    props["metadata"] = {"type": "object"}
    schema.pop("required", None)
    schema["required"] = ["spec"]
    schema.setdefault("description", model.__doc__ or model.KIND)
    _check_descriptions(schema, model.KIND)
    return schema


def crd(info: CrdInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a dict ready for YAML."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.name,
            "labels": {
                "app.kubernetes.io/name": "shakeout",
                "app.kubernetes.io/part-of": "shakeout",
            },
        },
        "spec": {
            "group": GROUP,
            "scope": info.scope,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.short_names,
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_k8s() for c in info.columns],
                    "schema": {"openAPIV3Schema": openapi_schema(info.model)},
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name (without directory) to CRD, for every kind."""
    return {f"{GROUP}_{info.plural}.yaml": crd(info) for info in CRDS}
