"""Batching decisions: pure functions of the queue's state and the time.

The Batcher asks ``decide`` whenever an executor slot is free and something is queued; the
answer is "send N items now" or "ask again at t". No clock is read here, so every policy is
unit-tested with plain numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from infergate.engine.config import BatchingConfig


@dataclass(frozen=True, slots=True)
class Decision:
    take: int
    """Items to dispatch now (0: nothing yet)."""
    wake_at: float | None = None
    """When to decide again if ``take`` is 0 (None: when the queue changes)."""


def decide(
    cfg: BatchingConfig, ready_items: int, head_items: int, oldest_enqueued: float, now: float
) -> Decision:
    """What a free executor slot should take.

    Args:
        cfg: the model's batching config.
        ready_items: queued items that may merge with the head request (same batch key).
        head_items: items left in the head request (highest priority, oldest).
        oldest_enqueued: enqueue time of the oldest request among ``ready_items``.
        now: the current time, same clock as ``oldest_enqueued`` (seconds).
    """
    if ready_items <= 0:
        return Decision(0)
    cap = cfg.max_batch_size
    if cfg.policy == "off":
        return Decision(min(head_items, cap))
    if cfg.policy == "adaptive":
        # No added delay: a free slot takes whatever is there. Under load the queue grows while
        # slots are busy, so the next free slot finds (and takes) a full batch.
        return Decision(min(ready_items, cap))
    # window (Triton's dynamic batcher)
    if ready_items >= cap:
        return Decision(cap)
    preferred = [p for p in cfg.preferred_batch_sizes if p <= ready_items]
    if preferred:
        return Decision(max(preferred))
    due = oldest_enqueued + cfg.max_queue_delay_us / 1e6
    if now >= due:
        return Decision(ready_items)
    return Decision(0, due)


# ---- token-budget batching (padding-aware) ---------------------------------------------------

SIMILAR = 0.5
"""Token-budget batches keep inputs of similar length together: every item of a batch is at
least this fraction of the batch's longest, so at least this fraction of the padded cost
(rows x longest) is real tokens."""


class Candidate(NamedTuple):
    """One queued request's untaken items, as the token planner sees them (a plain tuple
    ``(level, lengths, start)`` works too: the queue builds 256 of them per batch)."""

    level: int
    """Priority level (1 = highest)."""
    lengths: Sequence[int]
    """Token length of every item of the request (all of them, taken or not)."""
    start: int
    """First untaken item."""


def plan_token_batch(
    candidates: Sequence[tuple[int, Sequence[int], int]],
    max_items: int,
    max_tokens: int,
    single: bool = False,
) -> list[tuple[int, int]]:
    """The next batch under a token budget: ``(candidate index, items)`` pairs, each taking
    that many of the candidate's untaken items from its ``start`` on.

    ``candidates[0]`` is the head (the oldest request of the highest level); the rest follow in
    priority order, FIFO inside a level. The head is always in the batch, with as many of its
    items as fit (at least one: an item longer than ``max_tokens`` runs alone), so every request
    reaches a batch after at most one batch per request queued ahead of it. The rest is filled
    from the head's level first, then lower levels, nearest in length to the batch first (FIFO
    among lengths within x1.25 of each other), while the cost ``rows x longest`` stays within
    ``max_tokens``, rows within ``max_items``, and every item at least ``SIMILAR`` of the
    longest. With ``single`` only the head is taken from (batching off).
    """
    if not candidates or max_items <= 0:
        return []
    _, head_lengths, head_start = candidates[0]
    first = max(1, head_lengths[head_start])  # lengths count at least one token
    if first >= max_tokens:
        return [(0, 1)]  # alone: never hangs, never exceeds the budget with company
    take: dict[int, int] = {}
    # Only candidates whose next item is within [SIMILAR, 1/SIMILAR] x the head's first item
    # can join (the batch holds that item), so only they are sorted: nearest ratio first,
    # in quarter steps, FIFO inside a step.
    lo, hi = first * SIMILAR, first / SIMILAR
    near: list[tuple[int, int, int]] = []
    if not single:
        for i in range(1, len(candidates)):
            level, lengths, start = candidates[i]
            n = max(1, lengths[start])
            if lo <= n <= hi:
                near.append((level, 4 * n // first if n >= first else 4 * first // n, i))
        near.sort()
    rows, longest, shortest = 0, first, first
    for i in (0, *(i for _, _, i in near)):
        _, lengths, start = candidates[i]
        for j in range(start, len(lengths)):
            n = max(1, lengths[j])
            top, low = max(longest, n), min(shortest, n)
            if rows and ((rows + 1) * top > max_tokens or low < SIMILAR * top):
                break
            rows, longest, shortest = rows + 1, top, low
            take[i] = take.get(i, 0) + 1
            if rows >= max_items:
                break
        if rows >= max_items:
            break
    return sorted(take.items())


# ---- shares between priority levels (min_share) ----------------------------------------------


def pick_level(
    backlogged: Sequence[bool], credits: Sequence[float], shares: Sequence[float]
) -> int:
    """The level (0-based) a free slot serves next.

    Strict priority — the highest backlogged level — unless a lower backlogged level with a
    ``min_share`` is owed executor time (its credit is not negative, see
    :func:`charge_levels`); then the highest such level. Returns -1 when nothing is queued.
    """
    top = -1
    for i, b in enumerate(backlogged):
        if b:
            top = i
            break
    if top < 0:
        return -1
    for i in range(top + 1, len(backlogged)):
        if backlogged[i] and shares[i] > 0 and credits[i] >= 0:
            return i
    return top


def charge_levels(
    credits: Sequence[float],
    shares: Sequence[float],
    backlogged: Sequence[bool],
    used_s: Sequence[float],
) -> list[float]:
    """Credits after a batch that took ``used_s[i]`` seconds of executor time for level ``i``.

    While levels compete (two or more backlogged or served), each level with a share earns
    ``share x seconds`` of every batch and pays for its own part, so a level served whenever
    its credit is not negative gets exactly its share over time (one batch in ten for 0.1).
    A level without work banks nothing (credit capped at 0) but keeps a debt, so a trickle of
    lower-priority requests cannot jump the queue more than its share. Alone, nobody is
    charged: an idle box owes nothing.
    """
    total = sum(used_s)
    active = [b or u > 0 for b, u in zip(backlogged, used_s, strict=True)]
    out = list(credits)
    if sum(active) < 2 or total <= 0:
        return [c if b else min(c, 0.0) for c, b in zip(out, backlogged, strict=True)]
    for i, share in enumerate(shares):
        if share > 0 and active[i]:
            out[i] = max(out[i] + share * total - used_s[i], -total)
        if not backlogged[i]:
            out[i] = min(out[i], 0.0)
    return out
