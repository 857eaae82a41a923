"""Fair sharing inside one priority level: a FIFO per tenant, served by deficit round robin.

Each tenant (an API key's name; "" for the anonymous client) with queued requests sits on a
ring. The tenant at the front has the turn: it is granted ``quantum x weight`` (the batch's
item cap, or its token budget for text models) when its turn starts, spends it on its own
requests in FIFO order (a request bigger than what is left is split and its rest goes to the
back of the tenant's FIFO, so one tenant's requests also interleave), and hands the turn on
when it has spent it or has nothing more under the batch's key. A tenant whose queue empties
leaves the ring and forgets its deficit (DRR's rule: no banking while idle). With one tenant
this is exactly the FIFO-with-split-rotation it replaces.

When the level is full, the arriving request of a tenant that holds less than the heaviest
tenant (queued requests / weight) pushes out the heaviest tenant's newest request that has not
started (Longest Queue Drop, as fq_codel drops from the fattest flow): a flooding tenant gets
the 429s, not the tenants behind it.

Not thread-safe: the owning Batcher's lock guards every call (through ``PriorityQueues``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infergate.engine.scheduler.queues import InferRequest


class FairLevel:
    """The queue of one priority level: requests per tenant, a DRR ring over tenants."""

    __slots__ = ("count", "deficit", "flows", "ring", "turn", "weights")

    def __init__(self) -> None:
        self.flows: dict[str, deque[InferRequest]] = {}
        """FIFO of queued (or partly taken) requests per tenant; no empty FIFO is kept."""
        self.ring: deque[str] = deque()
        """Tenants with queued requests; ``ring[0]`` has (or gets next) the turn."""
        self.deficit: dict[str, float] = {}
        """Items (tokens) each tenant may still take in its turn; negative: a debt."""
        self.weights: dict[str, float] = {}
        self.turn: str | None = None
        """The tenant whose turn is running (its quantum granted), if any."""
        self.count = 0
        """Queued requests (a split request counts once until its last part is taken)."""

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[InferRequest]:
        """Requests in service order: the tenant with the turn first, then the ring."""
        for tenant in self.ring:
            yield from self.flows[tenant]

    def append(self, req: InferRequest) -> None:
        tenant = req.tenant
        flow = self.flows.get(tenant)
        if flow is None:
            flow = self.flows[tenant] = deque()
            self.ring.append(tenant)
            self.deficit[tenant] = 0.0
        self.weights[tenant] = req.weight
        flow.append(req)
        self.count += 1

    def remove(self, req: InferRequest) -> None:
        """Take ``req`` out (cancel, deadline, demotion).

        Raises:
            ValueError: ``req`` is not queued here.
        """
        flow = self.flows.get(req.tenant)
        if flow is None:
            raise ValueError("not queued")
        flow.remove(req)
        self.count -= 1
        if not flow:
            self.drop(req.tenant)

    def clear(self) -> None:
        self.flows.clear()
        self.ring.clear()
        self.deficit.clear()
        self.weights.clear()
        self.turn = None
        self.count = 0

    def drop(self, tenant: str) -> None:
        """``tenant``'s FIFO is empty: it leaves the ring and forgets its deficit."""
        del self.flows[tenant]
        del self.deficit[tenant]
        del self.weights[tenant]
        if self.ring and self.ring[0] == tenant:
            self.ring.popleft()
        else:
            self.ring.remove(tenant)
        if self.turn == tenant:
            self.turn = None

    def end_turn(self) -> None:
        """The tenant with the turn hands it on (to the back of the ring)."""
        self.ring.rotate(-1)
        self.turn = None

    def current(self) -> str | None:
        """The tenant to serve next: the one with the turn unless it has spent its deficit."""
        if not self.ring:
            return None
        if self.turn is not None and self.deficit[self.turn] <= 0:
            self.end_turn()
        return self.ring[0]

    def begin(self, quantum: float) -> str:
        """The tenant to serve next, its turn started if it was not: a debt from taking past
        its deficit is carried over, but never more than half a quantum, so every turn can
        take something."""
        tenant = self.current()
        assert tenant is not None
        if self.turn != tenant:
            q = quantum * self.weights[tenant]
            self.deficit[tenant] = max(min(self.deficit[tenant], 0.0), -q / 2) + q
            self.turn = tenant
        return tenant

    def head(self) -> InferRequest | None:
        tenant = self.current()
        return None if tenant is None else self.flows[tenant][0]

    def push_out(self, tenant: str, weight: float) -> InferRequest | None:
        """Make room for a request of ``tenant`` in this full level: remove and return the
        newest not-started request of the heaviest other tenant (queued requests / weight),
        or None when ``tenant`` is itself the heaviest (then the newcomer is refused)."""
        mine = len(self.flows.get(tenant, ())) + 1
        heaviest, load = None, mine / weight
        for other, flow in self.flows.items():
            if other != tenant and len(flow) / self.weights[other] > load:
                heaviest, load = other, len(flow) / self.weights[other]
        if heaviest is None:
            return None
        flow = self.flows[heaviest]
        for i in range(len(flow) - 1, -1, -1):
            victim = flow[i]
            if victim.taken == 0:
                del flow[i]
                self.count -= 1
                if not flow:
                    self.drop(heaviest)
                return victim
        return None
