"""`kubectl shakeout init`: the library of ready Experiments (docs/examples.md).

Each template is package data, `cli/examples/<name>.yaml`: a comment header (the incident,
the hypothesis, the attack and what it needs, what to change) over one Experiment with
example names. `render` fills in a team's names in the parsed object, never in the text
(a label value cannot break the YAML), checks the result against the Experiment model and
returns the header and the YAML. `deploy/examples/` holds every template rendered with its
defaults: `make examples` writes it, `make verify` fails when it differs (`drift`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from shakeout import generated
from shakeout.api.attacks import WorkloadKind
from shakeout.api.common import DNS_LABEL, DNS_SUBDOMAIN
from shakeout.api.experiment import Experiment

PACKAGE_DIR = "examples"  # under shakeout/cli
SUMMARY = re.compile(r"^# ([a-z0-9-]+): (.+)$")
WORKLOAD_KINDS = {
    "deployment": WorkloadKind.DEPLOYMENT,
    "deployments": WorkloadKind.DEPLOYMENT,
    "deploy": WorkloadKind.DEPLOYMENT,
    "statefulset": WorkloadKind.STATEFUL_SET,
    "statefulsets": WorkloadKind.STATEFUL_SET,
    "sts": WorkloadKind.STATEFUL_SET,
}


class TemplateError(ValueError):
    """What the user asked for cannot be made: the message says why."""


class UnknownTemplateError(TemplateError):
    pass


@dataclass(frozen=True)
class Template:
    name: str
    summary: str  # the header's first line: what `init --list` shows
    header: str  # the leading comment lines, each ending in a newline
    body: dict[str, Any]

    def uses(self, option: str) -> bool:
        """Whether the option (a Values field) lands anywhere in this template."""
        if option == "workload":
            return any(True for _ in workloads(self.body))
        if option in ("service", "port", "path", "url"):
            return any(True for _ in _http_gets(self.body))
        if option == "interval":
            return bool(self.body["spec"].get("stateChecks"))
        return True


@dataclass(frozen=True)
class Values:
    """What the user fills in; None keeps the template's own value."""

    name: str | None = None
    namespace: str | None = None
    selector: dict[str, str] | None = None
    workload: tuple[WorkloadKind, str] | None = None
    service: str | None = None
    url: str | None = None  # instead of service, port and path
    port: int | None = None
    path: str | None = None
    duration: int | None = None
    warm_up: int | None = None
    cool_down: int | None = None
    interval: int | None = None

    def given(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


# -- the templates --------------------------------------------------------------------------


def _parse(name: str, text: str) -> Template:
    lines = text.splitlines(keepends=True)
    header_lines = []
    for line in lines:
        if not line.startswith("#"):
            break
        header_lines.append(line)
    match = SUMMARY.match(header_lines[0].rstrip("\n")) if header_lines else None
    if match is None or match.group(1) != name:
        raise TemplateError(f"template {name}: the first line must be '# {name}: <summary>'")
    body = yaml.safe_load(text)
    if not isinstance(body, dict):
        raise TemplateError(f"template {name}: not one YAML object")
    return Template(name, match.group(2), "".join(header_lines), body)


@cache
def templates() -> dict[str, Template]:
    """Every template of the package, by name, in name order."""
    root = resources.files("shakeout.cli").joinpath(PACKAGE_DIR)
    found = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml"):
            name = entry.name.removesuffix(".yaml")
            found[name] = _parse(name, entry.read_text(encoding="utf-8"))
    return found


def template(name: str) -> Template:
    known = templates()
    if name not in known:
        raise UnknownTemplateError(
            f"unknown template {name!r}; there are {len(known)}: {', '.join(known)} "
            "(kubectl shakeout init --list describes them)"
        )
    return known[name]


def listing() -> str:
    width = max(len(n) for n in templates())
    return "".join(f"{t.name:<{width}}  {t.summary}\n" for t in templates().values())


# -- the user's values ----------------------------------------------------------------------


def parse_selector(text: str) -> dict[str, str]:
    """`key=value[,key=value]`: the workload's pod labels (checked by the model later)."""
    labels: dict[str, str] = {}
    for term in text.split(","):
        key, sep, value = term.strip().partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or "=" in value:
            raise TemplateError(
                f"--selector: {term.strip()!r} is not key=value (give key=value[,key=value])"
            )
        if key in labels:
            raise TemplateError(f"--selector: the key {key} is given twice")
        labels[key] = value
    return labels


def parse_workload(text: str) -> tuple[WorkloadKind, str]:
    """`NAME` (a Deployment) or `KIND/NAME`, KIND one of deployment, deploy, statefulset, sts."""
    kind_text, sep, name = text.rpartition("/")
    if not sep:
        return WorkloadKind.DEPLOYMENT, text
    kind = WORKLOAD_KINDS.get(kind_text.lower())
    if kind is None or not name:
        raise TemplateError(
            f"--workload: {text!r} is not NAME or KIND/NAME with KIND deployment or statefulset"
        )
    return kind, name


def workloads(obj: Any) -> Iterator[dict[str, Any]]:
    """Every workload reference of the spec: in attack parameters and WorkloadReady checks."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key == "workload" and isinstance(value, dict):
                yield value
            else:
                yield from workloads(value)
    elif isinstance(obj, list):
        for item in obj:
            yield from workloads(item)


def _http_gets(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The httpGet parameters of every HttpGet check."""
    for check in body["spec"].get("stateChecks") or []:
        if isinstance(check.get("httpGet"), dict):
            yield check["httpGet"]


def fill(body: dict[str, Any], values: Values) -> dict[str, Any]:
    obj = copy.deepcopy(body)
    metadata, spec = obj["metadata"], obj["spec"]
    if values.name is not None:
        metadata["name"] = values.name
    if values.namespace is not None:
        metadata["namespace"] = values.namespace
    if values.selector is not None:
        spec["blastRadius"]["selector"] = {"matchLabels": dict(values.selector)}
    if values.workload is not None:
        kind, name = values.workload
        for ref in workloads(spec):
            ref["kind"], ref["name"] = str(kind), name
    if values.url is not None and (values.service, values.port, values.path) != (None,) * 3:
        raise TemplateError("give --url, or --service, --port and --path: not both")
    for http_get in _http_gets(obj):
        if values.url is not None:
            # A Service of the namespace as NAME.NAMESPACE.svc, or a host the admin allows;
            # in the service's place (first).
            rest = {k: v for k, v in http_get.items() if k != "service"}
            http_get.clear()
            http_get.update({"url": values.url, **rest})
            continue
        service = http_get.get("service") or {}
        for key, value in (("name", values.service), ("port", values.port), ("path", values.path)):
            if value is not None:
                service[key] = value
    fill_times(spec, values)
    return obj


def fill_times(spec: dict[str, Any], values: Values) -> None:
    for items, key, value in (
        (spec["attacks"], "durationSeconds", values.duration),
        (spec.get("stateChecks") or [], "intervalSeconds", values.interval),
        ([spec], "warmUpSeconds", values.warm_up),
        ([spec], "coolDownSeconds", values.cool_down),
    ):
        if value is not None:
            for item in items:
                item[key] = value


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "the Experiment"


def validate(obj: dict[str, Any]) -> Experiment:
    """The Experiment model's verdict, plus what it does not check: names, and fields it
    would ignore (the API server refuses unknown fields; the model skips them)."""
    metadata = obj.get("metadata") or {}
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or len(name) > 253 or not re.match(DNS_SUBDOMAIN, name):
        raise TemplateError(f"--name: {name!r} is not a valid name (lowercase a-z, 0-9, - and .)")
    if namespace is not None and (
        not isinstance(namespace, str) or len(namespace) > 63 or not re.match(DNS_LABEL, namespace)
    ):
        raise TemplateError(f"--namespace: {namespace!r} is not a valid namespace name")
    try:
        experiment = Experiment.model_validate(obj)
    except ValidationError as err:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in err.errors())
        raise TemplateError(f"the Experiment would be invalid: {problems}") from None
    dumped = experiment.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if (extra := _unknown(obj, dumped)) is not None:
        raise TemplateError(f"the Experiment has a field the API does not know: {extra}")
    return experiment


