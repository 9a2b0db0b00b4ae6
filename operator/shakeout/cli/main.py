"""`shakeout`: the operator, the node agent, the local sandbox, CRD and example generation."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shakeout import __version__


def _crds(args: argparse.Namespace) -> int:
    from shakeout import crds, generated

    return generated.write_or_check(
        Path(args.output_dir), crds.render(), "shakeout.dev_*.yaml", check=args.check,
        what="CRDs (generated from the models)", make="make crds",
    )  # fmt: skip


def _examples(args: argparse.Namespace) -> int:
    from shakeout import generated
    from shakeout.cli import templates

    return generated.write_or_check(
        Path(args.output_dir), templates.examples(), "*.yaml", check=args.check,
        what="examples (the templates of `kubectl shakeout init`, operator/shakeout/cli/examples)",
        make="make examples",
    )  # fmt: skip


def _sandbox(args: argparse.Namespace) -> int:
    from shakeout.sandbox import binaries, realnode
    from shakeout.sandbox.cluster import Sandbox, SandboxError, main_log

    box = Sandbox(Path(args.dir) if args.dir else None)
    try:
        if args.action == "up":
            if args.real_node and os.geteuid() != 0:
                realnode.check_host()  # says why root is needed
            if not args.no_build and binaries.BUILD_SCRIPT.exists():
                binaries.build(real_node=args.real_node)
            box.up(nodes=args.nodes, log=main_log, real_node=args.real_node)
            print(box.kubeconfig())
        elif args.action == "down":
            box.down(log=main_log)
        elif args.action == "status":
            status = box.status()
            print(json.dumps(status, indent=2))
            return 0 if status["up"] else 1
        elif args.action == "kubeconfig":
            print(box.kubeconfig(args.user))
        elif args.action == "env":
            st = box.state()
            if st is None:
                raise SandboxError("the sandbox is not up: run `shakeout sandbox up`")
            print(f"export KUBECONFIG={box.kubeconfig(args.user)}")
            print(f"export PATH={Path(st.kubectl).parent}:$PATH")
    except SandboxError as err:
        print(f"shakeout sandbox {args.action}: {err}", file=sys.stderr)
        return 1
    return 0


def _operator(args: argparse.Namespace) -> int:
    from shakeout.operator import run_operator
    from shakeout.webhook_tls import check_client_ca

    if args.webhook_client_ca:
        try:
            check_client_ca(Path(args.webhook_client_ca))
        except ValueError as err:
            print(f"shakeout operator: {err}", file=sys.stderr)
            return 2
    return run_operator(
        namespaces=args.namespace,
        liveness=args.liveness,
        verbose=args.verbose,
        webhook=not args.no_webhook,
        webhook_addr=args.webhook_addr,
        webhook_port=args.webhook_port,
        webhook_host=args.webhook_host,
        cert_dir=args.webhook_cert_dir,
        webhook_client_ca=args.webhook_client_ca,
        webhook_service=args.webhook_service,
        protect_namespaces=args.protect_namespace,
        allow_check_hosts=args.allow_check_host,
        metrics=args.metrics,
        log_format=args.log_format,
        leader_elect=args.leader_elect,
        leader_lease_duration=args.leader_lease_duration,
        leader_renew_interval=args.leader_renew_interval,
        preview_interval=args.preview_interval,
    )


def _agent(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import logging

    from shakeout.agent.main import run_agent
    from shakeout.agent.options import AgentOptions

    if not args.node:
        print("shakeout agent: give --node or set NODE_NAME", file=sys.stderr)
        return 2
    if args.renew_interval >= args.lease_duration:
        print("shakeout agent: --renew-interval must be below --lease-duration", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    options = AgentOptions(
        node=args.node,
        namespace=args.namespace,
        lease_duration=args.lease_duration,
        renew_interval=args.renew_interval,
        locator=args.locator,
        journal=Path(args.journal),
        proc_root=args.proc_root,
        netns_dir=args.netns_dir,
        cgroup_namespace=args.cgroup_namespace,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_agent(options))
    return 0


def _seconds(value: str) -> float:
    """A number of seconds, 0 or more (argparse's error otherwise)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 <= seconds <= 86400:
        raise argparse.ArgumentTypeError(f"{value!r}: give 0 to 86400 seconds")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shakeout", description=__doc__)
    parser.add_argument("--version", action="version", version=f"shakeout {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    generated = (
        ("crds", _crds, "crds", "write crds/*.yaml from the API models"),
        (
            "examples",
            _examples,
            "deploy/examples",
            "write deploy/examples/ from the templates of `kubectl shakeout init`",
        ),
    )
    for command, func, directory, help_text in generated:
        p = sub.add_parser(command, help=help_text)
        p.add_argument(
            "--output-dir", default=directory, help=f"where to write (default: {directory})"
        )
        p.add_argument("--check", action="store_true", help="fail if the files differ (no write)")
        p.set_defaults(func=func)

    p = sub.add_parser("sandbox", help="a local real control plane on loopback")
    p.add_argument(
        "action", choices=["up", "down", "status", "kubeconfig", "env"], help="what to do"
    )
    p.add_argument("--user", default="admin", help="admin, alice (team-a), bob (team-b), carol")
    p.add_argument("--nodes", type=int, default=2, help="number of kwok fake nodes")
    p.add_argument("--dir", default=os.environ.get("SHAKEOUT_SANDBOX_DIR"), help="state dir")
    p.add_argument("--no-build", action="store_true", help="do not build missing binaries")
    p.add_argument(
        "--real-node",
        action="store_true",
        help="up: also one real node (containerd, kubelet, kube-proxy, CNI bridge, "
        "NetworkPolicy engine) on this host; root only (docs/sandbox.md)",
    )
    p.set_defaults(func=_sandbox)

    p = sub.add_parser("operator", help="run the operator against the current kubeconfig")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only these namespaces (default: all)",
    )
    p.add_argument("--liveness", default=None, help="e.g. http://0.0.0.0:8080/healthz")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--webhook-addr", default="127.0.0.1", help="address the webhook listens on")
    p.add_argument("--webhook-port", type=int, default=9443, help="webhook port (default 9443)")
    p.add_argument(
        "--webhook-host", default=None, help="host name the API server calls (default: addr)"
    )
    p.add_argument(
        "--webhook-cert-dir", default=None, help="where to write the webhook's TLS files"
    )
    p.add_argument(
        "--webhook-client-ca",
        default=None,
        metavar="FILE",
        help="PEM CA bundle: the webhook accepts only TLS clients with a certificate it signed "
        "(the API server's webhook client certificate); without it the webhook port is "
        "unauthenticated",
    )
    p.add_argument(
        "--webhook-service",
        default=None,
        metavar="NAMESPACE/NAME[:PORT]",
        help="in a cluster: the API server reaches the webhook through this Service",
    )
    p.add_argument(
        "--metrics",
        default=None,
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at http://ADDR:PORT/metrics",
    )
    p.add_argument(
        "--log-format",
        choices=["full", "plain", "json"],
        default="full",
        help="log lines as text (full, plain) or as JSON objects",
    )
    p.add_argument(
        "--protect-namespace",
        action="append",
        default=[],
        help="never attack this namespace (repeatable; the operator's own is always protected)",
    )
    p.add_argument(
        "--allow-check-host",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="HttpGet state checks may also GET this host (any port, or only PORT) besides the "
        "Services of the run's own namespace (repeatable; none by default)",
    )
    p.add_argument(
        "--leader-elect",
        action="store_true",
        help="run as one of several replicas: act only while holding the Lease shakeout-operator",
    )
    p.add_argument("--leader-lease-duration", type=float, default=4.0, help="seconds (default 4)")
    p.add_argument("--leader-renew-interval", type=float, default=1.0, help="seconds (default 1)")
    p.add_argument(
        "--preview-interval",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="refresh each Experiment's status.preview this often (default 60; 0: only when "
        "its spec changes or kubectl shakeout preview asks)",
    )
    p.add_argument(
        "--no-webhook",
        action="store_true",
        help="serve no admission webhooks (the operator still re-checks every run)",
    )
    p.set_defaults(func=_operator)

    p = sub.add_parser("agent", help="the node agent (node-level attacks on its node)")
    p.add_argument("--node", default=os.environ.get("NODE_NAME"), help="this node (NODE_NAME)")
    p.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", "shakeout-system"),
        help="namespace of the agents' Leases (default: POD_NAMESPACE or shakeout-system)",
    )
    p.add_argument("--lease-duration", type=float, default=6.0, help="seconds (default 6)")
    p.add_argument("--renew-interval", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument(
        "--locator",
        choices=["runtime", "netns-annotation"],
        default="runtime",
        help=(
            "how pods are found on the node: runtime (/proc and cgroups, real nodes) or "
            "netns-annotation (kwok and test nodes only: unsafe elsewhere)"
        ),
    )
    p.add_argument(
        "--journal",
        default="/var/lib/shakeout/journal.json",
        help="the keeper's journal of applied faults (a hostPath in the DaemonSet)",
    )
    p.add_argument("--proc-root", default="/proc", help="the host's /proc (default /proc)")
    p.add_argument("--netns-dir", default="/run/netns", help="netns-annotation: netns dir")
    p.add_argument(
        "--cgroup-namespace",
        default=None,
        help="cgroup v2 in a container: the host's cgroup namespace, e.g. /proc/1/ns/cgroup",
    )
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
