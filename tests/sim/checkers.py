"""Invariants a healed cluster must satisfy, checked against what the clients did.

The clients address plain keys and items (a key and a sort key, `Item`); each item is
checked as a key of its own. Convergence (`divergence`): every node up with the same
cluster state, no transfer pending, every hint delivered, and all primaries of every key
holding identical DVV sets. Then `check_history`, on the converged value of every key:

- carts are grow-only sets (never deleted): the causal history of every acknowledged
  write is contained in the final one (the acknowledged context is dominated by the
  final join), and every acknowledged element is in the union of the final siblings;
- on every key, a value that an acknowledged write superseded (its client read it
  and wrote with that context) is never live again: no deleted value reappears;
- on the put-and-delete keys, where tombstones are reaped and history restarts, an
  acknowledged value is live at the end or some later write read it (it was
  superseded, not lost).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from common import dvvset
from common.dvvset import DVVSet
from common.ring import partition_of
from dynd import membership

if TYPE_CHECKING:
    from tests.sim.harness import History, SimNode

BUCKET = "default"


Item = tuple[bytes, bytes | None]  # (key, sort key or None): what the clients address


def _replicas(nodes: list[SimNode], key: bytes) -> tuple[int, list[str]]:
    node = next(n.node for n in nodes if n.node is not None)
    partition = partition_of(BUCKET, key, node.view.state.ring_size)
    n = node.view.routing().quorums(BUCKET).n
    return partition, node.view.routing().primaries(partition, n)


def _copies(nodes: list[SimNode], item: Item) -> dict[str, DVVSet | None]:
    key, sk = item
    partition, primaries = _replicas(nodes, key)
    by_id = {n.id: n.node for n in nodes if n.node is not None}
    return {p: by_id[p].replica.get(partition, BUCKET, key, None, sk)
            for p in primaries if p in by_id}


def _name(item: Item) -> str:
    key, sk = item
    return repr(key) if sk is None else f"{key!r}/{sk!r}"


def _same(a: DVVSet | None, b: DVVSet | None) -> bool:
    return a is b is None or (a is not None and b is not None and dvvset.equal(a, b))


def divergence(nodes: list[SimNode], keys: list[Item]) -> list[str]:
    """Why the cluster has not converged yet; empty once it has."""
    down = [n.id for n in nodes if n.node is None]
    if down:
        return [f"nodes down: {down}"]
    problems = []
    states = {n.id: membership.digest(n.node.view.state) for n in nodes if n.node is not None}
    if len(set(states.values())) > 1:
        epochs = {n.id: n.node.view.state.epoch for n in nodes if n.node is not None}
        problems.append(f"cluster states differ (epochs {epochs})")
    for n in nodes:
        assert n.node is not None
        if membership.pending_transfers(n.node.view.state):
            problems.append(f"{n.id}: transfers pending")
        if hints := n.node.storage.hint_counts():
            problems.append(f"{n.id}: undelivered hints {hints}")
    for item in keys:
        copies = _copies(nodes, item)
        first = next(iter(copies.values()))
        if not all(_same(first, c) for c in copies.values()):
            problems.append(f"replicas of {_name(item)} differ: "
                            + ", ".join(f"{node}={_describe(c)}" for node, c in copies.items()))
    return problems


def leftover_cursors(nodes: list[SimNode]) -> list[str]:
    """Transfer pull cursors a node still keeps once no transfer is pending (converged)."""
    return [f"{n.id}: transfer cursors left {names}" for n in nodes if n.node is not None
            if (names := n.node.storage.meta_names("xfer:"))]


def _describe(clock: DVVSet | None) -> str:
    if clock is None:
        return "absent"
    return f"{dvvset.join(clock)}/{len(dvvset.values(clock))} siblings"


def final_clocks(nodes: list[SimNode], keys: list[Item]) -> dict[Item, DVVSet | None]:
    """The converged value of every key (its primaries agree, see `divergence`)."""
    return {key: next(iter(_copies(nodes, key).values())) for key in keys}


def encode_value(wid: str, elements: frozenset[str]) -> bytes:
    """A cart value: the id of the write that made it, and the cart's elements."""
    return f"{wid}|{','.join(sorted(elements))}".encode()


def decode_value(value: bytes) -> tuple[str, frozenset[str]]:
    wid, _, elements = value.decode().partition("|")
    return wid, frozenset(e for e in elements.split(",") if e)


def _live(clock: DVVSet | None) -> dict[str, frozenset[str]]:
    if clock is None:
        return {}
    return dict(decode_value(s.value) for s in dvvset.live_values(clock) if s.value is not None)


def check_history(history: History, finals: dict[Item, DVVSet | None]) -> list[str]:
    """Every violation of the invariants above, one line each."""
    violations = []
    read_by: dict[str, list[str]] = {}
    for write in history.writes.values():
        for wid in write.seen_values:
            read_by.setdefault(wid, []).append(write.wid)
    carts = set(history.cart_keys)
    for write in history.writes.values():
        if not write.acked:
            continue
        final = finals[write.key]
        live = _live(final)
        for wid in sorted(write.seen_values & set(live)):
            violations.append(f"{_name(write.key)}: {wid} came back after acknowledged "
                              f"{write.kind} {write.wid} superseded it")
        if write.key in carts:
            acked = dvvset.decode_context(write.ack_context)
            have = dvvset.join(final) if final is not None else {}
            lost = {a: c for a, c in acked.items() if have.get(a, 0) < c}
            if lost:
                violations.append(f"{_name(write.key)}: history of acknowledged {write.wid} "
                                  f"lost: {lost} not in the final {have}")
            elements = frozenset().union(*live.values())
            if write.wid not in elements:
                violations.append(f"{_name(write.key)}: acknowledged element {write.wid} lost")
        elif write.kind == "put" and write.wid not in live and write.wid not in read_by:
            violations.append(f"{_name(write.key)}: acknowledged {write.wid} lost "
                              "(not live, and no later write read it)")
    return violations
