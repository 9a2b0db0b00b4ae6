"""`kubectl shakeout init`: the library of ready Experiments (cli/templates.py), without a
cluster. tests/e2e/test_examples.py runs each of them to COMPLETED."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from shakeout.api.attacks import CATALOGUE, AttackType, Level
from shakeout.api.experiment import Experiment
from shakeout.cli import plugin, templates
from shakeout.cli.main import main as shakeout_main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deploy" / "examples"
NAMES = sorted(templates.templates())

CUSTOM = [
    "--name",
    "shop-drill",
    "-n",
    "team-b",
    "--selector",
    "app.kubernetes.io/name=shop,tier=front",
    "--workload",
    "statefulset/shop-db",
    "--service",
    "shop-http",
    "--port",
    "8080",
    "--path",
    "/healthz?deep=1",
    "--duration",
    "7",
    "--warm-up",
    "3",
    "--cool-down",
    "9",
    "--interval",
    "2",
]


def init(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = plugin.main(["init", *args])
    out, err = capsys.readouterr()
    return code, out, err


def experiment(text: str) -> dict[str, Any]:
    obj = yaml.safe_load(text)
    assert isinstance(obj, dict)
    return obj


def test_the_library_covers_the_incidents_of_the_issue() -> None:
    assert len(NAMES) >= 8
    types = {a["type"] for n in NAMES for a in templates.template(n).body["spec"]["attacks"]}
    wanted = {
        "PodDelete",
        "NetworkIsolation",
        "BandwidthLimit",
        "PacketLoss",
        "NetworkBlackhole",
        "NodeCordon",
        "CpuStress",
        "MemoryStress",
    }
    assert wanted <= types


@pytest.mark.parametrize("name", NAMES)
def test_each_template_renders_a_valid_experiment_with_its_defaults(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = init(capsys, name)
    assert (code, err) == (0, "")
    obj = experiment(out)
    model = Experiment.model_validate(obj)
    assert (obj["apiVersion"], obj["kind"]) == ("shakeout.dev/v1alpha1", "Experiment")
    assert obj["metadata"] == {"name": name}  # the namespace is kubectl's -n unless given
    spec = model.spec
    assert spec.description
    # Sane for real use: minutes of attack, a warm-up, a cool-down, and checks.
    assert all(60 <= a.duration_seconds <= 600 for a in spec.attacks)
    assert spec.warm_up_seconds >= 30
    assert spec.cool_down_seconds >= 60
    assert spec.state_checks
    assert any(c.type == "HttpGet" for c in spec.state_checks)


@pytest.mark.parametrize("name", NAMES)
def test_each_template_has_a_header_that_says_what_it_is(name: str) -> None:
    chosen = templates.template(name)
    header = chosen.header
    assert header.startswith(f"# {name}: ")
    for part in ("Incident:", "Hypothesis:", "Attack", "Needs:", "Change:", "Make it:"):
        assert f"# {part}" in header, (name, part)
    types = {a["type"] for a in chosen.body["spec"]["attacks"]}
    for kind in types:
        assert kind in header
    if any(CATALOGUE[AttackType(t)].level is Level.NODE for t in types):
        assert "node agent" in header
    if "NodeCordon" in types:
        assert "clusterScopedAttacks" in header
    # The header's own command line works as written.
    command = header.split("# Make it:")[1].split("# Run it:")[0]
    argv = command.replace("#", " ").replace("\\", " ").split()
    assert argv[:3] == ["kubectl", "shakeout", "init"]
    assert plugin.main(argv[2:]) == 0


@pytest.mark.parametrize("name", NAMES)
def test_custom_names_land_where_they_belong(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = init(capsys, name, *CUSTOM)
    assert code == 0, err
    obj = experiment(out)
    Experiment.model_validate(obj)
    assert obj["metadata"] == {"name": "shop-drill", "namespace": "team-b"}
    spec = obj["spec"]
    assert spec["blastRadius"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "shop", "tier": "front"}
    }
    assert {a["durationSeconds"] for a in spec["attacks"]} == {7}
    assert {c["intervalSeconds"] for c in spec["stateChecks"]} == {2}
    assert (spec["warmUpSeconds"], spec["coolDownSeconds"]) == (3, 9)
    refs = list(templates.workloads(spec))
    for ref in refs:
        assert ref == {"kind": "StatefulSet", "name": "shop-db"}
    services = [c["httpGet"]["service"] for c in spec["stateChecks"] if c["type"] == "HttpGet"]
    assert services
    for service in services:
        assert service == {"name": "shop-http", "port": 8080, "path": "/healthz?deep=1"}
    # Nothing of the defaults is left behind.
    assert "web" not in yaml.safe_dump(spec).replace("web-", "")
    # An option the template has no place for is said, on stderr only.
    if not refs:
        assert "has no place for --workload" in err
    else:
        assert err == ""


def test_the_workload_kind_defaults_to_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = init(capsys, "pod-delete", "--workload", "shop")
    assert code == 0
    (ref,) = templates.workloads(experiment(out)["spec"])
    assert ref == {"kind": "Deployment", "name": "shop"}
    assert templates.parse_workload("deploy/a") == ("Deployment", "a")
    assert templates.parse_workload("STS/b") == ("StatefulSet", "b")


def test_a_label_value_cannot_break_the_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = init(capsys, "pod-delete", "--selector", "app=yes,on=null")
    assert code == 0
    labels = experiment(out)["spec"]["blastRadius"]["selector"]["matchLabels"]
    assert labels == {"app": "yes", "on": "null"}  # strings, not a boolean and a null


def test_output_to_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "exp.yaml"
    code, out, err = init(capsys, "cpu-pressure", "--name", "burn", "-o", str(target))
    assert (code, out) == (0, "")
    assert f"wrote {target}" in err
    assert experiment(target.read_text())["metadata"]["name"] == "burn"
    assert target.read_text() == templates.render("cpu-pressure", templates.Values(name="burn"))


def test_list_shows_every_template_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = init(capsys, "--list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == NAMES
    for line in lines:
        name = line.split()[0]
        assert templates.template(name).summary in line


def test_an_unknown_template_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = init(capsys, "pod-explode")
    assert (code, out) == (2, "")
    assert "unknown template 'pod-explode'" in err
    assert "pod-delete" in err  # the known ones are named
    assert "--list" in err


def test_no_template_and_no_list_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = init(capsys)
    assert (code, out) == (2, "")
    assert "give a TEMPLATE, or --list" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--selector", "app"], "'app' is not key=value"),
        (["--selector", "app=a,app=b"], "the key app is given twice"),
        (["--selector", "app=not valid"], "spec.blastRadius.selector.matchLabels.app"),
        (["--name", "Not_A_Name"], "--name: 'Not_A_Name' is not a valid name"),
        (["-n", "team.a"], "--namespace: 'team.a'"),
        (["--workload", "daemonset/x"], "--workload: 'daemonset/x'"),
        (["--port", "0"], "httpGet.service.port"),
        (["--path", "no-slash"], "httpGet.service.path"),
        (["--duration", "0"], "durationSeconds"),
        # replicas-back may degrade: the cool-down must give it one probe to recover.
        (["--cool-down", "2", "--interval", "5"], "coolDownSeconds"),
    ],
)
def test_values_the_model_refuses_are_errors_before_anything_is_printed(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = init(capsys, "pod-delete", *args)
    assert (code, out) == (2, "")
    assert message in err, err


def test_a_field_the_model_would_ignore_is_refused() -> None:
    obj = templates.fill(templates.template("pod-delete").body, templates.Values())
    obj["spec"]["attacks"][0]["podDelet"] = {"gracePeriodSeconds": 1}
    with pytest.raises(templates.TemplateError, match=r"spec\.attacks\.0\.podDelet"):
        templates.validate(obj)


@pytest.mark.parametrize("name", NAMES)
def test_deploy_examples_is_init_with_the_defaults(
    name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """deploy/examples/ is generated (`make examples`); a template changed without it fails."""
    code, out, _ = init(capsys, name)
    assert code == 0
    assert (EXAMPLES / f"{name}.yaml").read_text() == out


def test_no_stray_examples_and_the_drift_check_sees_a_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert sorted(p.stem for p in EXAMPLES.glob("*.yaml")) == NAMES
    assert templates.drift(EXAMPLES) == []
    templates.write(tmp_path)
    assert shakeout_main(["examples", "--check", "--output-dir", str(tmp_path)]) == 0
    (tmp_path / "pod-delete.yaml").write_text("# edited by hand\n")
    (tmp_path / "old.yaml").write_text("{}\n")
    assert templates.drift(tmp_path) == ["pod-delete.yaml", "old.yaml"]
    capsys.readouterr()
    assert shakeout_main(["examples", "--check", "--output-dir", str(tmp_path)]) == 1
    assert "make examples" in capsys.readouterr().err


def test_the_templates_ship_in_the_package() -> None:
    """The plugin runs from an installed wheel: the templates are package data."""
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"cli/examples/*.yaml"' in pyproject
    package = REPO / "operator" / "shakeout" / "cli" / "examples"
    assert sorted(p.stem for p in package.glob("*.yaml")) == NAMES


def test_the_worked_example_of_the_docs_is_what_init_prints() -> None:
    text = (REPO / "docs" / "examples.md").read_text()
    section = text.split("## A worked example", 1)[1]
    shown = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    values = templates.Values(
        name="shop-pod-delete",
        namespace="team-a",
        selector={"app": "shop"},
        workload=templates.parse_workload("shop"),
        service="shop",
        port=8080,
        path="/healthz",
    )
    assert shown == templates.render("pod-delete", values)


@pytest.mark.parametrize("name", NAMES)
def test_a_url_takes_the_service_s_place(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://shop.team-b.svc:8080/healthz"
    code, out, err = init(capsys, name, "--url", url)
    assert (code, err) == (0, "")
    checks = experiment(out)["spec"]["stateChecks"]
    gets = [c["httpGet"] for c in checks if c["type"] == "HttpGet"]
    assert gets
    for http_get in gets:
        assert http_get["url"] == url
        assert "service" not in http_get


def test_a_url_and_a_service_are_not_both_given(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = init(capsys, "pod-delete", "--url", "http://a.b.svc/", "--port", "80")
    assert (code, out) == (2, "")
    assert "give --url, or --service, --port and --path: not both" in err
    code, _, err = init(capsys, "pod-delete", "--url", "http://user:pw@a.b.svc/")
    assert code == 2
    assert "credentials in the URL are refused" in err
