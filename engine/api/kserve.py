"""KServe v2 inference protocol (Triton's HTTP/REST API), with the binary tensor extension.

Models of task ``tensor`` take one input ``INPUT0`` (any numeric datatype, shape
``[batch, ...]``) and return ``OUTPUT0``; models of task ``embeddings`` take ``TEXT`` (BYTES,
shape ``[batch]`` or ``[batch, 1]``) and return ``EMBEDDING`` (FP32 ``[batch, dim]``). Batching
concatenates along dimension 0; only requests with the same input name, datatype and non-batch
dimensions merge. Binary inputs are decoded with ``np.frombuffer`` over the request body: no copy
until the batch is gathered.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import msgspec
import numpy as np

from engine.api.common import (
    BODY_TOO_LARGE,
    MAX_INPUTS,
    MAX_TIMEOUT_MS,
    MODEL_NOT_FOUND,
    ApiError,
    check_texts,
    decode_json,
    digits,
    drop_headers,
    infer,
    invalid,
    priority_and_timeout,
    telemetry,
)
from engine.http.request import Request
from engine.http.response import CONTENT_TYPE_JSON, Headers, Response, json_response
from engine.http.router import Router
from engine.models.registry import ModelRegistry
from engine.scheduler.batcher import Batcher
from engine.scheduler.queues import Rejection

DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}  # fmt: skip
MAX_ELEMENTS = 16 * 1024 * 1024
MAX_DIMS = 16
"""Dimensions per tensor. NumPy stops at 64 (a ValueError); the models here take 1-4, and 16
leaves room for any real tensor while keeping the shape checks trivially cheap."""
MAX_BATCH = MAX_INPUTS
"""Rows (items) per request, as for /v1/embeddings: a request is split into batches and its
remainder cannot be expired once it started, so one request must not be unbounded."""
MAX_TIMEOUT_US = MAX_TIMEOUT_MS * 1000
MAX_JSON_BYTES = 1024 * 1024
"""The JSON part of a request (all of it without Inference-Header-Content-Length); beyond it,
413 pointing at binary tensors. Decoding JSON tensors costs ~25 ms per MiB in all (msgspec,
then NumPy, then the JSON answer) and each step is one C call holding the GIL: 8 MiB bodies
stalled the reactors for 0.4-2 s (docs/benchmarks.md "Large JSON bodies and the reactor")."""
OFFLOAD_BYTES = 64 * 1024
"""Bodies from this size are parsed on the codec thread, not the reactor: the reactor then
waits for the GIL for at most one C call of the parse (MAX_JSON_BYTES bounds it), not for every
queued parse in turn. Smaller bodies parse in well under a millisecond: no thread hop."""
JSON_CHUNK = 32 * 1024
"""Elements encoded per C call in a JSON answer; answers bigger than this are encoded on the
codec thread."""
_codec = ThreadPoolExecutor(1, thread_name_prefix="kserve-codec")
"""One thread: the work holds the GIL, so more threads would add no throughput."""
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def kserve_error(
    status: int, reason: str, message: str, retry_after: float | None = None
) -> Response:
    """KServe's error shape ``{"error": "..."}``, with infergate's reason header."""
    return json_response({"error": message}, status, drop_headers(reason, retry_after))


def _split_body(req: Request) -> tuple[Any, memoryview, int]:
    """The JSON header and the binary section (Inference-Header-Content-Length)."""
    body = req.body
    raw_len = req.header(b"inference-header-content-length")
    if raw_len is None:
        header_len = len(body)
    else:
        header_len = digits(raw_len, "Inference-Header-Content-Length")
        if not 0 < header_len <= len(body):
            raise invalid("Inference-Header-Content-Length is outside the body")
    if header_len > MAX_JSON_BYTES:
        raise ApiError(
            413,
            BODY_TOO_LARGE,
            f"the JSON part of an inference request is limited to {MAX_JSON_BYTES} bytes (got "
            f"{header_len}): send big tensors as binary data (parameters.binary_data_size with "
            "Inference-Header-Content-Length; tritonclient: binary_data=True)",
        )
    header = decode_json(_decoder, memoryview(body)[:header_len], "inference request JSON")
    if not isinstance(header, dict):
        raise invalid("the inference request must be a JSON object")
    return header, memoryview(body), header_len


def _shape(spec: dict[str, Any], name: str) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not 0 < len(shape) <= MAX_DIMS:
        raise invalid(f"input {name}: shape must be a list of 1 to {MAX_DIMS} dimensions")
    if not all(type(d) is int and d >= 0 for d in shape):
        raise invalid(f"input {name}: shape must hold non-negative integers")
    if math.prod(shape) > MAX_ELEMENTS:  # exact (np.prod would wrap around in int64)
        raise invalid(f"input {name}: more than {MAX_ELEMENTS} elements")
    if shape[0] > MAX_BATCH:
        raise invalid(f"input {name}: at most {MAX_BATCH} rows per request, got {shape[0]}")
    return shape


def _decode_bytes(raw: memoryview, count: int, name: str) -> list[bytes]:
    """BYTES elements in the binary format: 4-byte little-endian length, then the bytes."""
    out = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise invalid(f"input {name}: truncated BYTES data")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise invalid(f"input {name}: truncated BYTES data")
        out.append(bytes(raw[pos : pos + n]))
        pos += n
    if pos != len(raw):
        raise invalid(f"input {name}: {len(raw) - pos} bytes after the last BYTES element")
    return out


def decode_input(spec: Any, body: memoryview, offset: int) -> tuple[str, str, Any, int]:
    """(name, datatype, array or list of bytes, new binary offset) for one input."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise invalid("each input needs a name")
    name = spec["name"]
    datatype = str(spec.get("datatype"))
    shape = _shape(spec, name)
    count = math.prod(shape)
    if datatype == "BYTES" and count > MAX_INPUTS:  # before any per-element work
        raise invalid(f"input {name}: at most {MAX_INPUTS} BYTES elements per request")
    params = spec.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is not None:
        if type(size) is not int or size < 0 or offset + size > len(body):
            raise invalid(f"input {name}: binary_data_size runs past the end of the body")
        raw = body[offset : offset + size]
        offset += size
        if datatype == "BYTES":
            return name, datatype, _decode_bytes(raw, count, name), offset
        dtype = DTYPES.get(datatype)
        if dtype is None:
            raise invalid(f"input {name}: unsupported datatype {datatype!r}")
        if size != count * dtype.itemsize:
            raise invalid(f"input {name}: {size} bytes for shape {shape} of {datatype}")
        return name, datatype, np.frombuffer(raw, dtype=dtype).reshape(shape), offset
    data = spec.get("data")
    if data is None:
        raise invalid(f"input {name}: no data and no binary_data_size")
    if not isinstance(data, list):
        raise invalid(f"input {name}: data must be a JSON array")
    if datatype == "BYTES":
        try:
            flat = np.asarray(data, dtype=object).reshape(-1)
        except ValueError:  # nested past NumPy's 64 dimensions
            flat = np.asarray([None])
        if flat.size != count or not all(isinstance(x, str) for x in flat):
            raise invalid(f"input {name}: BYTES data must be {count} strings")
        return name, datatype, [x.encode() for x in flat], offset
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise invalid(f"input {name}: unsupported datatype {datatype!r}")
    return name, datatype, json_tensor(data, dtype, count, name, datatype).reshape(shape), offset