def _unknown(given: Any, known: Any, at: str = "") -> str | None:
    """The first field of `given` that the validated model does not hold, or None."""
    if isinstance(given, dict) and isinstance(known, dict):
        for key, value in given.items():
            if key not in known:
                return f"{at}{key}"
            if (found := _unknown(value, known[key], f"{at}{key}.")) is not None:
                return found
    elif isinstance(given, list) and isinstance(known, list):
        for i, (a, b) in enumerate(zip(given, known, strict=False)):
            if (found := _unknown(a, b, f"{at}{i}.")) is not None:
                return found
    return None


def render(name: str, values: Values | None = None) -> str:
    """The template `name` with the user's values: its header and the Experiment as YAML,
    validated against the Experiment model. Raises TemplateError."""
    chosen = template(name)
    obj = fill(chosen.body, values or Values())
    validate(obj)
    return chosen.header + dump(obj)


class _Flow(dict[str, Any]):
    """A small mapping written on one line: `{kind: Deployment, name: web}`."""


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as kubectl and most manifests write them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _flow(dumper: yaml.SafeDumper, data: _Flow) -> yaml.Node:
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    # Prose (a description) folded over lines; everything else as PyYAML chooses.
    style = ">" if len(data) > 60 and " " in data and "\n" not in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(_Flow, _flow)
_Dumper.add_representer(str, _text)


def _leaves_in_flow(obj: Any, depth: int = 0, item: bool = False) -> Any:
    """Mappings of scalars deep in the spec (not list items: an attack, a check) as _Flow."""
    if isinstance(obj, dict):
        inner = {k: _leaves_in_flow(v, depth + 1) for k, v in obj.items()}
        scalars = all(not isinstance(v, dict | list) for v in obj.values())
        return _Flow(inner) if scalars and depth >= 3 and not item else inner
    if isinstance(obj, list):
        return [_leaves_in_flow(v, depth + 1, item=True) for v in obj]
    return obj


def dump(obj: dict[str, Any]) -> str:
    """An Experiment as YAML: keys in the template's order, small mappings on one line."""
    text: str = yaml.dump(
        _leaves_in_flow(obj), Dumper=_Dumper, sort_keys=False, width=90, allow_unicode=True
    )
    return text


def unused(name: str, values: Values) -> list[str]:
    """The options the user gave that template `name` has no place for."""
    chosen = template(name)
    return [option for option in values.given() if not chosen.uses(option)]


# -- deploy/examples ------------------------------------------------------------------------


def examples() -> dict[str, str]:
    """deploy/examples/: every template rendered with its defaults, by file name."""
    return {f"{name}.yaml": render(name) for name in templates()}


def write(directory: Path) -> list[Path]:
    return generated.write(directory, examples())


def drift(directory: Path) -> list[str]:
    """Files of `directory` that differ from the templates, and YAML files of no template."""
    return generated.drift(directory, examples(), "*.yaml")
