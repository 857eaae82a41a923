"""Per-model priority queues and dynamic batching."""
