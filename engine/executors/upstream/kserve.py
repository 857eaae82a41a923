"""Tensors through a KServe v2 upstream (``executor = "kserve"``, task ``tensor``): the rows of
many client requests concatenated along dimension 0 into one upstream call with binary tensors,
the answer split back per row.

The model's ``spec`` is the upstream's own metadata (``GET /v2/models/{upstream_model}``), read
at load from the first healthy replica, so the APIs validate requests and publish metadata
exactly as for a local model. Items are what ``spec.to_items`` makes: one row per item (a
tuple of that row of every input) for a batched model (dimension 0 dynamic everywhere), one
whole-tensor item for an unbatched one (one upstream call per item).
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from infergate.engine.executors.base import ExecutorError, Outputs
from infergate.engine.executors.spec import (
    Array,
    ModelSpec,
    SpecError,
    TensorSpec,
    batch_dynamic,
    numpy_dtype,
)
from infergate.engine.executors.upstream.errors import UPSTREAM_ERROR, UpstreamError
from infergate.engine.executors.upstream.executor import BatchUpstreamExecutor

log = logging.getLogger("infergate.upstream")

BINARY_HEADERS = {"Content-Type": "application/octet-stream", "Accept": "application/json"}


class _Tensor(msgspec.Struct):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class _Answer(msgspec.Struct):
    outputs: list[_Tensor]


class _Metadata(msgspec.Struct):
    inputs: list[_Tensor]
    outputs: list[_Tensor]


_answer = msgspec.json.Decoder(_Answer)
_metadata = msgspec.json.Decoder(_Metadata)
_encoder = msgspec.json.Encoder()


class KServeTensorExecutor(BatchUpstreamExecutor):
    """A tensor model on KServe v2 replicas. ``arun`` runs on the loop of the reactor that
    starts the batch, or the client loop (the Batcher starts it with ``run_async``);
    ``spec`` is set by ``load`` and read-only afterwards."""

    kind = "kserve"
    default_health_path = "/v2/health/ready"

    def __init__(self, *args: Any, max_batch_size: int = 32, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows_per_call = max_batch_size
        """``spec.max_batch_size`` of a batched upstream model (the gateway's batching)."""
        self.spec: ModelSpec | None = None

    def load(self) -> None:
        """Start the client and health checks, then read the spec from a healthy replica.

        Raises:
            ExecutorError: no replica answered the metadata (a tensor model cannot be served
                without knowing its inputs), or it describes tensors infergate cannot carry.
        """
        super().load()
        try:
            reply = self.client.post(
                f"/v2/models/{self.upstream_model}", None, {"Accept": "application/json"}, "GET"
            )
            meta = _metadata.decode(reply.body)
            self.spec = metadata_spec(meta, self.rows_per_call)
        except (UpstreamError, msgspec.DecodeError, SpecError) as e:
            self.client.close()
            raise ExecutorError(
                f"cannot read the metadata of {self.upstream_model!r} from the upstreams "
                f"(GET /v2/models/{self.upstream_model}): {e}; at least one replica must be "
                "up at start-up"
            ) from None
        self.max_batch = None if self.spec.batched else 1
        log.info("model %s: upstream %s takes %s", self.name, self.upstream_model,
                 [t.metadata() for t in self.spec.inputs])  # fmt: skip

    async def arun(self, items: list[Any], slot: int) -> Outputs:
        spec = self.spec
        assert spec is not None, "load() first"
        if not spec.batched:
            return [await self._call(spec, item, None, slot) for item in items]
        n = len(items)
        stacked = [np.stack([item[k] for item in items]) for k in range(len(spec.inputs))]
        outs = await self._call(spec, stacked, n, slot)
        return [tuple(o[i] for o in outs) for i in range(n)]

    async def _call(
        self, spec: ModelSpec, arrays: Sequence[Array], rows: int | None, slot: int
    ) -> tuple[Array, ...]:
        """One upstream call; the outputs in the spec's order (``rows`` rows each when
        batched)."""
        body, header_len = encode_request(spec, arrays)
        headers = {**BINARY_HEADERS, "Inference-Header-Content-Length": str(header_len)}
        reply = await self.client.apost(f"/v2/models/{self.upstream_model}/infer", body, headers)
        try:
            outs = decode_answer(spec, reply.body, reply.header_length, rows)
        except ValueError as e:
            raise UpstreamError(
                502, UPSTREAM_ERROR, f"replica {reply.replica}: {e}", replica=reply.replica
            ) from None
        self.record(slot, reply)
        return outs

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.spec is not None:
            d.update(
                max_batch_size=self.spec.max_batch_size,
                inputs=[t.metadata() for t in self.spec.inputs],
                outputs=[t.metadata() for t in self.spec.outputs],
            )
        return d


def metadata_spec(meta: _Metadata, max_batch_size: int) -> ModelSpec:
    """The spec of an upstream's model metadata: batched (``max_batch_size`` rows per call)
    when dimension 0 of every input and output is -1 (Triton and KServe servers publish the
    batch dimension so), unbatched otherwise.

    Raises:
        SpecError: an unknown datatype, or no inputs.
    """

    def tensors(ts: list[_Tensor]) -> tuple[TensorSpec, ...]:
        out = []
        for t in ts:
            if t.datatype != "BYTES":
                numpy_dtype(t.datatype)  # raises SpecError for unknown ones and BF16
            out.append(TensorSpec(t.name, t.datatype, tuple(d if d > 0 else -1 for d in t.shape)))
        return tuple(out)

    inputs, outputs = tensors(meta.inputs), tensors(meta.outputs)
    if not inputs or not outputs:
        raise SpecError("the upstream model publishes no inputs or no outputs")
    dynamic = batch_dynamic(inputs, outputs)
    return ModelSpec(inputs, outputs, max(1, max_batch_size) if dynamic else 0, dynamic)


def encode_request(spec: ModelSpec, arrays: Sequence[Array]) -> tuple[bytes, int]:
    """A KServe v2 binary request (every input and output as binary data) and the length of
    its JSON part."""
    inputs = []
    blobs = []
    for t, arr in zip(spec.inputs, arrays, strict=True):
        raw = _to_bytes(arr, t.datatype)
        inputs.append(
            {"name": t.name, "datatype": t.datatype, "shape": list(arr.shape),
             "parameters": {"binary_data_size": len(raw)}}
        )  # fmt: skip
        blobs.append(raw)
    outputs = [{"name": t.name, "parameters": {"binary_data": True}} for t in spec.outputs]
    header = _encoder.encode({"inputs": inputs, "outputs": outputs})
    return b"".join([header, *blobs]), len(header)


def _to_bytes(arr: Array, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for x in arr.reshape(-1):
            b = x if isinstance(x, bytes) else str(x).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=numpy_dtype(datatype)).tobytes()


def decode_answer(
    spec: ModelSpec, body: bytes, header_len: int | None, rows: int | None
) -> tuple[Array, ...]:
    """The outputs of a KServe v2 answer (JSON or binary) in the spec's order.

    Raises:
        ValueError: the answer does not fit the call (a missing output, a wrong row count,
            sizes that do not add up): never a misaligned reply.
    """
    hlen = len(body) if header_len is None else header_len
    if not 0 < hlen <= len(body):
        raise ValueError("Inference-Header-Content-Length is outside the answer")
    try:
        doc = _answer.decode(body[:hlen])
    except msgspec.DecodeError as e:
        raise ValueError(f"invalid KServe answer: {e}") from None
    offset = hlen
    by_name: dict[str, Array] = {}
    for t in doc.outputs:
        by_name[t.name], offset = _decode_tensor(t, body, offset)
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} bytes after the last output")
    out = []
    for want in spec.outputs:
        if want.name not in by_name:
            raise ValueError(f"output {want.name} is missing from the answer")
        arr = by_name[want.name]
        if rows is not None and (arr.ndim == 0 or arr.shape[0] != rows):
            raise ValueError(f"output {want.name} has shape {list(arr.shape)} for {rows} rows")
        out.append(arr)
    return tuple(out)


