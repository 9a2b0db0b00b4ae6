"""Network faults through a real keeper: the effect is there, then it is gone."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from shakeout.agent.node.capabilities import probe
from shakeout.agent.node.keeper_client import Keeper
from shakeout.agent.node.system import FaultError
from shakeout.api.attacks import NODE_LEVEL, AttackType
from tests.node.lab import (
    Netns,
    free_port,
    start_server,
    tcp_connects,
    tcp_throughput_kbit,
    udp_echoes,
    udp_received_share,
    udp_round_trip,
)


async def test_blackhole_cuts_tcp_and_udp_until_rolled_back(netns: Netns, keeper: Keeper) -> None:
    port = free_port()
    server = start_server(netns, port)
    try:
        assert tcp_connects(netns.inner_ip, port)
        assert udp_echoes(netns.inner_ip, port)

        record = await keeper.apply("bh", AttackType.NETWORK_BLACKHOLE, {}, netns.pod())
        assert netns.tables() == [record["table"]]
        assert not tcp_connects(netns.inner_ip, port)
        assert not udp_echoes(netns.inner_ip, port)
        # Loopback inside the pod keeps working.
        loopback = f"import socket; socket.create_connection(('127.0.0.1', {port}), 1)"
        netns.run(sys.executable, "-c", loopback)

        await keeper.rollback("bh")
        assert netns.tables() == []
        assert tcp_connects(netns.inner_ip, port)
        assert udp_echoes(netns.inner_ip, port)
    finally:
        server.kill()
        server.wait()


async def test_ingress_blackhole_leaves_egress_alone(netns: Netns, keeper: Keeper) -> None:
    await keeper.apply("in", "NetworkBlackhole", {"direction": "Ingress"}, netns.pod())
    assert udp_received_share(netns, 50) == 1.0  # from the pod out: fine
    port = free_port()
    server = start_server(netns, port)
    try:
        assert not tcp_connects(netns.inner_ip, port)
    finally:
        server.kill()
        server.wait()
    await keeper.rollback("in")


async def test_packet_loss_30_percent_egress(netns: Netns, keeper: Keeper) -> None:
    count = 2000
    parameters = {"percent": 30, "direction": "Egress"}
    await keeper.apply("loss", AttackType.PACKET_LOSS, parameters, netns.pod())
    during = udp_received_share(netns, count)
    await keeper.rollback("loss")
    after = udp_received_share(netns, count)
    print(
        f"\npacket loss 30%: {during:.1%} of {count} datagrams arrived; after rollback {after:.1%}"
    )
    # Binomial standard deviation: sqrt(0.3 * 0.7 / 2000) = 1.0 %; 5 points is 5 sigma.
    assert abs(during - 0.70) <= 0.05
    assert after >= 0.99
    assert netns.tables() == []


async def test_bandwidth_limit_caps_egress_throughput(netns: Netns, keeper: Keeper) -> None:
    rate = 4000
    record = await keeper.apply("bw", "BandwidthLimit", {"rateKbit": rate}, netns.pod())
    assert record["devices"] == [netns.inner_if]
    assert netns.root_qdisc()["kind"] == "tbf"
    capped = tcp_throughput_kbit(netns, skip=0.4, window=1.5)
    await keeper.rollback("bw")
    assert netns.root_qdisc()["kind"] == "noqueue"
    free = tcp_throughput_kbit(netns, skip=0.2, window=0.5)
    print(
        f"\nbandwidth limit {rate} kbit/s: measured {capped:.0f} kbit/s; after rollback {free:.0f}"
    )
    # TCP payload is ~95 % of what tbf counts (headers); tbf's bucket adds little.
    assert 0.80 * rate <= capped <= 1.05 * rate
    assert free >= 10 * rate


async def test_two_bandwidth_limits_on_one_pod_are_refused(netns: Netns, keeper: Keeper) -> None:
    pod = netns.pod()
    first = await keeper.apply("bw-1", "BandwidthLimit", {"rateKbit": 1000}, pod)
    with pytest.raises(FaultError, match="already has a root qdisc"):
        await keeper.apply("bw-2", "BandwidthLimit", {"rateKbit": 2000}, pod)
    assert netns.root_qdisc()["handle"] == first["handle"]  # the first one untouched
    assert await keeper.held() == ["bw-1"]


async def test_network_delay_where_the_kernel_has_no_netem(
    netns: Netns, keeper: Keeper, journal: Path
) -> None:
    reason = (await probe())[AttackType.NETWORK_DELAY]
    parameters = {"delayMs": 100}
    if reason is None:
        # A kernel with netem: the delay is real, then gone.
        port = free_port()
        server = start_server(netns, port)
        try:
            await keeper.apply("delay", "NetworkDelay", parameters, netns.pod())
            # Every echo is delayed; load can only add to a round trip, never take away.
            during = [udp_round_trip(netns.inner_ip, port, timeout=2) for _ in range(5)]
            await keeper.rollback("delay")
            after = [udp_round_trip(netns.inner_ip, port, timeout=2) for _ in range(5)]
            print(f"\nnetwork delay 100 ms: round trips {during}; after rollback {after}")
            assert all(t is not None and t >= 0.1 for t in during)
            # Gone: the best of five is below the delay (the rest may wait for a busy CPU).
            assert min((t for t in after if t is not None), default=2.0) < 0.1
        finally:
            server.kill()
            server.wait()
        return
    assert "netem" in reason
    assert "Specified qdisc kind is unknown" in reason
    with pytest.raises(FaultError, match="the kernel lacks the netem qdisc"):
        await keeper.apply("delay", AttackType.NETWORK_DELAY, parameters, netns.pod())
    # Nothing left behind: the qdisc, the keeper's state, the journal.
    assert netns.root_qdisc()["kind"] == "noqueue"
    assert await keeper.held() == []
    assert json.loads(journal.read_text())["faults"] == {}


async def test_probe_reports_every_node_level_type_quickly() -> None:
    started = time.monotonic()
    reasons = await probe()
    elapsed = time.monotonic() - started
    assert elapsed < 2.0
    assert set(reasons) == NODE_LEVEL
    supported = {kind for kind, reason in reasons.items() if reason is None}
    assert supported >= reasons.keys() - {AttackType.NETWORK_DELAY}
    unusable = await probe(locator_ok=False)
    assert all(reason and "locator" in reason for reason in unusable.values())


async def test_invalid_parameters_and_unknown_pods_are_refused(
    netns: Netns, keeper: Keeper
) -> None:
    with pytest.raises(FaultError, match="percent"):
        await keeper.apply("bad", "PacketLoss", {"percent": 0}, netns.pod())
    with pytest.raises(FaultError, match="not a node-level attack"):
        await keeper.apply("bad", "PodDelete", {}, netns.pod())
    gone = netns.pod().to_json() | {"annotations": {"shakeout.dev/netns": "no-such-netns"}}
    with pytest.raises(FaultError, match="does not exist on this node"):
        await keeper.apply("bad", "NetworkBlackhole", {}, gone)
    assert await keeper.held() == []
