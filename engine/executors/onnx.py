"""ONNX Runtime executor for sentence embeddings (the default: MiniLM on the CPU).

Tokenises the batch with ``tokenizers`` (padding to the batch's longest input), runs the session
with a fixed number of intra-op threads, mean-pools with the attention mask and L2-normalises.
Input buffers are allocated once per slot and reused (grown when a larger batch arrives): the
batch is copied into a slice of them, never re-allocated per call.

GPU route: ``providers`` may name ONNX Runtime's CUDA or TensorRT execution providers
(``onnxruntime-gpu``). ONNX Runtime silently falls back to the CPU when a provider cannot load,
so ``load`` checks ``session.get_providers()`` and fails loudly instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infergate.engine.executors.base import Executor, ExecutorError, Outputs
from infergate.engine.executors.ort_session import open_session
from infergate.engine.executors.spec import embedding_spec
from infergate.engine.models.embeddings import mean_pool_normalize

BATCH_MEMORY_BUDGET = 2 << 30
"""Bytes of activations one batch may take (per executor slot): the derived batch ceiling is
this divided by ``activation_bytes_per_item``."""
MAX_DERIVED_BATCH = 4096


def activation_bytes_per_item(max_tokens: int, dim: int) -> int:
    """Peak memory one item of ``max_tokens`` tokens adds to a batch (an estimate).

    ``(350 T^2 + 5300 T) * max(1, dim / 384)`` bytes. Measured on all-MiniLM-L6-v2 int8 (6
    layers, 12 heads, hidden 384), CPU provider, one batch of n items at exactly T tokens, peak
    RSS over the loaded session: 23.2 MB per item at T = 256 (n = 64; 19.0 MB at n = 16),
    6.1 MB at T = 128 (n = 64). The T^2 term is the attention scores and their softmax (6 * 12
    * T^2 * 4 B = 288 T^2 for one copy); the T term the hidden and feed-forward activations. ONNX
    Runtime keeps the arena after the batch, so this peak stays resident. Larger encoders are
    scaled by their hidden size, a rough proxy for their layers * heads.
    """
    t = max_tokens
    return int((350 * t * t + 5300 * t) * max(1.0, dim / 384))


class OnnxEmbeddingExecutor(Executor):
    """Outputs per item: ``(unit vector float32[dim], token count)``."""

    kind = "onnxruntime"

    def __init__(
        self,
        instances: int,
        model_path: str,
        tokenizer_path: str,
        intra_op_threads: int = 1,
        max_tokens: int = 256,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
    ) -> None:
        super().__init__(instances)
        self.model_path = model_path
        self.tokenizer_path = tokenizer_path
        self.intra_op_threads = intra_op_threads
        self.max_tokens = max_tokens
        self.providers = providers
        self.session: Any = None
        self.tokenizer: Any = None
        self.dim = 0
        self.vocab_size: int | None = None
        self._input_names: set[str] = set()
        self._buffers: list[dict[str, np.ndarray[Any, Any]]] = [{} for _ in range(instances)]

    def load(self) -> None:
        try:
            from tokenizers import Tokenizer  # noqa: PLC0415
        except ImportError as e:
            raise ExecutorError(f"onnxruntime executor needs {e.name}: pip install {e.name}") from e
        self.session = open_session(self.model_path, self.intra_op_threads, self.providers)
        self._input_names = {i.name for i in self.session.get_inputs()}
        self.dim = int(self.session.get_outputs()[0].shape[-1])
        try:
            tok = Tokenizer.from_file(self.tokenizer_path)
        except Exception as e:
            raise ExecutorError(f"cannot load tokenizer {self.tokenizer_path}: {e}") from e
        tok.no_padding()
        tok.enable_truncation(self.max_tokens)
        self.tokenizer = tok
        self.vocab_size = tok.get_vocab_size()
        self.spec = embedding_spec(self.dim, self.batch_limit())

    def batch_limit(self) -> int:
        """``BATCH_MEMORY_BUDGET`` over the activations of one item at ``max_tokens``: 88 for
        MiniLM at 256 tokens, 22 at 512."""
        per_item = activation_bytes_per_item(self.max_tokens, self.dim or 384)
        return max(1, min(MAX_DERIVED_BATCH, BATCH_MEMORY_BUDGET // per_item))

    def _buffer(self, slot: int, name: str, n: int, length: int) -> np.ndarray[Any, Any]:
        buf = self._buffers[slot].get(name)
        if buf is None or buf.shape[0] < n or buf.shape[1] < length:
            rows = max(n, buf.shape[0] if buf is not None else 0)
            buf = np.zeros((rows, self.max_tokens), dtype=np.int64)
            self._buffers[slot][name] = buf
        view = buf[:n, :length]
        view.fill(0)
        return view

    def encode(self, items: list[Any]) -> list[list[int]]:
        """Token ids per item: strings are tokenised, token lists are used as given."""
        texts = [(i, x) for i, x in enumerate(items) if isinstance(x, str)]
        ids: list[list[int]] = [[] for _ in items]
        if texts:
            for (i, _), enc in zip(
                texts, self.tokenizer.encode_batch([t for _, t in texts]), strict=True
            ):
                ids[i] = enc.ids
        for i, x in enumerate(items):
            if not isinstance(x, str):
                ids[i] = list(x)[: self.max_tokens]
        return ids

    def run(self, items: list[Any], slot: int) -> Outputs:
        ids = self.encode(items)
        n = len(ids)
        length = max(1, *(len(t) for t in ids))
        input_ids = self._buffer(slot, "input_ids", n, length)
        mask = self._buffer(slot, "attention_mask", n, length)
        for row, toks in enumerate(ids):
            input_ids[row, : len(toks)] = toks
            mask[row, : len(toks)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = self._buffer(slot, "token_type_ids", n, length)
        states = self.session.run(None, feeds)[0]
        vectors = mean_pool_normalize(states, mask)
        return [(vectors[i], len(toks)) for i, toks in enumerate(ids)]

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(
            dim=self.dim, intra_op_threads=self.intra_op_threads, providers=list(self.providers)
        )
        return d
