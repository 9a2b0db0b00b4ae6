"""Objects for the shakeout kinds, generated from the CRD schemas: valid ones and broken ones.

Each kind's spec is drawn from the openAPIV3Schema of its served version, as the API
server has it in crds/. What JSON Schema does not know is stripped first: the
x-kubernetes-* keys (so the CEL rules), defaults, descriptions; objects are closed
(additionalProperties: false: the API server refuses unknown fields) and integers bounded
to int64. Scalars come from hypothesis-jsonschema; objects and lists are composed here
(see strategy()).

Most drawn specs are then made to meet the CEL rules, for the rule shapes the CRDs use
(conform()): those are "valid". The others are "schema-valid": the API server may refuse
them by CEL, with the rule's message. About half of all specs then get one mutation at a
place the schema describes: a wrong type, a number out of range or past int64, an
unknown enum value, a required field removed, a string, list or map over its limit, a
broken pattern, an unknown field; or the envelope is broken (name, apiVersion, kind,
spec missing or null). Merge patches are drawn the same way from the spec schema with
nothing required, or remove a field, or set labels.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from random import Random
from typing import Any

import yaml
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from shakeout.api.labels import SCHEDULED_TRIGGER, TRIGGER_LABEL

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
GROUP = "shakeout.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FUZZ_LABEL = "fuzz.shakeout.dev/case"
INT64 = (-(2**63), 2**63 - 1)
# Lists and maps are generated with at most this many entries (the limits themselves are
# exercised by the too-many mutations): big nested lists make generation slow.
GEN_MAX = 4
DNS_NAME = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    namespaced: bool


KINDS = {
    "Experiment": Kind("Experiment", "experiments", True),
    "ExperimentRun": Kind("ExperimentRun", "experimentruns", True),
    "ChaosSwitch": Kind("ChaosSwitch", "chaosswitches", False),
    "NodeAttack": Kind("NodeAttack", "nodeattacks", True),
}


@dataclass
class Case:
    """One object to create, the merge patch to apply if it was stored, and what it is."""

    kind: str
    body: dict[str, Any]
    patch: dict[str, Any]
    mutation: str  # "valid", or what was broken
    patch_mutation: str
    # An Experiment created first and deleted last, that an ExperimentRun refers to.
    companion: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    hold: float = 0.0  # seconds between create and patch, so that a run gets under way

    @property
    def name(self) -> str:
        return str(self.body.get("metadata", {}).get("name", ""))


# -- schemas -------------------------------------------------------------------


@cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of the served version, as the API server has it."""
    plural = KINDS[kind].plural
    crd = yaml.safe_load((CRDS / f"{GROUP}_{plural}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    return dict(version["schema"]["openAPIV3Schema"])


def cel_messages() -> set[str]:
    """Every message of an x-kubernetes-validations rule in the CRDs."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                found.add(rule["message"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for kind in KINDS:
        walk(crd_schema(kind))
    return found


def json_schema(node: Any, *, loose: bool = False) -> Any:
    """A Kubernetes structural schema as plain JSON Schema for generation.

    loose: nothing is required (for merge patches, which may carry any part of a spec).
    """
    if isinstance(node, list):
        return [json_schema(v, loose=loose) for v in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("description", "default"):
            continue
        if key == "required" and loose:
            continue
        if key in ("properties", "items", "additionalProperties"):
            if key == "properties":
                out[key] = {k: json_schema(v, loose=loose) for k, v in value.items()}
            else:
                out[key] = json_schema(value, loose=loose)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    if out.get("type") == "integer":
        out.setdefault("minimum", INT64[0])
        out.setdefault("maximum", INT64[1])
    return out


@cache
def spec_schema(kind: str, loose: bool = False) -> dict[str, Any]:
    return dict(json_schema(crd_schema(kind)["properties"]["spec"], loose=loose))


def strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of a (cleaned) schema.

    Scalars come from hypothesis-jsonschema, which joins pattern, length and format into
    one strategy. Objects and arrays are composed here: its object generator relies on a
    Hypothesis internal (conjecture.utils.many.more) that Hypothesis 6.1xx no longer has.
    """
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        props = schema["properties"]
        required = schema.get("required", [])
        return st.fixed_dictionaries(
            {k: strategy(props[k]) for k in required},
            optional={k: strategy(v) for k, v in props.items() if k not in required},
        )
    if kind == "object":
        extra = schema.get("additionalProperties")
        values = strategy(extra) if isinstance(extra, dict) else st.text(max_size=8)
        return st.dictionaries(
            st.text(max_size=24),
            values,
            min_size=schema.get("minProperties", 0),
            max_size=min(schema.get("maxProperties", GEN_MAX), GEN_MAX),
        )
    if kind == "array":
        return st.lists(
            strategy(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", GEN_MAX), GEN_MAX),
        )
    return from_schema(schema)


@cache
def spec_strategy(kind: str, loose: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    return strategy(spec_schema(kind, loose))


# -- CEL -------------------------------------------------------------------------
#
# JSON Schema cannot say what the CRDs' CEL rules say. The rule shapes the CRDs use are
# read from the schema and satisfied on a generated value, so that most valid objects
# pass the API server and a broken one has its one mutation as its only fault. A rule of
# another shape is left alone: the API server must refuse with its message.

Props = dict[str, Any]


def _required_for(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """(self.type == 'T') == has(self.p): p for type T, and only for it."""
    if value.get("type") != m[1]:
        value.pop(m[2], None)
    elif m[2] not in value:
        value[m[2]] = draw(strategy(json_schema(props[m[2]])))


def _only_for(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """self.type == 'T' || !has(self.p): p for type T only."""
    if value.get("type") != m[1]:
        value.pop(m[2], None)


def _exactly_one(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """has(self.a) != has(self.b)."""
    if m[1] in value and m[2] in value:
        value.pop(m[draw(st.sampled_from([1, 2]))])
    elif m[1] not in value and m[2] not in value:
        key = m[draw(st.sampled_from([1, 2]))]
        value[key] = draw(strategy(json_schema(props[key])))


def _not_empty(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """(has(self.a) && size(self.a) > 0) || (has(self.b) && ...): a or b non-empty."""
    if not value.get(m[1]) and not value.get(m[2]):
        value[m[1]] = draw(strategy(json_schema(props[m[1]])).filter(bool))


def _values_for(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """self.operator in [...] ? size(self.values) > 0 : no values."""
    if value.get("operator") not in re.findall(r"'(\w+)'", m[1]):
        value.pop("values", None)
    elif not value.get("values"):
        value["values"] = [draw(st.text(max_size=10))]


def _unique_names(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """self.l.all(a, self.l.exists_one(b, b.name == a.name)): names unique in list l."""
    for index, item in enumerate(value.get(m[1]) or []):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            item["name"] = f"{item['name'][:56]}-{index}"


def _at_most_one(draw: st.DrawFn, m: re.Match[str], value: Props, props: Props) -> None:
    """self.l.filter(a, a.type == 'T').size() <= 1: at most one item of type T in list l."""
    items = value.get(m[1])
    if isinstance(items, list):
        first = next((i for i, a in enumerate(items) if a.get("type") == m[3]), None)
        value[m[1]] = [a for i, a in enumerate(items) if a.get("type") != m[3] or i == first]


RULE_SHAPES = [
    (re.compile(r"^\(self\.type == '(\w+)'\) == has\(self\.(\w+)\)$"), _required_for),
    (re.compile(r"^self\.type == '(\w+)' \|\| !has\(self\.(\w+)\)$"), _only_for),
    (re.compile(r"^has\(self\.(\w+)\) != has\(self\.(\w+)\)$"), _exactly_one),
    (
        re.compile(r"^\(has\(self\.(\w+)\) && size\(self\.\1\) > 0\) \|\| \(has\(self\.(\w+)\)"),
        _not_empty,
    ),
    (re.compile(r"^self\.operator in \[(.*?)\] \? size\(self\.values\) > 0"), _values_for),
    (
        re.compile(r"self\.(\w+)\.all\((\w), self\.\1\.exists_one\((\w), \3\.name == \2\.name"),
        _unique_names,
    ),
    (
        re.compile(r"^self\.(\w+)\.filter\((\w), \2\.type == '(\w+)'\)\.size\(\) <= 1$"),
        _at_most_one,
    ),
]


@cache
def crd_spec(kind: str) -> dict[str, Any]:
    return dict(crd_schema(kind)["properties"]["spec"])


def conform(draw: st.DrawFn, value: Any, schema: dict[str, Any]) -> Any:
    """Make a value that its schema accepts meet the schema's CEL rules (known shapes)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        for rule in schema.get("x-kubernetes-validations", []):
            text = " ".join(rule["rule"].split())
            if "oldSelf" in text:
                continue  # transition rules: a create has no old object
            for shape, fix in RULE_SHAPES:
                if m := shape.search(text):
                    fix(draw, m, value, props)
                    break
        for key, item in value.items():
            sub = props.get(key, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                conform(draw, item, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            conform(draw, item, schema["items"])
    return value


# -- mutations -----------------------------------------------------------------

WRONG_TYPES: dict[str, list[Any]] = {
    "string": [0, 1.5, True, [], {}, ["x"]],
    "integer": ["7", 1.5, True, [], {}, "ten"],
    "boolean": ["true", 0, 1, [], {}, "yes"],
    "array": ["x", 1, {}, True, {"0": "a"}],
    "object": ["x", 1, [], True, [{"a": 1}]],
}


def sites(value: Any, schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[Any]:
    """Every (path, schema) of the value that the schema describes, parents first."""
    yield path, schema, value
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in sorted(value):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if isinstance(sub, dict):
                yield from sites(value[key], sub, (*path, key))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            yield from sites(item, schema["items"], (*path, index))


def mutations_at(schema: dict[str, Any], value: Any) -> list[str]:
    """The mutations that make this value break its schema."""
    kind = schema.get("type")
    found = []
    if kind in WRONG_TYPES:
        found.append("wrong-type")
    if kind == "integer":
        found += ["out-of-range", "huge-number"]
    if "enum" in schema:
        found.append("unknown-enum")
    if isinstance(value, dict) and any(k in value for k in schema.get("required", [])):
        found.append("missing-required")
    if kind == "string" and "maxLength" in schema:
        found.append("oversized-string")
    if kind == "string" and "pattern" in schema:
        found.append("pattern-broken")
    if kind == "array" and "maxItems" in schema and value:
        found.append("too-many-items")
    if kind == "array" and schema.get("minItems", 0) > 0:
        found.append("too-few-items")
    if kind == "object" and "maxProperties" in schema:
        found.append("too-many-keys")
    if kind == "object" and "properties" in schema:
        found.append("unknown-field")
    return found


def set_at(root: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node = root
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return root


def broken_value(rnd: Random, op: str, schema: dict[str, Any], value: Any) -> Any:
    """The replacement value of one mutation."""
    if op == "wrong-type":
        return rnd.choice(WRONG_TYPES[schema["type"]])
    if op == "out-of-range":
        low, high = schema.get("minimum", INT64[0]), schema.get("maximum", INT64[1])
        return rnd.choice(
            [c for c in (low - 1, high + 1, low - 1000, high * 2 + 1) if not low <= c <= high]
        )
    if op == "huge-number":
        return rnd.choice([2**63, -(2**63) - 1, 2**64 + 7, 10**30, 1e300, -1e300])
    if op == "unknown-enum":
        known = [str(v) for v in schema["enum"]]
        pick = rnd.choice(known)
        candidates = [pick.lower(), pick.upper(), f"{pick} ", "", "Bogus", "ünknown", pick * 2]
        return rnd.choice([c for c in candidates if c not in known])
    if op == "missing-required":
        gone = rnd.choice([k for k in schema["required"] if k in value])
        return {k: v for k, v in value.items() if k != gone}
    if op == "oversized-string":
        size = schema["maxLength"] + rnd.choice([1, 2, 100, schema["maxLength"]])
        return rnd.choice(["a", "9", "-", "é"]) * size
    if op == "pattern-broken":
        return rnd.choice(["UPPER", "-lead", "trail-", "a b", "a_b", "..", "", "ünï", "a\nb"])
    if op == "too-many-items":
        return list(value) * (schema["maxItems"] // max(len(value), 1) + 1)
    if op == "too-few-items":
        return []
    if op == "too-many-keys":
        return {f"k{i}": "v" for i in range(schema["maxProperties"] + 1)}
    if op == "unknown-field":
        key = rnd.choice(["bogus", "Name", "spec", "enabled_", "x" * 70])
        return {**value, key: rnd.choice([1, "x", True, {}])}
    raise AssertionError(op)


def mutate(rnd: Random, value: Any, schema: dict[str, Any]) -> tuple[Any, str]:
    """The value with one mutation: a kind of mutation picked evenly among those that the
    value offers, then a place for it; returns the value and what was done where."""
    value = copy.deepcopy(value)
    candidates = [
        (path, op, sub, node)
        for path, sub, node in sites(value, schema)
        for op in mutations_at(sub, node)
    ]
    op = rnd.choice(sorted({c[1] for c in candidates}))
    path, op, sub, node = rnd.choice([c for c in candidates if c[1] == op])
    new = broken_value(rnd, op, sub, node)
    where = ".".join(str(p) for p in path) or "spec"
    return set_at(value, path, new), f"{op}@{where}"


# -- objects ---------------------------------------------------------------------


def envelope(kind: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "", "labels": {}}
    if KINDS[kind].namespaced:
        meta["namespace"] = ""
    return {"apiVersion": API_VERSION, "kind": kind, "metadata": meta}


BAD_NAMES = ["UPPER", "-lead", "a_b", "a" * 254, "dots..dots", "sp ace", "ünï"]


def break_envelope(rnd: Random, body: dict[str, Any]) -> str:
    """Break the object's envelope in place; returns what was broken."""
    op = rnd.choice(["bad-name", "api-version", "kind", "no-spec", "spec-null"])
    if op == "bad-name":
        body["metadata"]["name"] = rnd.choice(BAD_NAMES)
    elif op == "api-version":
        body["apiVersion"] = rnd.choice([f"{GROUP}/v1", "v1", f"{GROUP}/v1beta9"])
    elif op == "kind":
        body["kind"] = rnd.choice(["Experiments", "Pod", body["kind"].lower(), "Bogus"])
    elif op == "no-spec":
        body.pop("spec", None)
    else:
        body["spec"] = None
    return op


# Proportions. Hypothesis draws the content, but its engine favours small numbers and
# re-uses earlier choices, so choices between kinds of case come from a Random that it
# seeds: the proportions hold, and the draw stays deterministic.
KIND_SHARES = {"Experiment": 35, "ExperimentRun": 30, "NodeAttack": 20, "ChaosSwitch": 15}
CONFORM = 0.8  # specs made to meet the CEL rules; the rest stay as the schema allows
VALID = 0.45  # specs sent as they are; the rest get one mutation
ENVELOPE = 0.1  # of the mutated: the envelope broken instead of the spec


@st.composite
def merge_patch(draw: st.DrawFn, rnd: Random, kind: str) -> tuple[dict[str, Any], str]:
    """A merge patch of a stored object: part of a spec, valid or broken, or metadata."""
    choice = rnd.random()
    schema = spec_schema(kind, loose=True)
    if choice < 0.4:
        part = conform(draw, draw(spec_strategy(kind, loose=True)), crd_spec(kind))
        return {"spec": part}, "valid"
    if choice < 0.7:
        part, what = mutate(rnd, draw(spec_strategy(kind, loose=True)), schema)
        return {"spec": part}, what
    if choice < 0.85:
        key = rnd.choice(sorted(schema["properties"]))
        return {"spec": {key: None}}, f"remove@{key}"
    value = draw(
        st.text(alphabet=string.ascii_letters + string.digits + "-_. /", max_size=70)
        | st.text(max_size=8)
    )
    return {"metadata": {"labels": {"fuzz": value}, "annotations": {"fuzz": value}}}, "labels"


TARGET_APP = "fuzz-target"  # the pods of the test's namespace carry app=fuzz-target


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """One case; names are given later, in the order the cases were drawn."""
    rnd = Random(draw(st.integers(0, 2**64 - 1)))
    kind = rnd.choices(list(KIND_SHARES), weights=list(KIND_SHARES.values()))[0]
    # A spec that the schema accepts, mostly made to meet the CEL rules too ("valid"; the
    # others are "schema-valid"); about half of them then get one mutation.
    spec, mutation = draw(spec_strategy(kind)), "schema-valid"
    if rnd.random() < CONFORM:
        spec, mutation = conform(draw, spec, crd_spec(kind)), "valid"
    body = {**envelope(kind), "spec": spec}
    if rnd.random() >= VALID:
        if rnd.random() < ENVELOPE:
            mutation = break_envelope(rnd, body)
        else:
            body["spec"], mutation = mutate(rnd, spec, spec_schema(kind))
    patch, patch_mutation = draw(merge_patch(rnd, kind))
    case = Case(kind, body, patch, mutation, patch_mutation)
    if kind == "ExperimentRun":
        if rnd.random() < 0.4:
            # A scheduled run skips the Run button's checks: the operator must judge it.
            body["metadata"]["labels"][TRIGGER_LABEL] = SCHEDULED_TRIGGER
            case.notes.append("scheduled")
        if isinstance(body.get("spec"), dict) and rnd.random() < 0.6:
            companion = conform(draw, draw(spec_strategy("Experiment")), crd_spec("Experiment"))
            if rnd.random() < 0.5:
                aim_at_target(companion)
                case.notes.append("targets-pods")
                case.hold = rnd.choice([0.0, 0.5, 2.0])
            case.companion = {**envelope("Experiment"), "spec": companion}
    if kind == "ChaosSwitch" and body["metadata"]["name"] == "":
        if rnd.random() < 0.5:
            case.notes.append("default")
        else:
            body["metadata"]["name"] = draw(DNS_NAME.filter(lambda n: n != "default"))
    return case


def aim_at_target(spec: dict[str, Any]) -> None:
    """Point an Experiment at the test's pods and workload, so that its runs really run."""
    spec["blastRadius"]["selector"] = {"matchLabels": {"app": TARGET_APP}}
    target = {"kind": "Deployment", "name": TARGET_APP}
    for attack in spec.get("attacks", []):
        if "scaleWorkload" in attack:
            attack["scaleWorkload"]["workload"] = target
    for check in spec.get("stateChecks", []):
        if "workloadReady" in check:
            check["workloadReady"]["workload"] = target
        if "httpGet" in check:
            check["httpGet"].pop("service", None)  # exactly one of service and url
            check["httpGet"]["url"] = "http://127.0.0.1:9/"  # refused at once, never outside
