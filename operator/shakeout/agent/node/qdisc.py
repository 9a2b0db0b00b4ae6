"""BandwidthLimit (tbf) and NetworkDelay (netem): a root qdisc on the target's interfaces."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from shakeout.agent.node.locate import Located
from shakeout.agent.node.netns import find_target, target_of
from shakeout.agent.node.system import (
    FaultError,
    HostPaths,
    checked_ifname,
    checked_int,
    in_netns,
    run,
)

HANDLE = re.compile(r"^[0-9a-f]{1,4}:$")
# What a device has before anyone configured it: the kernel's default root qdisc.
_DEFAULT_HANDLE = "0:"
_NO_DEVICE = "Cannot find device"
_UNKNOWN_KIND = "Specified qdisc kind is unknown"


def qdisc_handle(fault_id: str) -> str:
    """A handle per fault (1..fffe), so that a rollback removes its own qdisc only."""
    major = int(hashlib.sha256(fault_id.encode()).hexdigest()[:8], 16) % 0xFFFE + 1
    return f"{major:x}:"


def tbf_options(rate_kbit: int, burst_kbyte: int) -> list[str]:
    rate = checked_int(rate_kbit, 8, 100_000_000, "rate_kbit")
    burst = checked_int(burst_kbyte, 2, 1_048_576, "burst_kbyte")
    return ["tbf", "rate", f"{rate}kbit", "burst", f"{burst}kb", "latency", "50ms"]


def netem_options(delay_ms: int, jitter_ms: int) -> list[str]:
    delay = checked_int(delay_ms, 1, 60_000, "delay_ms")
    jitter = checked_int(jitter_ms, 0, 60_000, "jitter_ms")
    return ["netem", "delay", f"{delay}ms", *([f"{jitter}ms"] if jitter else [])]


async def interfaces(netns: str) -> list[str]:
    """The non-loopback interfaces of the namespace."""
    result = await run(in_netns(netns, ["ip", "-j", "link", "show"]))
    if not result.ok:
        raise FaultError(f"cannot list the interfaces of {netns}: {result.error}")
    links = json.loads(result.stdout or "[]")
    return [
        checked_ifname(link.get("ifname"))
        for link in links
        if link.get("link_type") != "loopback" and "LOOPBACK" not in link.get("flags", [])
    ]


async def root_qdisc(netns: str, device: str) -> dict[str, Any] | None:
    """The root qdisc of the device, or None when the device is gone."""
    result = await run(in_netns(netns, ["tc", "-j", "qdisc", "show", "dev", device]))
    if not result.ok:
        if _NO_DEVICE in result.error:
            return None
        raise FaultError(f"cannot read the qdiscs of {device} in {netns}: {result.error}")
    for qdisc in json.loads(result.stdout or "[]"):
        if qdisc.get("root"):
            return dict(qdisc)
    return {"kind": "none", "handle": _DEFAULT_HANDLE}


async def _add_root(netns: str, device: str, handle: str, options: Sequence[str]) -> None:
    current = await root_qdisc(netns, device)
    if current is None:
        raise FaultError(f"interface {device} vanished from {netns}")
    if current.get("handle") == handle:
        verb = "replace"  # ours already, from an earlier attempt of this same fault
    elif current.get("handle") == _DEFAULT_HANDLE:
        # "add", not "replace": it fails instead of destroying a qdisc configured since.
        verb = "add"
    else:
        raise FaultError(
            f"interface {device} in {netns} already has a root qdisc "
            f"({current.get('kind')} {current.get('handle')}), e.g. another fault's; "
            "refusing to replace it"
        )
    argv = ["tc", "qdisc", verb, "dev", device, "root", "handle", handle, *options]
    result = await run(in_netns(netns, argv))
    if not result.ok:
        if _UNKNOWN_KIND in result.error:
            raise FaultError(f"the kernel lacks the {options[0]} qdisc: {result.error}")
        raise FaultError(f"tc refused the {options[0]} qdisc on {device}: {result.error}")


async def apply(
    fault_id: str, options: Sequence[str], located: Located, host: HostPaths
) -> dict[str, Any]:
    target = target_of(located, host)
    netns = target["netns"]
    handle = qdisc_handle(fault_id)
    devices = await interfaces(netns)
    if not devices:
        raise FaultError(f"{netns} has no network interface besides lo")
    record = {"mechanism": "tc", **target, "qdisc": options[0], "handle": handle, "devices": []}
    try:
        for device in devices:
            # Recorded before the change: a failure half-way must undo this device too.
            record["devices"].append(device)
            await _add_root(netns, device, handle, options)
    except BaseException as error:
        try:
            await rollback(record, host)
        except FaultError as undo_error:
            raise FaultError(f"{error}; undoing it failed too: {undo_error}") from error
        raise
    return record


def provisional(fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
    """Without devices: the rollback looks at every interface for this fault's handle."""
    return {"mechanism": "tc", **target_of(located, host), "handle": qdisc_handle(fault_id)}


async def rollback(record: Mapping[str, Any], host: HostPaths) -> None:
    handle = record.get("handle")
    if not isinstance(handle, str) or not HANDLE.fullmatch(handle) or handle == _DEFAULT_HANDLE:
        raise FaultError(f"the rollback record has no qdisc handle: {handle!r}")
    netns = find_target(record, host)
    if netns is None:
        return  # the namespace is gone, and its qdiscs with it
    recorded = record.get("devices")
    devices = await interfaces(netns) if recorded is None else list(recorded)
    for device in map(checked_ifname, devices):
        current = await root_qdisc(netns, device)
        if current is None or current.get("handle") != handle:
            continue  # the device is gone, or the qdisc is not (or no longer) ours
        argv = ["tc", "qdisc", "del", "dev", device, "root", "handle", handle]
        result = await run(in_netns(netns, argv))
        if result.ok or _NO_DEVICE in result.error or find_target(record, host) is None:
            continue
        raise FaultError(f"cannot delete the root qdisc of {device} in {netns}: {result.error}")
