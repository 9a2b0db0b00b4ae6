"""What this node can do: each node-level attack type, supported or why not.

Probed for real, in scratch network namespaces that vanish with the probing command
(`unshare --net`), so that nothing on the node is touched. Not cached: kernel modules
and binaries may change while the agent runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never

from shakeout.agent.node import nft, qdisc
from shakeout.agent.node.faults import FAULTS, Probe
from shakeout.agent.node.system import FaultError, run
from shakeout.api.attacks import AttackType, Direction

# Each command's share of the probe's budget of 2 s; they run side by side.
_COMMAND_TIMEOUT_SECONDS = 1.5
_PROBE_TABLE = "shakeout_000000000000"


async def _reason(argv: Sequence[str], *, stdin: str | None = None) -> str | None:
    """None if argv succeeds, else its error."""
    try:
        result = await run(argv, stdin=stdin, timeout=_COMMAND_TIMEOUT_SECONDS)
    except FaultError as error:
        return str(error)
    return None if result.ok else result.error


def _scratch(argv: Sequence[str]) -> list[str]:
    return ["unshare", "--net", "--", *argv]


async def _nftables() -> str | None:
    # The rules of a real fault (both hooks, numgen), created and deleted.
    script = nft.ruleset(_PROBE_TABLE, Direction.BOTH, 30) + f"delete table inet {_PROBE_TABLE}\n"
    reason = await _reason(_scratch(["nft", "-f", "-"]), stdin=script)
    return None if reason is None else f"nftables cannot hold the fault's rules: {reason}"


async def _qdisc(options: Sequence[str]) -> str | None:
    reason = await _reason(_scratch(["tc", "qdisc", "add", "dev", "lo", "root", *options]))
    if reason is None:
        return None
    if "Specified qdisc kind is unknown" in reason:
        return f"the kernel lacks the {options[0]} qdisc: {reason}"
    return f"tc cannot add a {options[0]} qdisc: {reason}"


async def _nsenter() -> str | None:
    # Entering our own namespace needs what entering a pod's does (CAP_SYS_ADMIN), and
    # runs the interpreter that the stress processes use.
    own = f"/proc/{os.getpid()}/ns/net"
    reason = await _reason(["nsenter", f"--net={own}", "--", sys.executable, "-c", "pass"])
    return None if reason is None else f"cannot enter network namespaces: {reason}"


def _missing(*tools: str) -> str | None:
    absent = [tool for tool in tools if shutil.which(tool) is None]
    return f"not installed on this node: {', '.join(absent)}" if absent else None


@dataclass(frozen=True)
class _Reasons:
    """What the probes found: None where it works, else why not."""

    network: str | None
    nftables: str | None
    tbf: str | None
    netem: str | None


def _needs(probe: Probe, reasons: _Reasons) -> str | None:
    """Why this node cannot do what `probe` names, or None."""
    match probe:
        case Probe.NFTABLES:
            return _missing("nft") or reasons.network or reasons.nftables
        case Probe.TBF:
            return _missing("tc", "ip") or reasons.network or reasons.tbf
        case Probe.NETEM:
            return _missing("tc", "ip") or reasons.network or reasons.netem
        case Probe.NSENTER:
            return reasons.network
        case Probe.NOTHING:
            return None
        case _:  # mypy checks that every Probe has its case
            assert_never(probe)


async def probe(locator_ok: bool = True) -> dict[AttackType, str | None]:
    """For each node-level attack type (each fault of faults.FAULTS, by the probe it
    names): None if this node can run it, else why not."""
    nftables, tbf, netem, nsenter = await asyncio.gather(
        _nftables(),
        _qdisc(qdisc.tbf_options(1000, 32)),
        _qdisc(qdisc.netem_options(1, 0)),
        _nsenter(),
    )
    unshare = _missing("unshare")
    if unshare is not None:
        # Without unshare, the scratch namespace probes say nothing about the kernel.
        nftables = tbf = netem = f"cannot probe in a scratch network namespace: {unshare}"
    found = _Reasons(_missing("nsenter") or nsenter, nftables, tbf, netem)
    reasons = {kind: _needs(fault.probe, found) for kind, fault in FAULTS.items()}
    if not locator_ok:
        unusable = "the pod locator does not work on this node"
        return dict.fromkeys(reasons, unusable)
    return reasons