def _decode_tensor(t: _Tensor, body: bytes, offset: int) -> tuple[Array, int]:
    if any(d < 0 for d in t.shape):
        raise ValueError(f"output {t.name}: negative dimension in {t.shape}")
    count = math.prod(t.shape)
    size = (t.parameters or {}).get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(body):
            raise ValueError(f"output {t.name}: binary_data_size runs past the answer")
        raw = body[offset : offset + size]
        offset += size
        if t.datatype == "BYTES":
            return _bytes_array(raw, count, t), offset
        dtype = _dtype(t)
        if size != count * dtype.itemsize:
            raise ValueError(f"output {t.name}: {size} bytes for shape {t.shape}")
        return np.frombuffer(raw, dtype=dtype).reshape(t.shape), offset
    if t.data is None:
        raise ValueError(f"output {t.name}: no data and no binary_data_size")
    if t.datatype == "BYTES":
        arr = np.array(t.data, dtype=object)
    else:
        arr = np.asarray(t.data, dtype=_dtype(t))
    if arr.size != count:
        raise ValueError(f"output {t.name}: {arr.size} values for shape {t.shape}")
    return arr.reshape(t.shape), offset


def _dtype(t: _Tensor) -> np.dtype[Any]:
    try:
        return numpy_dtype(t.datatype)
    except SpecError as e:
        raise ValueError(f"output {t.name}: {e}") from None


def _bytes_array(raw: bytes, count: int, t: _Tensor) -> Array:
    out: list[Any] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise ValueError(f"output {t.name}: truncated BYTES data")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise ValueError(f"output {t.name}: truncated BYTES data")
        item = raw[pos : pos + n]
        try:
            out.append(item.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(item)
        pos += n
    return np.array(out, dtype=object).reshape(t.shape)
