"""Access-control changes made on both sides of a partition converge after the heal.

Five simulated nodes; a role with one grant exists everywhere, then the network splits
{n1, n2} | {n3, n4, n5}. Each side grants, revokes and hands out the role while the
other side is down in its view (so each change returns confirmed by its own side).
After the heal every node holds the same auth state: every grant and membership made on
either side is there, and the revoke holds.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from common.errors import Unavailable
from dynd import auth
from dynd.auth import Policy
from tests.sim.harness import Scenario, SimCluster, SimNode, settled_cluster, until
from tests.sim.network import LinkFaults

SCENARIO = Scenario(nodes=5, ring_size=16, faults=LinkFaults(), antientropy=False)


async def _admin(cluster: SimCluster, sim: SimNode, op: str, **fields: Any) -> dict[str, Any]:
    return await cluster.client_call("ops", sim.addr, op, **fields)


def _auth(sim: SimNode) -> auth.AuthState:
    assert sim.node is not None
    return sim.node.view.state.auth


def _sees_down(sim: SimNode, others: list[SimNode]) -> bool:
    assert sim.node is not None
    return all(not sim.node.liveness.is_up(other.id) for other in others)


async def test_grants_and_revokes_on_both_sides_converge(
        autojump_clock: trio.testing.MockClock) -> None:
    async with settled_cluster(SCENARIO, autojump_clock, "sim-auth-") as (cluster, sims):
        await until("rbac active", lambda: all(
            s.node is not None and "rbac" in s.node.view.state.features for s in sims))
        await _admin(cluster, sims[0], "role_create", name="app-user")
        await _admin(cluster, sims[0], "role_grant", name="app-user", perms=["get"],
                     bucket="app", prefix=b"A#")
        assert all(auth.role_grants(_auth(s), "app-user") for s in sims)  # confirmed

        left, right = sims[:2], sims[2:]
        cluster.network.partition([[s.addr for s in left], [s.addr for s in right]])
        await until("each side sees the other down", lambda: all(
            _sees_down(s, right) for s in left) and all(_sees_down(s, left) for s in right))
        await _admin(cluster, left[0], "role_grant", name="app-user", perms=["read"],
                     bucket="app", prefix=b"C#")
        await _admin(cluster, left[0], "role_revoke", name="app-user", perms=["get"],
                     bucket="app", prefix=b"A#")
        await _admin(cluster, left[1], "user_grant_role", user="bob", role="app-user")
        await _admin(cluster, right[0], "role_grant", name="app-user", perms=["write"],
                     bucket="app", prefix=b"D#")
        await _admin(cluster, right[1], "role_grant", name="app-user", perms=["get"],
                     bucket="app", prefix=b"A#")  # still granted on this side: no change
        await _admin(cluster, right[2], "user_grant_role", user="carol", role="app-user")
        assert Policy(_auth(right[0])).allows("carol", "get", "app", b"A#1") is not None

        cluster.network.heal()
        await until("one auth state everywhere", lambda: len(
            {auth.digest(_auth(s)) for s in sims}) == 1)
        for sim in sims:
            state = _auth(sim)
            assert [(g.ops, g.prefix) for g in auth.role_grants(state, "app-user")] == [
                (("get", "query"), b"C#"), (("put", "delete"), b"D#")]
            assert auth.users(state) == ["bob", "carol"]
            policy = Policy(auth.set_enabled(state, True, "n1"))
            assert policy.allows("bob", "get", "app", b"A#1") is None  # the revoke held
            assert policy.allows("carol", "put", "app", b"D#1") is not None
            assert policy.allows("bob", "query", "app", b"C#1") is not None


async def test_a_change_not_confirmed_by_a_reachable_member_is_exit_4(
        autojump_clock: trio.testing.MockClock) -> None:
    """Cut off before the detector notices: the change applies here, the error names the
    members that did not confirm, and gossip carries it to them after the heal."""
    async with settled_cluster(SCENARIO, autojump_clock, "sim-auth-") as (cluster, sims):
        await until("rbac active", lambda: all(
            s.node is not None and "rbac" in s.node.view.state.features for s in sims))
        cluster.network.partition([[sims[0].addr], [s.addr for s in sims[1:]]])
        with pytest.raises(Unavailable, match="not yet confirmed by: n") as refused:
            await _admin(cluster, sims[0], "role_create", name="late")
        assert refused.value.exit_code == 4
        assert auth.live_roles(_auth(sims[0])) == ["late"]
        cluster.network.heal()
        await until("the change reached every node", lambda: all(
            auth.live_roles(_auth(s)) == ["late"] for s in sims))
