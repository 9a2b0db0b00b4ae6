"""The network namespace of a network fault: identity, the host guard, finding it again."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from shakeout.agent.node.locate import Located, NetnsId, netns_identity, resolve_netns
from shakeout.agent.node.system import FaultError, HostPaths, checked_int, checked_netns_path

# Enough other ways into the namespace to outlive a restarting container.
_MAX_FALLBACKS = 16


def host_netns_ids(host: HostPaths) -> set[NetnsId]:
    """The node's own network namespace(s): where the keeper and init live."""
    identities = set()
    for path in ("/proc/self/ns/net", os.path.join(host.proc_root, "1", "ns", "net")):
        try:
            identity = netns_identity(path)
        except PermissionError:
            continue  # init may be off limits (e.g. in a sandbox); our own namespace is not
        if identity is not None:
            identities.add(identity)
    return identities


def target_of(located: Located, host: HostPaths) -> dict[str, Any]:
    """The record part that finds the target namespace again at rollback, safely.

    The identity (st_dev, st_ino) guards against a path that names another namespace by
    then (a reused pid, a re-created name); the fallbacks are the pod's processes, which
    keep the namespace reachable when the recorded path is gone but the namespace lives.
    """
    netns = checked_netns_path(located.netns, host)
    identity = netns_identity(netns)
    if identity is None:
        raise FaultError(f"the target's network namespace {netns} is gone")
    if identity in host_netns_ids(host):
        # A hostNetwork pod: the fault would cut off the whole node, the agent included.
        raise FaultError(
            f"refusing: the target shares the node's network namespace ({netns}); "
            "network faults on hostNetwork pods would hit the whole node"
        )
    fallbacks = [host.proc(pid, "ns", "net") for pid in located.pids[:_MAX_FALLBACKS]]
    return {"netns": netns, "netns_id": list(identity), "netns_fallbacks": fallbacks}


def find_target(record: Mapping[str, Any], host: HostPaths) -> str | None:
    """The path to the recorded namespace now, or None when it is gone."""
    netns_id = record.get("netns_id")
    if not isinstance(netns_id, list) or len(netns_id) != 2:
        raise FaultError("the rollback record has no netns identity")
    identity = (
        checked_int(netns_id[0], 0, 2**64, "st_dev"),
        checked_int(netns_id[1], 0, 2**64, "st_ino"),
    )
    paths = [checked_netns_path(record.get("netns"), host)]
    paths += [checked_netns_path(path, host) for path in record.get("netns_fallbacks", [])]
    return resolve_netns(paths, identity)
