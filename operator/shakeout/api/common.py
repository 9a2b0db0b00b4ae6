"""Building blocks shared by the four kinds (Experiment, ExperimentRun, ChaosSwitch,
NodeAttack): camelCase models, conditions, selectors."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonDict  # type: ignore[attr-defined]  # not in __all__

GROUP = "shakeout.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# A DNS-1123 label: what Kubernetes accepts as a name of most things.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A DNS-1123 subdomain: object names (Deployments, Experiments, ...).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def cel(rule: str, message: str, **extra: str) -> JsonDict:
    """One CEL rule for `x-kubernetes-validations` (the API server evaluates it)."""
    rule_dict: JsonDict = {"rule": rule, "message": message}
    rule_dict.update(extra)
    return rule_dict


class Model(BaseModel):
    """Base of every API model: camelCase on the wire, snake_case in Python.

    Unknown fields are ignored when reading, so that an operator of an older version
    never crashes on an object written by a newer one; the API server's structural
    schema is what refuses unknown fields from users.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=True,
    )

    def to_k8s(self) -> dict[str, Any]:
        """The object as the API server wants it: camelCase, no empty optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A Kubernetes condition (metav1.Condition), kept as a map keyed by type."""

    type: str = Field(
        description="Type of the condition in CamelCase, e.g. Succeeded or Prepared.",
        max_length=316,
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        description="Why the condition last changed: a CamelCase word, e.g. StateCheckFailed.",
        max_length=1024,
    )
    message: str = Field(
        default="", description="A human readable explanation of the transition.", max_length=32768
    )
    last_transition_time: datetime = Field(
        description="When the status of this condition last changed."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was set for.",
    )


class LabelSelectorOperator(StrEnum):
    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


# Label keys and values as the API server accepts them (an optional DNS-subdomain prefix,
# a name of at most 63 characters). Checked here so that a bad selector is refused with
# the field named, instead of failing every pod list of the run.
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = (
    # [.] rather than an escaped dot: the same text is a CEL string literal in the CRD.
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + LABEL_NAME + "$"
)
LABEL_VALUE = r"^(" + LABEL_NAME + ")?$"
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE, max_length=63)]


class LabelSelectorRequirement(Model):
    """One requirement of a label selector, as in metav1.LabelSelectorRequirement."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.operator in ['In', 'NotIn'] ? size(self.values) > 0 "
                    ": !has(self.values) || size(self.values) == 0",
                    "values must be non-empty for In and NotIn, and empty for Exists "
                    "and DoesNotExist",
                )
            ]
        }
    )

    key: str = Field(
        description="The label key the requirement applies to.", max_length=317, pattern=LABEL_KEY
    )
    operator: LabelSelectorOperator = Field(
        description="How the key relates to the values: In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] = Field(
        default_factory=list,
        max_length=64,
        description="Label values; non-empty for In and NotIn, empty otherwise.",
    )


class LabelSelector(Model):
    """A label selector over pods, as in metav1.LabelSelector, but never empty.

    An empty selector would select every pod of the namespace; a chaos tool must not
    make that easy to do by accident, so at least one term is required.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "(has(self.matchLabels) && size(self.matchLabels) > 0) || "
                    "(has(self.matchExpressions) && size(self.matchExpressions) > 0)",
                    "the selector must not be empty: give matchLabels or matchExpressions "
                    "(an empty selector would target every pod of the namespace)",
                    fieldPath=".matchLabels",
                    reason="FieldValueRequired",
                ),
                cel(
                    "!has(self.matchLabels) || self.matchLabels.all(k, size(k) <= 317 && "
                    f"k.matches('{LABEL_KEY}'))",
                    "matchLabels keys must be label keys: [prefix/]name, the name at most 63 "
                    "letters, digits, '-', '_' or '.', starting and ending alphanumeric",
                    fieldPath=".matchLabels",
                ),
            ]
        }
    )

    match_labels: dict[str, LabelValue] = Field(
        default_factory=dict,
        description="Pods must carry every one of these labels with these values.",
        json_schema_extra={"maxProperties": 32},
    )
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list,
        max_length=16,
        description="Pods must meet every one of these requirements.",
    )

    @field_validator("match_labels")
    @classmethod
    def _label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if len(key) > 317 or not re.match(LABEL_KEY, key):
                raise ValueError(f"matchLabels key {key!r} is not a label key")
        return labels

    def is_empty(self) -> bool:
        return not self.match_labels and not self.match_expressions


class ObjectMeta(Model):
    """The parts of metadata the operator reads; the API server owns the rest."""

    name: str = Field(default="", description="Object name.")
    namespace: str | None = Field(default=None, description="Object namespace.")
    uid: str | None = Field(default=None, description="Object UID.")
    generation: int | None = Field(default=None, description="Spec generation.")
    resource_version: str | None = Field(default=None, description="Resource version.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels.")
    annotations: dict[str, str] = Field(default_factory=dict, description="Annotations.")
    creation_timestamp: datetime | None = Field(default=None, description="Creation time.")


class Resource(Model):
    """Base of every kind: apiVersion, kind, metadata; subclasses add spec/status."""

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]

    api_version: str = Field(default=API_VERSION, description="shakeout.dev/v1alpha1")
    kind: str = Field(default="", description="The kind of the object.")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta, description="Standard metadata.")
