"""Inference requests and the per-model priority queues that hold them.

Not thread-safe on their own: the owning Batcher holds its lock around every call.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from infergate.engine.config import PrioritiesConfig
from infergate.engine.scheduler.fair import FairLevel
from infergate.engine.scheduler.policy import charge_levels, pick_level, plan_token_batch

if TYPE_CHECKING:
    from infergate.engine.executors.base import UpstreamCall

# Reasons carried by rejections: in the JSON error, the X-Infergate-Drop-Reason header, metrics.
QUEUE_FULL = "queue_full"
DEADLINE_EXCEEDED = "deadline_exceeded"
EXECUTOR_ERROR = "executor_error"
UNAVAILABLE = "unavailable"
CANCELLED = "client_disconnected"
SHUTTING_DOWN = "shutting_down"
MODEL_UNLOADED = "model_unloaded"
"""503: the model was unloaded while the request was queued (or just after it was looked up)."""


class Rejection(Exception):
    """A request the scheduler will not (or could not) run, with the reason and HTTP status."""

    def __init__(
        self, status: int, reason: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class InferRequest:
    """One client request: ``n`` items that may be split across batches and reassembled."""

    __slots__ = (
        "batch_items",
        "batch_requests",
        "compute_s",
        "deadline",
        "deliver",
        "demote_on_timeout",
        "dispatched_at",
        "done",
        "enqueued",
        "error",
        "finished",
        "items",
        "key",
        "lengths",
        "level",
        "loop",
        "lowered",
        "n",
        "outputs",
        "seq",
        "taken",
        "tenant",
        "timeout_s",
        "upstream",
        "weight",
    )

    def __init__(
        self,
        items: list[Any],
        key: Hashable,
        level: int,
        deliver: Callable[[InferRequest], None],
        timeout_s: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        lengths: list[int] | None = None,
    ) -> None:
        self.items = items
        self.n = len(items)
        self.lengths = lengths
        """Token length of each item (set before queueing for text models; None: unknown,
        each item counts as one token in a token budget)."""
        self.key = key
        self.level = level
        """Priority level, 1 = highest."""
        self.tenant = ""
        """Who sent it (the API key's name; "" = anonymous): fair sharing inside a level."""
        self.weight = 1.0
        """The tenant's fair-share weight (its key's ``weight``)."""
        self.lowered = b""
        """``b"1->2"`` when the key's ceiling lowered the asked level (a response header)."""
        self.deliver = deliver
        """Called once when the request has all outputs or an error: on ``loop`` (through
        ``call_soon_threadsafe``, one call per loop per batch), or directly if ``loop`` is None."""
        self.loop = loop
        self.timeout_s = timeout_s
        """Client-requested queue timeout (already checked against the level's policy)."""
        self.seq = 0
        self.enqueued = 0.0
        self.deadline: float | None = None
        self.demote_on_timeout = False
        self.taken = 0
        self.done = 0
        self.outputs: list[Any] = [None] * self.n
        self.error: Rejection | None = None
        self.finished = False
        # telemetry (of the batch that took this request's first items)
        self.dispatched_at = 0.0
        self.batch_items = 0
        self.batch_requests = 0
        self.compute_s = 0.0
        self.upstream: UpstreamCall | None = None
        """Gateway models: the replica and upstream time of that batch's call."""


Part = tuple[InferRequest, int, int]
"""A slice ``[start, end)`` of one request's items inside a batch."""


class PriorityQueues:
    """Queues per priority level, bounded, with deadlines; inside a level, tenants share by
    deficit round robin (``engine.scheduler.fair``); between levels, strict priority unless
    a level has a ``min_share`` (``policy.pick_level``)."""

    def __init__(self, priorities: PrioritiesConfig) -> None:
        self.priorities = priorities
        self.levels: list[FairLevel] = [FairLevel() for _ in range(priorities.levels)]
        self.shares = [priorities.level(i).min_share for i in range(1, priorities.levels + 1)]
        """Each level's ``min_share`` (0: strict priority)."""
        self.credits = [0.0] * priorities.levels
        """Executor seconds each level with a share is owed (``policy.charge_levels``)."""
        self.pushed_out = 0
        """Requests a full level refused after queueing them, to make room for a lighter
        tenant's (``FairLevel.push_out``)."""
        self._deadlines: list[tuple[float, int, InferRequest]] = []
        self._seq = itertools.count(1)
        self.items = 0
        """Queued items not yet taken by a batch, all levels."""
        self.level_items = [0] * priorities.levels
        """The same per level, so Retry-After costs O(levels), not O(queue), under the lock."""
        self.demotions = 0
        """Requests moved to the lowest level by an ``on_timeout = "delay"`` deadline."""

    def __len__(self) -> int:
        return sum(len(q) for q in self.levels)

    def depths(self) -> list[int]:
        return [len(q) for q in self.levels]

    def __iter__(self) -> Iterator[InferRequest]:
        for q in self.levels:
            yield from q

    def push(self, req: InferRequest, now: float) -> InferRequest | None:
        """Queue ``req`` at its level; returns the request pushed out to make room for it, if
        any (removed from the queue, not answered yet: the caller answers it 429).

        Each level is bounded by its own ``max_queue_size``, never exceeded. Priority order is
        strict, so under overload the lower levels fill up and refuse first while the higher
        ones keep being served: lower priorities shed first. Inside a full level, a tenant
        lighter than the heaviest one takes the place of that tenant's newest request.

        Raises:
            Rejection: 429 ``queue_full`` when its level is full of its own tenant's requests
                (or of lighter tenants').
        """
        cfg = self.priorities.level(req.level)
        queue = self.levels[req.level - 1]
        out = None
        if len(queue) >= cfg.max_queue_size:
            out = queue.push_out(req.tenant, req.weight)
            if out is None:
                raise Rejection(429, QUEUE_FULL, f"priority {req.level} queue is full")
            self.items -= out.n
            self.level_items[req.level - 1] -= out.n
            out.deadline = None
            self.pushed_out += 1
        req.seq = next(self._seq)
        req.enqueued = now
        timeout = cfg.timeout_us / 1e6 if cfg.timeout_us else None
        if req.timeout_s is not None and (timeout is None or req.timeout_s < timeout):
            timeout = req.timeout_s
        if timeout is not None:
            req.deadline = now + timeout
            req.demote_on_timeout = cfg.on_timeout == "delay" and req.timeout_s is None
            heapq.heappush(self._deadlines, (req.deadline, req.seq, req))
        queue.append(req)
        self.items += req.n
        self.level_items[req.level - 1] += req.n
        return out

    def items_ahead(self, level: int) -> int:
        """Queued items at ``level`` and above: what a request at ``level`` waits behind."""
        return sum(self.level_items[:level])

    def remove(self, req: InferRequest) -> bool:
        """Drop the parts of ``req`` not yet started (client gone). True if any were queued.

        Parts already running are not interrupted; the caller marks ``req`` finished so their
        outputs are discarded.
        """
        if req.finished or req.taken >= req.n:
            return False
        return self._remove(req)

    def remove_rest(self, req: InferRequest) -> None:
        """Drop what is left of a request that failed part-way (its other parts will not run)."""
        if req.taken < req.n:
            self._remove(req)

    def remove_all(self) -> list[InferRequest]:
        """Drop every queued request (and the queued rest of every split one): shutdown."""
        out = [req for q in self.levels for req in q]
        for q in self.levels:
            q.clear()
        self._deadlines.clear()
        self.items = 0
        self.level_items = [0] * len(self.levels)
        for req in out:
            req.deadline = None
        return out

    def _remove(self, req: InferRequest) -> bool:
        q = self.levels[req.level - 1]
        try:
            q.remove(req)
        except ValueError:
            return False
        self.items -= req.n - req.taken
        self.level_items[req.level - 1] -= req.n - req.taken
        req.deadline = None  # its heap entry is now stale
        return True

    def next_deadline(self) -> float | None:
        heap = self._deadlines
        while heap and heap[0][2].deadline != heap[0][0]:
            heapq.heappop(heap)  # stale: removed, dispatched or demoted
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[InferRequest]:
        """Handle deadlines that passed: demote (``delay``) or return them for a 504.

        A deadline covers the whole request: a split request whose deadline passes loses the
        parts not yet started (its running parts finish, their outputs are discarded). A request
        whose every part has started is no longer queued and has no deadline.
        """
        expired = []
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            deadline, _, req = heapq.heappop(heap)
            if req.deadline != deadline:
                continue  # stale entry: removed, fully dispatched or demoted
            lowest = self.levels[-1]
            room = len(lowest) < self.priorities.level(len(self.levels)).max_queue_size
            if req.demote_on_timeout and req.level < len(self.levels) and room:
                rest = req.n - req.taken
                self.levels[req.level - 1].remove(req)
                self.level_items[req.level - 1] -= rest
                self.level_items[-1] += rest
                req.level = len(self.levels)
                req.deadline = None
                self.levels[-1].append(req)
                self.demotions += 1
            else:
                self._remove(req)
                expired.append(req)
        return expired

    def pick(self) -> int:
        """The level (0-based) to serve next; -1 when nothing is queued."""
        return pick_level([bool(q) for q in self.levels], self.credits, self.shares)

    def head(self) -> InferRequest | None:
        """The request to serve next: the picked level's tenant with the turn, its oldest."""
        i = self.pick()
        return None if i < 0 else self.levels[i].head()

    def charge(self, used_s: Sequence[float]) -> None:
        """A batch used ``used_s[i]`` executor seconds for level ``i+1``: settle the shares."""
        if any(self.shares):
            backlogged = [bool(q) for q in self.levels]
            self.credits = charge_levels(self.credits, self.shares, backlogged, used_s)

    def _order(self) -> list[FairLevel]:
        """Levels in the order a batch fills from: the picked one, then by priority."""
        i = self.pick()
        if i <= 0:
            return self.levels
        return [self.levels[i], *self.levels[:i], *self.levels[i + 1 :]]

    def ready(self, key: Hashable, cap: int) -> tuple[int, float]:
        """Items (up to ``cap``) that could merge under ``key``, and the oldest enqueue time."""
        items = 0
        oldest = float("inf")
        for q in self.levels:
            for req in q:
                if req.key == key:
                    items += req.n - req.taken
                    oldest = min(oldest, req.enqueued)
                    if items >= cap:
                        return cap, oldest
        return items, oldest

    def take(self, key: Hashable, max_items: int, single: bool = False) -> list[Part]:
        """Remove up to ``max_items`` items under ``key``: the picked level first, then the
        others by priority; inside a level, tenants by deficit round robin (quantum
        ``max_items`` x weight), each tenant's requests FIFO.

        A request larger than what its tenant may take is split, and its rest goes to the back
        of its tenant's FIFO: the parts of a big request interleave with the requests queued
        behind it (each waits at most one batch per request ahead of it), while a request
        queued alone still fills every batch. With ``single``, only the head request is taken
        from (batching off).
        """
        parts: list[Part] = []
        left = max_items
        for level in self._order():
            left = self._fill(level, key, left, max_items, single, parts)
            if left == 0 or (single and parts):
                break
        return parts

    def _fill(
        self,
        level: FairLevel,
        key: Hashable,
        left: int,
        quantum: int,
        single: bool,
        parts: list[Part],
    ) -> int:
        """Deficit round robin over ``level``'s tenants until ``left`` items are taken or no
        tenant has any under ``key``; returns what is left. Bounded: every turn takes an item
        or counts towards one idle lap of the ring."""
        idle = 0
        while left > 0 and level.ring and idle < len(level.ring):
            tenant = level.begin(quantum)
            flow = level.flows[tenant]
            took = 0
            i = 0
            # Each request of the tenant gets at most an equal share of what is left of the
            # batch per pass, so a small request queued behind big ones rides the next batch
            # instead of waiting one batch per big request (chaos benchmark: a 1-input request
            # behind 2048-input ones); a request alone still fills the batch, and batching
            # ``off`` (single) still takes one request's items.
            share = left if single or not flow else math.ceil(left / min(len(flow), left))
            while i < len(flow) and left > 0 and level.deficit[tenant] > 0:
                req = flow[i]
                if req.key != key:
                    i += 1
                    continue
                start = req.taken
                end = min(
                    req.n, start + left, start + share, start + math.ceil(level.deficit[tenant])
                )
                parts.append((req, start, end))
                self._taken(req, end - start)
                level.deficit[tenant] -= end - start
                took += end - start
                left -= end - start
                del flow[i]
                if end == req.n:
                    req.deadline = None  # every part runs: deadlines apply while queued
                    level.count -= 1
                else:
                    flow.append(req)  # split: the rest waits its turn behind the others
                if single:
                    break
            if not flow:
                level.drop(tenant)  # its turn ends with its queue
            elif left == 0 or single:
                break  # the batch is full: the turn goes on, or ends at the next head()
            else:
                level.end_turn()
            if single and took:
                break
            idle = 0 if took else idle + 1
        return left

    def _taken(self, req: InferRequest, k: int) -> None:
        req.taken += k
        self.items -= k
        self.level_items[req.level - 1] -= k

    def take_tokens(
        self, key: Hashable, max_items: int, max_tokens: int, single: bool = False
    ) -> list[Part]:
        """Remove the next token-budget batch under ``key`` (``policy.plan_token_batch``).

        The head request (the picked level's tenant with the turn, its oldest) is always in it;
        the other candidates are the first ``LOOKAHEAD`` requests under ``key`` in service
        order (that level's ring, then the other levels by priority). Each tenant pays the
        tokens it got from its deficit (quantum ``max_tokens`` x weight), so the turn moves on
        once the head's tenant has had its share. As in ``take``, a request with items left
        over goes to the back of its tenant's FIFO.
        """
        order = self._order()
        if order[0]:
            order[0].begin(max_tokens)
        cands: list[InferRequest] = []
        for level in order:
            for req in level:
                if req.key == key:
                    cands.append(req)
                    if len(cands) >= LOOKAHEAD:
                        break
            if len(cands) >= LOOKAHEAD:
                break
        plan = plan_token_batch(
            [(r.level, r.lengths or _Ones(r.n), r.taken) for r in cands],
            max_items, max_tokens, single,
        )  # fmt: skip
        parts: list[Part] = []
        for i, k in plan:
            req = cands[i]
            lengths = req.lengths
            cost = sum(max(1, n) for n in lengths[req.taken : req.taken + k]) if lengths else k
            parts.append((req, req.taken, req.taken + k))
            self._taken(req, k)
            level = self.levels[req.level - 1]
            level.deficit[req.tenant] -= cost
            flow = level.flows[req.tenant]
            flow.remove(req)
            if req.taken < req.n:
                flow.append(req)  # the rest waits its turn behind the tenant's others
            else:
                req.deadline = None  # every part runs: deadlines apply while queued
                level.count -= 1
                if not flow:
                    level.drop(req.tenant)
        return parts


LOOKAHEAD = 256
"""Requests a token-budget batch is chosen among (the head and the next ones under its key):
bounds the work under the Batcher's lock."""


class _Ones(Sequence[int]):
    """Lengths of a request whose items were not measured: one token each."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [1] * len(range(*i.indices(self.n)))
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return 1
