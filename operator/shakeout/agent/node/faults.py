"""Apply and roll back one node-level fault on one located target.

`apply` returns a JSON-serializable rollback record; `rollback` is idempotent: rolling
back twice, or something already gone (a deleted pod, a dead process), is a no-op.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from shakeout.agent.node import nft, processes, qdisc
from shakeout.agent.node.locate import Located
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.attacks import (
    NODE_LEVEL,
    AttackType,
    BandwidthLimitParameters,
    CpuStressParameters,
    MemoryStressParameters,
    NetworkBlackholeParameters,
    NetworkDelayParameters,
    PacketLossParameters,
    ProcessKillParameters,
)

__all__ = ["FaultError", "apply", "parameters_of", "provisional_record", "rollback"]

FAULT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}$")
MODELS: dict[AttackType, type[BaseModel]] = {
    AttackType.CPU_STRESS: CpuStressParameters,
    AttackType.MEMORY_STRESS: MemoryStressParameters,
    AttackType.NETWORK_BLACKHOLE: NetworkBlackholeParameters,
    AttackType.PACKET_LOSS: PacketLossParameters,
    AttackType.BANDWIDTH_LIMIT: BandwidthLimitParameters,
    AttackType.NETWORK_DELAY: NetworkDelayParameters,
    AttackType.PROCESS_KILL: ProcessKillParameters,
}
_DEFAULT_HOST = HostPaths()
_CPU_READY_SECONDS = 10.0
_MEMORY_MIB_PER_SECOND = 256  # a slow node still touches this many MiB a second


def checked_fault_id(fault_id: object) -> str:
    if not isinstance(fault_id, str) or not FAULT_ID.fullmatch(fault_id):
        raise FaultError(f"refusing fault id {fault_id!r}")
    return fault_id


def node_attack(attack_type: object) -> AttackType:
    try:
        kind = AttackType(str(attack_type))
    except ValueError:
        raise FaultError(f"unknown attack type {attack_type!r}") from None
    if kind not in NODE_LEVEL:
        raise FaultError(f"{kind} is not a node-level attack")
    return kind


def parameters_of(attack_type: AttackType, parameters: Mapping[str, Any] | None) -> Any:
    """The validated parameter model (camelCase JSON as in the Experiment, {} for defaults)."""
    try:
        return MODELS[node_attack(attack_type)].model_validate(dict(parameters or {}))
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, problem['loc'])) or 'parameters'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise FaultError(f"invalid {attack_type} parameters: {problems}") from None


async def apply(
    fault_id: str,
    attack_type: AttackType,
    parameters: Mapping[str, Any] | None,
    located: Located,
    *,
    host: HostPaths = _DEFAULT_HOST,
) -> dict[str, Any]:
    """Apply the fault; on failure, undo what was done and raise FaultError."""
    fault_id = checked_fault_id(fault_id)
    kind = node_attack(attack_type)
    model = parameters_of(kind, parameters)
    if kind is AttackType.NETWORK_BLACKHOLE:
        return await nft.apply(fault_id, model.direction, 100, located, host)
    if kind is AttackType.PACKET_LOSS:
        return await nft.apply(fault_id, model.direction, model.percent, located, host)
    if kind is AttackType.BANDWIDTH_LIMIT:
        options = qdisc.tbf_options(model.rate_kbit, model.burst_kbyte)
        return await qdisc.apply(fault_id, options, located, host)
    if kind is AttackType.NETWORK_DELAY:
        options = qdisc.netem_options(model.delay_ms, model.jitter_ms)
        return await qdisc.apply(fault_id, options, located, host)
    if kind is AttackType.CPU_STRESS:
        return await processes.apply_stress(
            fault_id, model.workers, ["cpu"], located, host, ready_timeout=_CPU_READY_SECONDS
        )
    if kind is AttackType.MEMORY_STRESS:
        megabytes = model.megabytes
        ready = _CPU_READY_SECONDS + megabytes / _MEMORY_MIB_PER_SECOND
        arguments = ["memory", "--megabytes", str(megabytes)]
        return await processes.apply_stress(
            fault_id, 1, arguments, located, host, ready_timeout=ready
        )
    return await processes.kill_processes(model.signal, model.process_name, located, host)


def provisional_record(
    fault_id: str, attack_type: AttackType, located: Located, *, host: HostPaths = _DEFAULT_HOST
) -> dict[str, Any]:
    """A record that undoes whatever a half-done apply of this fault may have left.

    Journaled before applying, so that a keeper killed during apply leaves enough behind
    for the next keeper to roll back.
    """
    fault_id = checked_fault_id(fault_id)
    kind = node_attack(attack_type)
    if kind in (AttackType.NETWORK_BLACKHOLE, AttackType.PACKET_LOSS):
        return nft.provisional(fault_id, located, host)
    if kind in (AttackType.BANDWIDTH_LIMIT, AttackType.NETWORK_DELAY):
        return qdisc.provisional(fault_id, located, host)
    if kind in (AttackType.CPU_STRESS, AttackType.MEMORY_STRESS):
        return processes.provisional_stress(fault_id, located, host)
    return {"mechanism": "signal", "undo": "nothing: ProcessKill is irreversible"}


async def rollback(
    attack_type: AttackType, record: Mapping[str, Any], *, host: HostPaths = _DEFAULT_HOST
) -> None:
    """Undo the fault of this record; a no-op when it is already gone."""
    kind = node_attack(attack_type)
    if not isinstance(record, Mapping):
        raise FaultError("the rollback record is not an object")
    if kind in (AttackType.NETWORK_BLACKHOLE, AttackType.PACKET_LOSS):
        await nft.rollback(record, host)
    elif kind in (AttackType.BANDWIDTH_LIMIT, AttackType.NETWORK_DELAY):
        await qdisc.rollback(record, host)
    elif kind in (AttackType.CPU_STRESS, AttackType.MEMORY_STRESS):
        await processes.rollback_stress(record, host)
    # ProcessKill: nothing to undo.
