"""NetworkBlackhole and PacketLoss: one nftables table per fault in the target's netns."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from shakeout.agent.node.locate import Located
from shakeout.agent.node.netns import find_target, target_of
from shakeout.agent.node.system import FaultError, HostPaths, checked_int, in_netns, run
from shakeout.api.attacks import Direction

TABLE = re.compile(r"^shakeout_[0-9a-f]{12}$")
# Before conntrack (-200) and NAT (-100): dropped packets leave no conntrack entries,
# and the drop sees the pod's traffic before a sidecar's NAT redirects it to loopback.
PRIORITY = -300
_HOOKS = {
    Direction.INGRESS: (("ingress", "input", "iifname"),),
    Direction.EGRESS: (("egress", "output", "oifname"),),
    Direction.BOTH: (("ingress", "input", "iifname"), ("egress", "output", "oifname")),
}
_ABSENT = "No such file or directory"


def table_name(fault_id: str) -> str:
    return "shakeout_" + hashlib.sha256(fault_id.encode()).hexdigest()[:12]


def ruleset(table: str, direction: Direction, drop_percent: int) -> str:
    """The nft script of the fault: 100 percent is a blackhole. Loopback always works."""
    if not TABLE.fullmatch(table):
        raise FaultError(f"refusing nftables table name {table!r}")
    percent = checked_int(drop_percent, 1, 100, "drop percent")
    verdict = "drop" if percent == 100 else f"numgen random mod 100 < {percent} drop"
    chains = "".join(
        f"\tchain {chain} {{\n"
        f"\t\ttype filter hook {hook} priority {PRIORITY}; policy accept;\n"
        f'\t\t{interface} "lo" accept\n'
        f"\t\t{verdict}\n"
        "\t}\n"
        for chain, hook, interface in _HOOKS[Direction(direction)]
    )
    # Declare, delete, define: one transaction that replaces a leftover of the same name.
    return (
        f"table inet {table} {{\n}}\ndelete table inet {table}\ntable inet {table} {{\n{chains}}}\n"
    )


async def apply(
    fault_id: str, direction: Direction, drop_percent: int, located: Located, host: HostPaths
) -> dict[str, Any]:
    table = table_name(fault_id)
    target = target_of(located, host)
    script = ruleset(table, direction, drop_percent)
    result = await run(in_netns(target["netns"], ["nft", "-f", "-"]), stdin=script)
    if not result.ok:
        # nft -f is one transaction, so a refused script changed nothing.
        raise FaultError(f"nft refused the rules in {target['netns']}: {result.error}")
    return {
        "mechanism": "nftables",
        **target,
        "table": table,
        "direction": str(direction),
        "drop_percent": drop_percent,
    }


def provisional(fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
    return {"mechanism": "nftables", **target_of(located, host), "table": table_name(fault_id)}


async def rollback(record: Mapping[str, Any], host: HostPaths) -> None:
    table = record.get("table")
    if not isinstance(table, str) or not TABLE.fullmatch(table):
        raise FaultError(f"the rollback record names no shakeout table: {table!r}")
    netns = find_target(record, host)
    if netns is None:
        return  # the namespace is gone, and its rules with it
    result = await run(in_netns(netns, ["nft", "delete", "table", "inet", table]))
    if result.ok:
        return
    # nft says the table is absent; nsenter's own failures start with "nsenter:".
    if _ABSENT in result.stderr and "nsenter:" not in result.stderr:
        return
    if find_target(record, host) is None:
        return  # the namespace went away while we deleted
    raise FaultError(f"cannot delete nftables table {table} in {netns}: {result.error}")
