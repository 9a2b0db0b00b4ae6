"""`shakeout agent`: the node agent's process, its keeper started first and stopped last."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from shakeout.agent.daemon import NodeAgent
from shakeout.agent.lease import FatalError
from shakeout.agent.node.capabilities import probe
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.options import AgentOptions
from shakeout.kube.client import Api, Obj
from shakeout.kube.errors import KubeError
from shakeout.kube.resources import NODES

log = logging.getLogger("shakeout.agent")

# Exit code when the keeper died or stopped answering: the kubelet restarts the agent.
KEEPER_LOST_EXIT = 3
# Exit code when the agent refuses to start as configured (a restart does not help).
REFUSED_EXIT = 2
# kwok marks the nodes it fakes so; nothing else but an admin writes a node's annotations.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


def locator_refusal(locator: str, node_name: str, node: Obj | None) -> str | None:
    """Why the agent must not start with this locator on this node, or None. The
    netns-annotation locator takes a pod's network namespace from an annotation the team
    writes: on a real node that would let a team name any network namespace of the host,
    so it runs on kwok's fake nodes only (SEC-25)."""
    if locator != "netns-annotation":
        return None
    annotations = ((node or {}).get("metadata") or {}).get("annotations") or {}
    if annotations.get(KWOK_NODE_ANNOTATION) == "fake":
        return None
    return (
        f"the netns-annotation locator is for test nodes only, and node {node_name} is not "
        f"one (no annotation {KWOK_NODE_ANNOTATION}=fake): use --locator=runtime"
    )


async def read_node(api: Api, name: str) -> Obj | None:
    try:
        return await api.get(NODES, None, name)
    except KubeError as err:
        log.error(f"cannot read node {name}: {err}")
        return None  # refused then: a node it cannot read is not known to be a test node


async def run_agent(options: AgentOptions) -> None:
    api = Api(request_timeout=max(1.0, options.renew_interval))
    if options.locator != "runtime":
        node = await read_node(api, options.node)
        if (refusal := locator_refusal(options.locator, options.node, node)) is not None:
            log.critical(refusal)
            raise SystemExit(REFUSED_EXIT)
    capabilities = {str(k): v for k, v in (await probe()).items()}
    options.journal.parent.mkdir(parents=True, exist_ok=True)
    keeper = await Keeper.start(
        journal=options.journal,
        deadline=options.lease_duration,
        locator=options.locator,
        proc_root=options.proc_root,
        netns_dir=options.netns_dir,
        cgroup_namespace=options.cgroup_namespace,
        max_stress_workers=options.max_stress_workers,
        max_stress_mib=options.max_stress_mib,
        retry_seconds=options.retry_seconds,
    )
    if keeper.unrecovered:
        log.error(f"the keeper could not roll back (retried on a timer): {keeper.unrecovered}")
    agent = NodeAgent(options, api, keeper, capabilities)
    log.info(f"node agent for {options.node} (pid {os.getpid()}, keeper {keeper.pid})")
    # A stop (the kubelet's SIGTERM) rolls back every fault before the process ends.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    fatal: FatalError | None = None
    try:
        await agent.run()
    except asyncio.CancelledError:
        log.info("stopping: rolling back every fault of this node")
    except FatalError as err:
        log.critical(f"exiting, so that a new agent and keeper take over: {err}")
        fatal = err
    finally:
        agent.stopping.set()
        if fatal is None:
            await keeper.stop()
        else:
            with contextlib.suppress(Exception):
                await keeper.stop(timeout=10.0)
    if fatal is not None:
        raise SystemExit(KEEPER_LOST_EXIT)
