"""Apply and roll back one node-level fault on one located target.

Each node-level type of the catalogue (api/attacks.py) has a NodeFault in FAULTS: how to
apply it, the record to journal before applying, how to roll a record back, and which
probe of the node (capabilities.py) says whether it can run here. The parameters are
validated against the type's model in the catalogue before anything is done.

`apply` returns a JSON-serializable rollback record; `rollback` is idempotent: rolling
back twice, or something already gone (a deleted pod, a dead process), is a no-op.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from shakeout.agent.node import nft, processes, qdisc
from shakeout.agent.node.locate import Located
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.attacks import (
    CATALOGUE,
    AttackType,
    BandwidthLimitParameters,
    CpuStressParameters,
    Level,
    MemoryStressParameters,
    NetworkBlackholeParameters,
    NetworkDelayParameters,
    PacketLossParameters,
    ProcessKillParameters,
)

__all__ = ["FaultError", "apply", "parameters_of", "provisional_record", "rollback"]

FAULT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}$")
_DEFAULT_HOST = HostPaths()
_CPU_READY_SECONDS = 10.0
_MEMORY_MIB_PER_SECOND = 256  # a slow node still touches this many MiB a second


class Probe(StrEnum):
    """What a node must be able to do for a fault; capabilities.py probes each for real."""

    NFTABLES = "nftables"  # nft rules in a pod's network namespace
    TBF = "tbf"  # a tc tbf qdisc in a pod's network namespace
    NETEM = "netem"  # a tc netem qdisc in a pod's network namespace
    NSENTER = "nsenter"  # a process started in a pod's network namespace
    NOTHING = "nothing"  # nothing beyond finding the pod (the locator)


P = TypeVar("P", bound=BaseModel)


class NodeFault(ABC, Generic[P]):
    """The node agent's executor of one node-level attack type; P is its parameter model."""

    probe: Probe

    @abstractmethod
    async def apply(
        self, fault_id: str, parameters: P, located: Located, host: HostPaths
    ) -> dict[str, Any]:
        """Apply the fault; on failure, undo what was done and raise FaultError."""

    @abstractmethod
    def provisional(self, fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
        """A record that undoes whatever a half-done apply may have left."""

    @abstractmethod
    async def rollback(self, record: Mapping[str, Any], host: HostPaths) -> None:
        """Undo the fault of this record; a no-op when it is already gone."""


class _NftDrop(NodeFault[P]):
    """nftables in the target's network namespace drops a share of its packets."""

    probe = Probe.NFTABLES

    def provisional(self, fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
        return nft.provisional(fault_id, located, host)

    async def rollback(self, record: Mapping[str, Any], host: HostPaths) -> None:
        await nft.rollback(record, host)


class NetworkBlackhole(_NftDrop[NetworkBlackholeParameters]):
    async def apply(
        self,
        fault_id: str,
        parameters: NetworkBlackholeParameters,
        located: Located,
        host: HostPaths,
    ) -> dict[str, Any]:
        return await nft.apply(fault_id, parameters.direction, 100, located, host)


class PacketLoss(_NftDrop[PacketLossParameters]):
    async def apply(
        self, fault_id: str, parameters: PacketLossParameters, located: Located, host: HostPaths
    ) -> dict[str, Any]:
        return await nft.apply(fault_id, parameters.direction, parameters.percent, located, host)


class _Qdisc(NodeFault[P]):
    """A tc qdisc replaces the root qdisc of the target's interface."""

    def provisional(self, fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
        return qdisc.provisional(fault_id, located, host)

    async def rollback(self, record: Mapping[str, Any], host: HostPaths) -> None:
        await qdisc.rollback(record, host)


class BandwidthLimit(_Qdisc[BandwidthLimitParameters]):
    probe = Probe.TBF

    async def apply(
        self,
        fault_id: str,
        parameters: BandwidthLimitParameters,
        located: Located,
        host: HostPaths,
    ) -> dict[str, Any]:
        options = qdisc.tbf_options(parameters.rate_kbit, parameters.burst_kbyte)
        return await qdisc.apply(fault_id, options, located, host)


class NetworkDelay(_Qdisc[NetworkDelayParameters]):
    probe = Probe.NETEM

    async def apply(
        self, fault_id: str, parameters: NetworkDelayParameters, located: Located, host: HostPaths
    ) -> dict[str, Any]:
        options = qdisc.netem_options(parameters.delay_ms, parameters.jitter_ms)
        return await qdisc.apply(fault_id, options, located, host)


class _Stress(NodeFault[P]):
    """Stress processes in the target's network namespace and cgroup."""

    probe = Probe.NSENTER

    def provisional(self, fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
        return processes.provisional_stress(fault_id, located, host)

    async def rollback(self, record: Mapping[str, Any], host: HostPaths) -> None:
        await processes.rollback_stress(record, host)


class CpuStress(_Stress[CpuStressParameters]):
    async def apply(
        self, fault_id: str, parameters: CpuStressParameters, located: Located, host: HostPaths
    ) -> dict[str, Any]:
        return await processes.apply_stress(
            fault_id, parameters.workers, ["cpu"], located, host, ready_timeout=_CPU_READY_SECONDS
        )


class MemoryStress(_Stress[MemoryStressParameters]):
    async def apply(
        self, fault_id: str, parameters: MemoryStressParameters, located: Located, host: HostPaths
    ) -> dict[str, Any]:
        megabytes = parameters.megabytes
        # Ready once the memory is touched: a slow node needs longer for more of it.
        ready = _CPU_READY_SECONDS + megabytes / _MEMORY_MIB_PER_SECOND
        arguments = ["memory", "--megabytes", str(megabytes)]
        return await processes.apply_stress(
            fault_id, 1, arguments, located, host, ready_timeout=ready
        )


class ProcessKill(NodeFault[ProcessKillParameters]):
    probe = Probe.NOTHING

    async def apply(
        self, fault_id: str, parameters: ProcessKillParameters, located: Located, host: HostPaths
    ) -> dict[str, Any]:
        return await processes.kill_processes(
            parameters.signal, parameters.process_name, located, host
        )

    def provisional(self, fault_id: str, located: Located, host: HostPaths) -> dict[str, Any]:
        return {"mechanism": "signal", "undo": "nothing: ProcessKill is irreversible"}

    async def rollback(self, record: Mapping[str, Any], host: HostPaths) -> None:
        return None  # a signal cannot be taken back


# The fault of each node-level attack type (tests/unit/test_catalogue.py checks that these
# are exactly the catalogue's node-level types).
FAULTS: dict[AttackType, NodeFault[Any]] = {
    AttackType.CPU_STRESS: CpuStress(),
    AttackType.MEMORY_STRESS: MemoryStress(),
    AttackType.NETWORK_BLACKHOLE: NetworkBlackhole(),
    AttackType.PACKET_LOSS: PacketLoss(),
    AttackType.BANDWIDTH_LIMIT: BandwidthLimit(),
    AttackType.NETWORK_DELAY: NetworkDelay(),
    AttackType.PROCESS_KILL: ProcessKill(),
}

# The parameter model of each node-level type, from the catalogue.
MODELS: dict[AttackType, type[BaseModel]] = {
    kind: model
    for kind, d in CATALOGUE.items()
    if d.level is Level.NODE and (model := d.parameters_model) is not None
}


def checked_fault_id(fault_id: object) -> str:
    if not isinstance(fault_id, str) or not FAULT_ID.fullmatch(fault_id):
        raise FaultError(f"refusing fault id {fault_id!r}")
    return fault_id


def node_attack(attack_type: object) -> AttackType:
    try:
        kind = AttackType(str(attack_type))
    except ValueError:
        raise FaultError(f"unknown attack type {attack_type!r}") from None
    if kind not in FAULTS:
        raise FaultError(f"{kind} is not a node-level attack")
    return kind


def parameters_of(attack_type: AttackType, parameters: Mapping[str, Any] | None) -> Any:
    """The validated parameter model (camelCase JSON as in the Experiment, {} for defaults);
    None for a type that takes no parameters (and refuses any)."""
    kind = node_attack(attack_type)
    model = MODELS.get(kind)
    if model is None:
        if parameters:
            raise FaultError(f"{kind} takes no parameters")
        return None
    try:
        return model.model_validate(dict(parameters or {}))
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
    return await FAULTS[kind].apply(fault_id, parameters_of(kind, parameters), located, host)


def provisional_record(
    fault_id: str, attack_type: AttackType, located: Located, *, host: HostPaths = _DEFAULT_HOST
) -> dict[str, Any]:
    """A record that undoes whatever a half-done apply of this fault may have left.

    Journaled before applying, so that a keeper killed during apply leaves enough behind
    for the next keeper to roll back.
    """
    fault_id = checked_fault_id(fault_id)
    return FAULTS[node_attack(attack_type)].provisional(fault_id, located, host)


async def rollback(
    attack_type: AttackType, record: Mapping[str, Any], *, host: HostPaths = _DEFAULT_HOST
) -> None:
    """Undo the fault of this record; a no-op when it is already gone."""
    kind = node_attack(attack_type)
    if not isinstance(record, Mapping):
        raise FaultError("the rollback record is not an object")
    await FAULTS[kind].rollback(record, host)