def json_tensor(
    data: list[Any], dtype: np.dtype[Any], count: int, name: str, datatype: str
) -> np.ndarray[Any, Any]:
    """JSON ``data`` (flat or nested, row-major) as ``dtype``; a value that does not fit is a 400.

    NumPy infers the JSON values' own type first (int64, float64, bool, or str/object for
    anything else), so the checks are whole-array operations: booleans are not numbers,
    integer types take integral values within their range (2.0 fits INT32, 1.5 does not), float
    types take values that stay finite (1e300 does not fit FP32).
    """
    try:
        raw = np.asarray(data)
    except (TypeError, ValueError):  # ragged, or nested past NumPy's 64 dimensions
        raise invalid(f"input {name}: data is not a regular array of {datatype}") from None
    if raw.size != count:
        raise invalid(f"input {name}: {raw.size} values for {count} elements of the shape")
    kind, want = raw.dtype.kind, dtype.kind
    if count == 0:
        return np.empty(0, dtype)
    if want == "b":
        if kind != "b":
            raise invalid(f"input {name}: BOOL data must be true or false")
        return raw
    if kind not in "iuf":
        raise invalid(f"input {name}: {datatype} data must be numbers (not strings or booleans)")
    if want == "f":
        with np.errstate(over="ignore"):
            arr = raw.astype(dtype)
        if not np.isfinite(arr).all():  # JSON carries no inf or NaN: this is overflow
            limit = float(np.finfo(dtype).max)
            raise invalid(f"input {name}: a value does not fit {datatype} (|x| <= {limit:.4g})")
        return arr
    info = np.iinfo(dtype)
    outside = f"input {name}: a value is outside {datatype}'s {info.min}..{info.max}"
    if kind == "f":  # a float in the JSON, or ints past int64 that NumPy turned into floats
        if not (np.trunc(raw) == raw).all():
            raise invalid(f"input {name}: {datatype} data must be integers")
        try:  # from the JSON values themselves: exact past 2**53, and range-checked
            return np.asarray(data, dtype=dtype)
        except OverflowError:
            raise invalid(outside) from None
    if not info.min <= int(raw.min()) <= int(raw.max()) <= info.max:
        raise invalid(outside)
    return raw.astype(dtype)


