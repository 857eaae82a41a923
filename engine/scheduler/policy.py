"""Batching decisions: pure functions of the queue's state and the time.

The Batcher asks ``decide`` whenever an executor slot is free and something is queued; the
answer is "send N items now" or "ask again at t". No clock is read here, so every policy is
unit-tested with plain numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import BatchingConfig


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
