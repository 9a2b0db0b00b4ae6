"""`kubectl shakeout`: run, stop, stop-all, continue, list, report, preview, status, init.

Installed on PATH as kubectl-shakeout, so kubectl finds it as a plugin. Talks to the
cluster of the current kubeconfig context, as kubectl does.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import yaml

from shakeout import __version__
from shakeout.api.common import API_VERSION, GROUP, VERSION
from shakeout.api.experiment import Experiment
from shakeout.api.labels import PREVIEW_REQUESTED
from shakeout.api.run import TERMINAL_PHASES, ExperimentRun, Phase
from shakeout.api.switch import SWITCH_NAME, ChaosSwitch
from shakeout.cli.preview import render
from shakeout.cli.report import report, runs_table
from shakeout.cli.reports import RENDERERS

RUNS = ExperimentRun.PLURAL
EXPERIMENTS = Experiment.PLURAL
SWITCHES = ChaosSwitch.PLURAL


class Cluster:
    """The current kubeconfig context, through the kubernetes client: every request the
    plugin sends is one of these methods."""

    def __init__(self, namespace: str | None) -> None:
        from kubernetes import client, config

        config.load_kube_config()
        _, context = config.list_kube_config_contexts()
        self.namespace = namespace or (context or {}).get("context", {}).get("namespace", "default")
        # The client returns plain dicts typed as object; we read them as JSON.
        self.api: Any = client.CustomObjectsApi()

    def runs(self, all_namespaces: bool) -> list[dict[str, Any]]:
        if all_namespaces:
            out = self.api.list_cluster_custom_object(GROUP, VERSION, RUNS)
        else:
            out = self.api.list_namespaced_custom_object(GROUP, VERSION, self.namespace, RUNS)
        return list(out["items"])

    def run(self, name: str) -> dict[str, Any]:
        return dict(
            self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, RUNS, name)
        )

    def create_run(self, experiment: str, dry_run: bool = False) -> dict[str, Any]:
        """Press the Run button: a new ExperimentRun of the experiment, named after it (a
        dry run with spec.dryRun: true when asked)."""
        spec: dict[str, Any] = {"experimentRef": {"name": experiment}}
        if dry_run:
            spec["dryRun"] = True
        body = {
            "apiVersion": API_VERSION,
            "kind": ExperimentRun.KIND,
            "metadata": {"generateName": f"{experiment}-", "namespace": self.namespace},
            "spec": spec,
        }
        # Strict: a cluster whose CRD predates spec.dryRun refuses the field instead of
        # dropping it, which would turn a dry run into a real one.
        return dict(
            self.api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, RUNS, body, field_validation="Strict"
            )
        )

    def experiment(self, name: str) -> dict[str, Any]:
        return dict(
            self.api.get_namespaced_custom_object(GROUP, VERSION, self.namespace, EXPERIMENTS, name)
        )

    def request_preview(self, name: str, token: str) -> bool:
        """Ask the operator for a fresh preview (the annotation it answers); False when the
        user may not annotate the Experiment (a viewer reads the last preview instead)."""
        from kubernetes.client.exceptions import ApiException

        body = {"metadata": {"annotations": {PREVIEW_REQUESTED: token}}}
        try:
            self.api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, EXPERIMENTS, name, body
            )
        except ApiException as err:
            if err.status == 403:
                return False
            raise
        return True

    def patch_run_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, RUNS, name, {"spec": spec}
        )

    def switch(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self.api.get_cluster_custom_object(GROUP, VERSION, SWITCHES, SWITCH_NAME))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def set_switch(self, enabled: bool) -> None:
        if self.switch() is None:
            self.api.create_cluster_custom_object(
                GROUP,
                VERSION,
                SWITCHES,
                {
                    "apiVersion": API_VERSION,
                    "kind": ChaosSwitch.KIND,
                    "metadata": {"name": SWITCH_NAME},
                    "spec": {"enabled": enabled},
                },
            )
        else:
            self.api.patch_cluster_custom_object(
                GROUP, VERSION, SWITCHES, SWITCH_NAME, {"spec": {"enabled": enabled}}
            )


def _emit(data: Any, output: str | None, human: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(human)


def _run(args: argparse.Namespace) -> int:
    cluster = Cluster(args.namespace)
    created = cluster.create_run(args.experiment, dry_run=args.dry_run)
    name = created["metadata"]["name"]
    if not args.wait:
        _emit(created, args.output, f"experimentrun.shakeout.dev/{name} created")
        return 0
    print(f"experimentrun.shakeout.dev/{name} created; following it (Ctrl-C stops following)")
    seen = None
    while True:
        run = cluster.run(name)
        status = run.get("status") or {}
        phase = status.get("phase")
        if phase != seen:
            print(
                f"  {time.strftime('%H:%M:%S')}  {phase or 'PENDING'}  {status.get('message', '')}"
            )
            seen = phase
        if phase in TERMINAL_PHASES:
            print()
            print(report(run))
            return 0 if phase == Phase.COMPLETED else 1
        time.sleep(0.5)


def _stop(args: argparse.Namespace) -> int:
    Cluster(args.namespace).patch_run_spec(args.run, {"cancel": True})
    print(f"experimentrun.shakeout.dev/{args.run} cancel requested")
    return 0


def _findings(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {"findings": args.text}
    if args.action_required:
        spec["actionRequired"] = args.action_required.capitalize()
    Cluster(args.namespace).patch_run_spec(args.run, spec)
    print(f"experimentrun.shakeout.dev/{args.run} findings recorded")
    return 0


def _stop_all(args: argparse.Namespace) -> int:
    Cluster(None).set_switch(False)
    print("experimenting disabled (Stop All): running runs are canceled and rolled back")
    return 0


def _continue(args: argparse.Namespace) -> int:
    Cluster(None).set_switch(True)
    print("experimenting enabled (Continue)")
    return 0


def _list(args: argparse.Namespace) -> int:
    runs = Cluster(args.namespace).runs(args.all_namespaces)
    _emit({"items": runs}, args.output, runs_table(runs))
    return 0


def _report(args: argparse.Namespace) -> int:
    run = Cluster(args.namespace).run(args.run)
    if args.output is None:
        print(report(run))
    else:
        # Each renderer ends its text with a newline of its own.
        sys.stdout.write(RENDERERS[args.output](run))
    return 0


def _status(args: argparse.Namespace) -> int:
    from shakeout.gather.switch import is_enabled

    switch = Cluster(None).switch()
    enabled = is_enabled(switch)
    status = (switch or {}).get("status", {})
    active = status.get("activeRun")
    # Every holder (Namespace mode: one per namespace); activeRun names the first.
    holders = [h for h in status.get("activeRuns") or [] if isinstance(h, dict)]
    shown = [f"{h.get('namespace')}/{h.get('name')}" for h in holders]
    if active and f"{active['namespace']}/{active['name']}" not in shown:
        shown.insert(0, f"{active['namespace']}/{active['name']}")
    data = {
        "switchExists": switch is not None,
        "enabled": enabled,
        "concurrency": ((switch or {}).get("spec") or {}).get("concurrency", "Cluster"),
        "activeRun": active,
        "activeRuns": holders,
        "lastChange": status.get("lastChange"),
    }
    human = (
        f"experimenting: {'enabled' if enabled else 'disabled'}"
        + ("" if switch else " (no ChaosSwitch 'default': disabled until one is created)")
        + f"\nconcurrency:   {data['concurrency']}"
        + ("\nactive run:    " if len(shown) < 2 else "\nactive runs:   ")
        + (", ".join(shown) if shown else "none")
    )
    if change := status.get("lastChange"):
        human += f"\nlast flipped:  to {change['enabled']} by {change['by']} at {change['time']}"
    blackouts, described = blackout_status(switch, datetime.now(UTC))
    data.update(blackouts)
    human += described
    _emit(data, args.output, human)
    return 0


def blackout_status(switch: dict[str, Any] | None, now: datetime) -> tuple[dict[str, Any], str]:
    """The switch's blackout windows for `status`: each described, the one in force now and
    when the next begins (within a week); in words only when there are any."""
    from shakeout.engine.windows import blackout_in_force, describe, next_blackout
    from shakeout.gather.switch import blackout_windows_of

    windows = blackout_windows_of(switch)
    in_force = blackout_in_force(windows, now)
    upcoming = next_blackout(windows, now)
    described = [describe(w) for w in windows]
    data: dict[str, Any] = {
        "blackoutWindows": described,
        "blackoutInForce": in_force.name if in_force is not None else None,
        "nextBlackout": (
            {"window": upcoming[1].name, "start": upcoming[0].isoformat()} if upcoming else None
        ),
    }
    if not windows:
        return data, ""
    human = "\nblackouts:     " + "; ".join(described)
    if in_force is not None:
        human += f"\nin force now:  {in_force.name}: no run may execute"
    if upcoming is not None:
        human += f"\nnext blackout: {upcoming[1].name} at {upcoming[0]:%Y-%m-%d %H:%M} UTC"
    return data, human


def _blocking_holder(switch: dict[str, Any] | None, namespace: str) -> dict[str, Any] | None:
    """The run whose turn keeps a run of `namespace` from starting now: in Namespace mode a
    holder of that namespace (runs of other namespaces execute beside it), else any."""
    status = (switch or {}).get("status") or {}
    if ((switch or {}).get("spec") or {}).get("concurrency") != "Namespace":
        active: dict[str, Any] | None = status.get("activeRun")
        return active
    held = [*(status.get("activeRuns") or []), status.get("activeRun") or {}]
    return next((h for h in held if h.get("namespace") == namespace), None)


def _preview(args: argparse.Namespace) -> int:
    cluster = Cluster(args.namespace)
    name = args.experiment
    experiment = cluster.experiment(name)
    note = None
    if not args.no_refresh:
        token = f"{int(time.time())}-{secrets.token_hex(4)}"
        if cluster.request_preview(name, token):
            deadline = time.monotonic() + args.timeout
            while True:
                experiment = cluster.experiment(name)
                answered = ((experiment.get("status") or {}).get("preview") or {}).get("request")
                if answered == token:
                    break
                if time.monotonic() >= deadline:
                    note = f"the operator did not answer within {args.timeout:g}s: the last preview"
                    break
                time.sleep(0.3)
        else:
            note = "you may not annotate the Experiment to ask for a fresh one: the last preview"
    else:
        note = "--no-refresh: the last preview the operator wrote"
    preview = (experiment.get("status") or {}).get("preview")
    active = _blocking_holder(cluster.switch(), cluster.namespace)
    data = {"preview": preview, "activeRun": active, "note": note}
    _emit(data, args.output, render(experiment, active, note))
    if preview is None:
        return 1
    return 0 if preview.get("allowed") else 2


def _init(args: argparse.Namespace) -> int:
    """A ready Experiment from the library, with the user's names (cli/templates.py)."""
    from shakeout.cli import templates

    if args.list:
        sys.stdout.write(templates.listing())
        return 0
    if args.template is None:
        print("kubectl shakeout init: give a TEMPLATE, or --list", file=sys.stderr)
        return 2
    try:
        values = templates.Values(
            name=args.name,
            namespace=args.namespace,
            selector=None if args.selector is None else templates.parse_selector(args.selector),
            workload=None if args.workload is None else templates.parse_workload(args.workload),
            service=args.service,
            url=args.url,
            port=args.port,
            path=args.path,
            duration=args.duration,
            warm_up=args.warm_up,
            cool_down=args.cool_down,
            interval=args.interval,
        )
        text = templates.render(args.template, values)
        unused = templates.unused(args.template, values)
    except templates.TemplateError as err:
        print(f"kubectl shakeout init: {err}", file=sys.stderr)
        return 2
    for option in unused:
        flag = "--" + option.replace("_", "-")
        print(f"note: template {args.template} has no place for {flag}: ignored", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
    else:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl shakeout", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kubectl-shakeout {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help_text: str, namespaced: bool = True) -> Any:
        p = sub.add_parser(name, help=help_text)
        if namespaced:
            p.add_argument("-n", "--namespace", default=None, help="namespace (default: context)")
        p.set_defaults(func=func)
        return p

    p = command("run", _run, "run an experiment (the Run button)")
    p.add_argument("experiment")
    p.add_argument("--wait", "-w", action="store_true", help="follow the run and print its report")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="a dry run (spec.dryRun: true): every phase and check, nothing applied",
    )
    p.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    p = command("stop", _stop, "cancel a run (any authenticated user)")
    p.add_argument("run")
    p = command("findings", _findings, "record what the run taught the team")
    p.add_argument("run")
    p.add_argument("text")
    p.add_argument(
        "--action-required",
        choices=["yes", "no"],
        default=None,
        help="whether additional action is required",
    )
    command("stop-all", _stop_all, "disable experimenting and cancel every run", False)
    command("continue", _continue, "enable experimenting again", False)
    p = command("list", _list, "the Reports list: runs with phase and result")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    p = command("report", _report, "one run's report")
    p.add_argument("run")
    p.add_argument(
        "-o",
        "--output",
        choices=["markdown", "html", "junit", "json", "yaml"],
        default=None,
        help=(
            "a report to hand on: markdown, html (one self-contained page with a chart of "
            "each check), junit (a test case per check and attack, for CI gates), json or "
            "yaml (the run plus the computed report); default: text for the terminal"
        ),
    )
    p = command(
        "preview",
        _preview,
        "what a run of the experiment would touch now, and the rails' verdict (creates nothing)",
    )
    p.add_argument("experiment")
    p.add_argument(
        "--no-refresh",
        action="store_true",
        help="show the operator's last preview; do not ask for a fresh one (writes nothing)",
    )
    p.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for a fresh preview (30)"
    )
    p.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    p = command("status", _status, "the ChaosSwitch and the active run", False)
    p.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    p = command(
        "init",
        _init,
        "a ready Experiment from the library, with your names (--list shows the templates)",
    )
    p.description = (
        "Write a ready Experiment for a common incident (docs/examples.md), validated, with "
        "your names filled in. Apply it with kubectl apply -f, run it with kubectl shakeout run."
    )
    p.add_argument("template", nargs="?", help="the template (kubectl shakeout init --list)")
    p.add_argument("--list", action="store_true", help="list the templates, one line each")
    p.add_argument("--name", help="the Experiment's name (default: the template's)")
    p.add_argument(
        "--selector",
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="the labels of the pods to attack (default: app=web, or app=backend for the "
        "dependency-* templates)",
    )
    p.add_argument(
        "--workload",
        metavar="[KIND/]NAME",
        help="the Deployment (or statefulset/NAME) that the checks and attacks name (web)",
    )
    p.add_argument("--service", help="the Service of the HttpGet check (web)")
    p.add_argument("--port", type=int, help="a port the Service declares (80)")
    p.add_argument("--path", help="the path the HttpGet check GETs (/)")
    p.add_argument(
        "--url",
        help="the HttpGet check GETs this URL instead of --service/--port/--path: a Service "
        "as http://NAME.NAMESPACE.svc:PORT/PATH, or a host the admin allows",
    )
    p.add_argument("--duration", type=int, metavar="SECONDS", help="every attack's duration")
    p.add_argument("--warm-up", type=int, metavar="SECONDS", help="warmUpSeconds")
    p.add_argument("--cool-down", type=int, metavar="SECONDS", help="coolDownSeconds")
    p.add_argument(
        "--interval", type=int, metavar="SECONDS", help="every state check's intervalSeconds"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "init":
        # No cluster: not even the kubernetes client's import (a second of start-up).
        return _init(args)
    from kubernetes.client.exceptions import ApiException

    try:
        return int(args.func(args))
    except ApiException as err:
        try:
            message = json.loads(err.body or "{}").get("message") or err.reason
        except ValueError:
            message = err.reason
        print(f"Error from server ({err.reason}): {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
