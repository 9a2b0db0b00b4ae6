"""`kubectl shakeout`: the kubectl plugin (installed on PATH as kubectl-shakeout)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from shakeout import __version__
from shakeout.api.common import GROUP, VERSION
from shakeout.api.switch import SWITCH_NAME


def _custom_objects() -> Any:
    from kubernetes import client, config

    config.load_kube_config()
    return client.CustomObjectsApi()


def _print(data: dict[str, Any], output: str | None, human: str) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(human)


def _status(args: argparse.Namespace) -> int:
    from kubernetes.client.exceptions import ApiException

    api = _custom_objects()
    try:
        switch = api.get_cluster_custom_object(GROUP, VERSION, "chaosswitches", SWITCH_NAME)
    except ApiException as err:
        if err.status != 404:
            raise
        switch = None
    enabled = bool(switch and switch.get("spec", {}).get("enabled"))
    active = (switch or {}).get("status", {}).get("activeRun")
    data = {"switchExists": switch is not None, "enabled": enabled, "activeRun": active}
    human = (
        f"experimenting: {'enabled' if enabled else 'disabled'}"
        + ("" if switch else " (no ChaosSwitch 'default': disabled until one is created)")
        + "\nactive run: "
        + (f"{active['namespace']}/{active['name']}" if active else "none")
    )
    _print(data, args.output, human)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubectl shakeout", description=__doc__)
    parser.add_argument("--version", action="version", version=f"kubectl-shakeout {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="the ChaosSwitch and the active run")
    p.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
    p.set_defaults(func=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