def _wants_binary(header: dict[str, Any], output: str) -> bool:
    params = header.get("parameters") or {}
    binary = bool(params.get("binary_data_output")) if isinstance(params, dict) else False
    outputs = header.get("outputs") or []
    if not isinstance(outputs, list):
        raise invalid("outputs must be a list")
    for out in outputs:
        if isinstance(out, dict) and out.get("name") == output:
            p = out.get("parameters") or {}
            if isinstance(p, dict) and "binary_data" in p:
                binary = bool(p["binary_data"])
    return binary


def _json_array(arr: np.ndarray[Any, Any]) -> bytes:
    """``arr`` flattened as a JSON array, encoded JSON_CHUNK elements at a time: each C call
    (tolist, encode) then holds the GIL for a few ms, so the reactors get it in between when
    this runs on the codec thread (all 2M floats of an 8 MB tensor at once: ~100 ms)."""
    flat = arr.reshape(-1)
    parts = [
        _encoder.encode(flat[i : i + JSON_CHUNK].tolist())[1:-1]
        for i in range(0, flat.size, JSON_CHUNK)
    ]
    return b"[" + b",".join(parts) + b"]"


def encode_output(
    model: str, name: str, arr: np.ndarray[Any, Any], datatype: str, binary: bool,
    extra: Headers, req_id: Any,
) -> Response:  # fmt: skip
    out: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
    head: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": [out]}
    if req_id is not None:
        head["id"] = req_id
    if not binary:
        out["data"] = msgspec.Raw(_json_array(arr))
        return json_response(head, headers=extra)
    data = np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
    out["parameters"] = {"binary_data_size": len(data)}
    json_part = _encoder.encode(head)
    headers = [(b"Inference-Header-Content-Length", b"%d" % len(json_part)), *extra]
    return Response(json_part + data, 200, b"application/octet-stream", headers)


def metadata(b: Batcher) -> dict[str, Any]:
    if b.config.task == "embeddings":
        dim = getattr(b.executor, "dim", 0) or b.config.dim
        inputs = [{"name": "TEXT", "datatype": "BYTES", "shape": [-1]}]
        outputs = [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, dim]}]
    else:
        inputs = [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}]
        outputs = [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, -1]}]
    return {
        "name": b.name,
        "versions": ["1"],
        "platform": b.executor.kind,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"simulated": b.executor.simulated},
    }


class Parsed(NamedTuple):
    """A KServe inference request, decoded and validated, ready to queue."""

    items: list[Any]
    key: Hashable
    priority: Any
    timeout_ms: float | None
    binary: bool
    req_id: str | None
    out_name: str
    out_type: str


def parse_request(req: Request, b: Batcher) -> Parsed:
    """Decode and validate a KServe inference request for model ``b``.

    Thread-safe: reads only the request and ``b.config`` (a frozen struct swapped by reference),
    so big bodies are parsed on the codec thread.

    Raises:
        ApiError: 400 for anything malformed, 413 for a JSON part over MAX_JSON_BYTES.
    """
    header, body, offset = _split_body(req)
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise invalid(f"model {b.name} takes exactly one input")
    name, datatype, value, end = decode_input(inputs[0], body, offset)
    if end != len(body) and offset != len(body):
        raise invalid(f"{len(body) - end} bytes of binary data left over")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise invalid("parameters must be an object")
    embeddings = b.config.task == "embeddings"
    # decided (and "outputs" validated) before any work is queued
    binary = _wants_binary(header, "EMBEDDING" if embeddings else "OUTPUT0")
    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise invalid("id must be a string")
    prio = params.get("priority")
    prio = None if type(prio) is int and prio == 0 else prio  # Triton: 0 = model default
    timeout_ms = _timeout_ms(params.get("timeout"))
    if embeddings:
        if name != "TEXT" or datatype != "BYTES":
            raise invalid("embeddings models take input TEXT of datatype BYTES")
        try:
            texts = [v.decode("utf-8") for v in value]
        except UnicodeDecodeError:
            raise invalid("TEXT elements must be UTF-8") from None
        if not texts or not all(texts):
            raise invalid("TEXT must hold non-empty strings")
        check_texts(texts, "TEXT")
        return Parsed(
            texts, ("kserve-text",), prio, timeout_ms, binary, req_id, "EMBEDDING", "FP32"
        )
    if name != "INPUT0" or datatype == "BYTES":
        raise invalid("tensor models take one numeric input INPUT0")
    if value.ndim < 1 or value.shape[0] == 0:
        raise invalid("INPUT0 needs a batch dimension of at least 1")
    key = (name, datatype, value.shape[1:])
    return Parsed(list(value), key, prio, timeout_ms, binary, req_id, "OUTPUT0", datatype)


