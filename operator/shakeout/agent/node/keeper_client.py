"""The agent daemon's handle on its keeper process (the protocol: keeper_protocol)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shakeout.agent.node.keeper_protocol import (
    LINE_LIMIT,
    MODULE,
    READY,
    Op,
    checked_deadline,
    decode,
    encode,
)
from shakeout.agent.node.locate import LOCATORS, PodRef
from shakeout.agent.node.system import FaultError, HostPaths
from shakeout.api.attacks import AttackType

log = logging.getLogger("shakeout.agent.keeper")


def must_enter(target: str, own: str) -> bool:
    """Whether the keeper must enter the cgroup namespace `target`: not when the agent is
    in it already (a cgroup v1 node shares the host's with its containers), nor when the
    target cannot even be opened (a host process holding capabilities the agent lacks:
    the kernel refuses to let it be opened, so nsenter would fail too). Then the keeper
    stays in the agent's namespace; on a node where that one is private, stress cannot
    join a pod's cgroup and such an apply fails (never spills)."""
    try:
        theirs, mine = os.stat(target), os.stat(own)
    except PermissionError as err:
        log.warning(f"cannot open {target} ({err.strerror}): the keeper stays in the agent's own")
        return False
    return (theirs.st_dev, theirs.st_ino) != (mine.st_dev, mine.st_ino)


class Keeper:
    """The agent daemon's handle on its keeper process.

    Start it from the thread that lives as long as the agent (its event loop's thread):
    the keeper's PR_SET_PDEATHSIG fires when the thread that forked it exits. Call
    heartbeat() after every successful lease renewal, and use the lease duration as
    the deadline: an agent that cannot renew, or is frozen, loses its faults in time.
    """

    def __init__(
        self, process: asyncio.subprocess.Process, journal: Path, ready: Mapping[str, Any]
    ):
        self._process = process
        self.journal = journal
        self.recovered: list[str] = list(ready.get("recovered", []))
        self.unrecovered: list[str] = list(ready.get("unrecovered", []))
        # From the last heartbeat: what the keeper could not roll back, and why.
        self.unrecovered_errors: dict[str, str] = {}
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._seq = 0
        self._replies = asyncio.create_task(self._read_replies())

    @classmethod
    async def start(
        cls,
        *,
        journal: Path,
        deadline: float,
        locator: str = "runtime",
        proc_root: str = "/proc",
        netns_dir: str = "/run/netns",
        cgroup_root: str = "/sys/fs/cgroup",
        cgroup_namespace: str | None = None,
        start_timeout: float = 60.0,
        max_stress_workers: int | None = None,
        max_stress_mib: int | None = None,
        retry_seconds: float | None = None,
    ) -> Keeper:
        """Start the keeper; returns once it rolled back what its journal held.

        ValueError for an unknown locator or a deadline out of range; FaultError when
        the keeper does not start.

        cgroup_namespace: run the keeper in this cgroup namespace, e.g. the host's
        (f"{proc_root}/1/ns/cgroup") when the agent's container has a private one (the
        default on cgroup v2 nodes): cgroup v2 refuses to move a process into a cgroup
        outside the mover's cgroup namespace, so stress could not join the pod's cgroup.
        """
        if locator not in LOCATORS:
            raise ValueError(f"unknown locator {locator!r}")
        host = HostPaths(proc_root=proc_root, netns_dir=netns_dir, cgroup_root=cgroup_root)
        enter: list[str] = []
        if cgroup_namespace is not None:
            pid = cgroup_namespace.removeprefix(host.proc_root + "/").removesuffix("/ns/cgroup")
            if not (
                pid.isascii()
                and pid.isdigit()
                and host.proc(int(pid), "ns", "cgroup") == cgroup_namespace
            ):
                raise ValueError(f"not <proc root>/<pid>/ns/cgroup: {cgroup_namespace!r}")
            if must_enter(cgroup_namespace, host.proc(os.getpid(), "ns", "cgroup")):
                # nsenter execs the keeper: same pid, same parent, so PDEATHSIG still works.
                enter = ["nsenter", f"--cgroup={cgroup_namespace}", "--"]
        argv = [
            *enter,
            sys.executable, "-m", MODULE,
            "--journal", str(journal),
            "--deadline", repr(checked_deadline(float(deadline))),
            "--locator", locator,
            "--proc-root", proc_root,
            "--netns-dir", netns_dir,
            "--cgroup-root", cgroup_root,
            "--parent-pid", str(os.getpid()),
        ]  # fmt: skip
        if max_stress_workers is not None:
            argv += ["--max-stress-workers", str(int(max_stress_workers))]
        if max_stress_mib is not None:
            argv += ["--max-stress-mib", str(int(max_stress_mib))]
        if retry_seconds is not None:
            argv += ["--retry-seconds", repr(float(retry_seconds))]
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=LINE_LIMIT
        )
        assert process.stdout is not None
        try:
            line = await asyncio.wait_for(process.stdout.readline(), start_timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise FaultError(f"the keeper was not ready within {start_timeout:g} s") from None
        try:
            ready: dict[str, Any] | None = decode(line)
        except ValueError:
            ready = None
        if ready is None or ready.get("event") != READY:
            code = await process.wait()
            raise FaultError(f"the keeper did not start (exit code {code}; see its log)")
        return cls(process, journal, ready)

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process.returncode is None

    async def apply(
        self,
        fault_id: str,
        attack_type: AttackType | str,
        parameters: Mapping[str, Any] | None,
        pod: PodRef | Mapping[str, Any],
        *,
        not_after: float | None = None,
        timeout: float = 300.0,
    ) -> dict[str, Any]:
        """Apply the fault; its rollback record. FaultError with the keeper's message.

        pod: a PodRef, or its JSON form {"namespace", "name", "uid", "annotations"}.
        not_after: seconds since the epoch; the keeper rolls the fault back then on its own.
        """
        if not isinstance(pod, PodRef):
            pod = PodRef.from_json(pod)
        command: dict[str, Any] = {
            "op": Op.APPLY,
            "id": fault_id,
            "type": str(attack_type),
            "parameters": dict(parameters or {}),
            "pod": pod.to_json(),
        }
        if not_after is not None:
            command["notAfter"] = float(not_after)
        reply = await self._request(command, timeout)
        return dict(reply["record"])

    async def apply_batch(
        self, faults: Sequence[Mapping[str, Any]], *, timeout: float = 300.0
    ) -> list[dict[str, Any]]:
        """Apply several faults in one command; one result per fault, in order:
        {"id", "ok": true, "record"} or {"id", "ok": false, "error", "halted"?}.

        Each fault: {"id", "type", "parameters", "pod" (PodRef's JSON form), "notAfter"?}.
        FaultError when the keeper refuses the batch as a whole (or does not answer).
        """
        command = {"op": Op.APPLY_BATCH, "faults": [dict(fault) for fault in faults]}
        reply = await self._request(command, timeout)
        results = reply.get("results")
        if not isinstance(results, list) or len(results) != len(faults):
            raise FaultError("the keeper's reply to apply_batch has no result per fault")
        return [dict(result) for result in results]

    async def rollback_many(
        self, fault_ids: list[str], *, timeout: float = 300.0
    ) -> dict[str, str]:
        """Roll these faults back in one command (unknown ids are no-ops); the errors by
        id of those that stay held. FaultError when the keeper does not answer."""
        reply = await self._request(
            {"op": Op.ROLLBACK_MANY, "ids": list(fault_ids)}, timeout, any_reply=True
        )
        if reply.get("ok"):
            return {}
        errors = reply.get("errors")
        if not isinstance(errors, dict) or not errors:
            raise FaultError(str(reply.get("error") or "the keeper refused rollback_many"))
        return {str(key): str(value) for key, value in errors.items()}

    async def rollback(self, fault_id: str, *, timeout: float = 120.0) -> None:
        """Roll the fault back; a no-op when the keeper does not hold it."""
        await self._request({"op": Op.ROLLBACK, "id": fault_id}, timeout)

    async def heartbeat(self, *, timeout: float = 5.0) -> list[str]:
        """Tell the keeper the agent lives; the ids it holds (fewer after a lapse)."""
        reply = await self._request({"op": Op.HEARTBEAT}, timeout)
        unrecovered = reply.get("unrecovered") or {}
        if isinstance(unrecovered, dict):
            self.unrecovered_errors = {str(k): str(v) for k, v in unrecovered.items()}
        return [str(fault_id) for fault_id in reply.get("held", [])]

    async def exited(self) -> int:
        """Wait for the keeper process to end; its exit code."""
        return await self._process.wait()

    async def held(self, *, timeout: float = 30.0) -> list[str]:
        """The ids of the faults the keeper holds (op "list")."""
        reply = await self._request({"op": Op.LIST}, timeout)
        return [str(fault_id) for fault_id in reply.get("ids", [])]

    async def rollback_all(self, *, timeout: float = 300.0) -> None:
        await self._request({"op": Op.ROLLBACK_ALL}, timeout)

    async def stop(self, *, timeout: float = 120.0) -> None:
        """Roll everything back and end the keeper; FaultError if something stayed."""
        if self._process.returncode is None and self._process.stdin is not None:
            self._process.stdin.close()  # EOF: the keeper rolls back and exits
        try:
            code = await asyncio.wait_for(self._process.wait(), timeout)
        except TimeoutError:
            self._process.kill()
            code = await self._process.wait()
        await asyncio.gather(self._replies, return_exceptions=True)
        if code != 0:
            raise FaultError(
                f"the keeper (pid {self.pid}) exited with code {code}; what it could not "
                f"roll back stays in {self.journal} for the next keeper"
            )

    async def _request(
        self, command: Mapping[str, Any], timeout: float, *, any_reply: bool = False
    ) -> dict[str, Any]:
        """The keeper's reply; FaultError when it says not ok (unless any_reply)."""
        stdin = self._process.stdin
        if stdin is None or self._replies.done():
            raise FaultError(f"the keeper (pid {self.pid}) is not running")
        self._seq += 1
        seq = self._seq
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[seq] = future
        try:
            async with asyncio.timeout(timeout):
                stdin.write(encode({**command, "seq": seq}))
                await stdin.drain()
                reply = await future
        except TimeoutError:
            raise FaultError(
                f"the keeper did not answer {command['op']} within {timeout:g} s"
            ) from None
        except (BrokenPipeError, ConnectionResetError) as error:
            raise FaultError(f"the keeper (pid {self.pid}) is gone: {error}") from error
        finally:
            self._pending.pop(seq, None)
        if not reply.get("ok") and not any_reply:
            raise FaultError(str(reply.get("error") or f"the keeper refused {command['op']}"))
        return reply

    async def _read_replies(self) -> None:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            while line := await stdout.readline():
                try:
                    reply = decode(line)
                except ValueError:
                    log.warning("keeper wrote a line that is no JSON object: %r", line[:200])
                    continue
                seq = reply.get("seq")
                future = self._pending.get(seq) if isinstance(seq, int) else None
                if future is not None and not future.done():
                    future.set_result(reply)
                else:
                    log.warning("keeper said, unasked: %s", reply)
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(FaultError(f"the keeper (pid {self.pid}) exited"))
