"""From a validated request to the op that serves it: one table of ops, admission
(starting, stopping, authorisation), and each request counted from admission to answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import trio

from common import messages
from common.config import Config
from common.errors import DynError, Unavailable
from common.messages import Request
from dynd.cluster import ClusterView
from dynd.metrics import Stats
from dynd.security import authorize
from dynd.server import Peer, Reply, answered

OpHandler = Callable[[dict[str, Any], Peer], Awaitable[dict[str, Any]]]
# An op run without a task: takes the request (True) and replies once, now or from a
# callback, or declines it (False: the op's async handler takes it).
NowOp = Callable[[str, dict[str, Any], Peer, Reply], bool]


class Dispatcher:
    def __init__(self, node_id: str, view: ClusterView, stats: Stats, config: Config) -> None:
        self.node_id = node_id
        self.view = view
        self.stats = stats
        self.config = config
        self.ready = trio.Event()
        self.stopping = False  # set on SIGTERM: new requests are refused, in-flight ones finish
        self.inflight = 0
        self._handlers: dict[str, OpHandler] = {}
        self._now: dict[str, NowOp] = {}

    def register(self, owner: object, ops: Iterable[str], now_ops: Iterable[str] = ()) -> None:
        """Route each op to ``owner.op_<op>``, and each of ``now_ops`` to
        ``owner.now_<op>`` first (answer_now): one mechanism per module, one table."""
        for op in ops:
            self._handlers[op] = getattr(owner, "op_" + op)
        for op in now_ops:
            self._now[op] = getattr(owner, "now_" + op)

    def check_complete(self) -> None:
        """Every op of the protocol has a handler."""
        missing = (messages.CLIENT_OPS | messages.PEER_OPS) - set(self._handlers) - set(
            self._now)
        assert not missing, f"ops without a handler: {sorted(missing)}"

    async def handle(self, request: Request, peer: Peer) -> dict[str, Any]:
        with _Observed(self, request.op):
            if self.stopping:
                raise Unavailable(f"node {self.node_id} is stopping")
            if not self.ready.is_set() and request.op not in ("ping", "p_gossip"):
                with trio.move_on_after(self.config.limits.request_timeout):
                    await self.ready.wait()
                if not self.ready.is_set():
                    raise Unavailable(f"node {self.node_id} is starting: waiting for its seeds "
                                      f"{', '.join(self.config.seeds)} to recover its state")
            authorize(request, peer, self.config.tls, self.view.state.members,
                      self.view.policy())
            handler = self._handlers.get(request.op)
            if handler is not None:
                return await handler(request.fields, peer)
            result = await answered(partial(self._now[request.op], request.op,
                                            request.fields, peer))
            assert result is not None  # ops without a handler always take the request
            return result

    def answer_now(self, request: Request, peer: Peer, reply: Reply) -> bool:
        """The server's fast path: the ops that need no task of their own (replica reads
        and writes, ping, and gets and puts this node coordinates) are started from the
        reader loop and reply from callbacks. False for every other op, for a put this
        node must forward, and while starting or stopping (``handle`` says why)."""
        now = self._now.get(request.op)
        if now is None or self.stopping or not self.ready.is_set():
            return False
        observed = _Observed(self, request.op)

        def replied(result: dict[str, Any] | None, error: Exception | None) -> None:
            observed.end(error)
            reply(result, error)

        try:
            authorize(request, peer, self.config.tls, self.view.state.members,
                      self.view.policy())
            if now(request.op, request.fields, peer, replied):
                return True
        except Exception as exc:  # noqa: BLE001 - the error reply, as handle would raise it
            replied(None, exc)
            return True
        observed.discard()
        return False

    async def drain(self, grace: float) -> int:
        """Refuse new requests and give in-flight ones up to `grace` seconds to finish.

        Returns how many were still running when the grace period ended (they fail).
        """
        self.stopping = True
        with trio.move_on_after(grace):
            while self.inflight:
                await trio.sleep(0.01)
        return self.inflight


class _Observed:
    """One request from admission to answer: counted in flight (drain waits for it) and,
    when it ends, its latency and outcome (ok, an error code, internal) go to the stats."""

    __slots__ = ("dispatcher", "op", "start")

    def __init__(self, dispatcher: Dispatcher, op: str) -> None:
        self.dispatcher, self.op = dispatcher, op
        self.start = trio.current_time()
        dispatcher.inflight += 1

    def discard(self) -> None:
        """The request went elsewhere after all (a task): not counted here."""
        self.dispatcher.inflight -= 1

    def end(self, error: BaseException | None) -> None:
        self.dispatcher.inflight -= 1
        outcome = ("ok" if error is None else error.code if isinstance(error, DynError)
                   else "internal")
        self.dispatcher.stats.observe(self.op, outcome, trio.current_time() - self.start)

    def __enter__(self) -> _Observed:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: Any) -> None:
        self.end(error)