def add_kserve_routes(router: Router, registry: ModelRegistry) -> None:
    ok = Response(b"", 200, CONTENT_TYPE_JSON)

    def live(_req: Request) -> Response:
        return ok

    def ready(_req: Request) -> Response:
        return ok

    def server_meta(_req: Request) -> Response:
        return json_response(
            {"name": "infergate", "version": "1", "extensions": ["binary_tensor_data"]}
        )

    def _model(name: str) -> Batcher:
        b = registry.get(name)
        if b is None:
            raise ApiError(404, MODEL_NOT_FOUND, f"model {name!r} does not exist")
        return b

    def model_get(req: Request) -> Response:
        name, _, rest = req.path.removeprefix("/v2/models/").partition("/")
        rest = _strip_version(rest)
        try:
            b = _model(name)
        except ApiError as e:
            return kserve_error(e.status, e.reason, e.message)
        if rest == "":
            return json_response(metadata(b))
        if rest == "ready":
            return ok
        return kserve_error(404, "not_found", f"no route {req.path}")

    async def model_post(req: Request) -> Response:
        name, _, rest = req.path.removeprefix("/v2/models/").partition("/")
        if _strip_version(rest) != "infer":
            return kserve_error(404, "not_found", f"no route {req.path}")
        try:
            return await _infer(req, _model(name))
        except (ApiError, Rejection) as e:
            return kserve_error(e.status, e.reason, e.message, getattr(e, "retry_after", None))

    async def _infer(req: Request, b: Batcher) -> Response:
        if len(req.body) < OFFLOAD_BYTES:
            p = parse_request(req, b)
        else:  # see OFFLOAD_BYTES
            p = await asyncio.get_running_loop().run_in_executor(_codec, parse_request, req, b)
        level, timeout = priority_and_timeout(req, b, p.priority, p.timeout_ms)
        done = await infer(req, b, p.items, p.key, level, timeout)
        if p.out_name == "EMBEDDING":
            arr = np.stack([vec for vec, _ in done.outputs]).astype(np.float32)
        else:
            arr = np.stack(done.outputs).astype(DTYPES[p.out_type])
        args = (b.name, p.out_name, arr, p.out_type, p.binary, telemetry(done), p.req_id)
        if p.binary or arr.size <= JSON_CHUNK:
            return encode_output(*args)
        return await asyncio.get_running_loop().run_in_executor(_codec, encode_output, *args)

    router.add(["GET"], "/v2/health/live", live)
    router.add(["GET"], "/v2/health/ready", ready)
    router.add(["GET"], "/v2", server_meta)
    router.add(["GET"], "/v2/models/", model_get, prefix=True)
    router.add(["POST"], "/v2/models/", model_post, prefix=True)


def _timeout_ms(timeout_us: Any) -> float | None:
    """Triton's ``parameters.timeout`` (microseconds, 0 = none) in milliseconds, validated."""
    if timeout_us is None:
        return None
    limits = f"parameters.timeout must be 1000..{MAX_TIMEOUT_US} microseconds (0: none)"
    if not isinstance(timeout_us, int | float) or isinstance(timeout_us, bool):
        raise invalid(f"{limits}, got {type(timeout_us).__name__}")
    if timeout_us == 0:
        return None
    if not 1000 <= timeout_us <= MAX_TIMEOUT_US:
        raise invalid(f"{limits}, got {timeout_us}")
    return timeout_us / 1000


def _strip_version(rest: str) -> str:
    """``versions/1/infer`` → ``infer``; any version is served by the one loaded."""
    if rest.startswith("versions/"):
        _, _, after = rest.removeprefix("versions/").partition("/")
        return after
    return rest
