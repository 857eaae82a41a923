"""KServe v2 bodies: the request's tensors (JSON or binary), its ``outputs`` selection, and the
answer's tensors, with the per-request limits. Pure functions over bytes and arrays: no model,
no queue, so they run on a sub-reactor or on the codec thread alike (thread-safe).

Binary inputs are decoded with ``np.frombuffer`` over the request body: no copy until the batch
is gathered. Datatypes and their numpy dtypes come from ``engine.executors.spec.DATATYPES``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import msgspec
import numpy as np

from infergate.engine.api.common import (
    BODY_TOO_LARGE,
    MAX_INPUTS,
    MAX_TIMEOUT_MS,
    ApiError,
    decode_json,
    digits,
    invalid,
)
from infergate.engine.executors.spec import DATATYPES, Array
from infergate.engine.http.request import Request
from infergate.engine.http.response import Headers, Response, json_response, numpy_json

DTYPES: dict[str, np.dtype[Any]] = {
    d.kserve: d.numpy for d in DATATYPES if d.numpy is not None and d.kserve != "BYTES"
}
"""Numeric KServe datatypes and their little-endian numpy dtypes (BF16 has none)."""
MAX_ELEMENTS = 16 * 1024 * 1024
MAX_DIMS = 16
"""Dimensions per tensor. NumPy stops at 64 (a ValueError); the models here take 1-4, and 16
leaves room for any real tensor while keeping the shape checks trivially cheap."""
MAX_TENSORS = 64
"""Inputs (and requested outputs) per request: real models take a handful."""
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
codec_thread = ThreadPoolExecutor(1, thread_name_prefix="kserve-codec")
"""One thread: the work holds the GIL, so more threads would add no throughput."""
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

Tensors = dict[str, tuple[str, Any]]
"""Decoded inputs: name -> (datatype, array)."""


class OutputWanted(NamedTuple):
    """One output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


def split_body(req: Request) -> tuple[Any, memoryview, int]:
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


def decode_inputs(header: dict[str, Any], body: memoryview, header_len: int) -> Tensors:
    """Every input of a request as ``{name: (datatype, array)}``; BYTES tensors become object
    arrays of ``str`` in their shape (what ONNX Runtime takes).

    Raises:
        ApiError: 400 naming the input (malformed, duplicated, over a limit) or for binary
            data left over after the last input.
    """
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise invalid("inputs must be a non-empty list")
    if len(inputs) > MAX_TENSORS:
        raise invalid(f"at most {MAX_TENSORS} inputs per request, got {len(inputs)}")
    tensors: Tensors = {}
    offset = header_len
    for entry in inputs:
        name, datatype, value, offset = decode_input(entry, body, offset)
        if name in tensors:
            raise invalid(f"input {name} is given twice")
        if datatype == "BYTES":
            try:
                texts = [v.decode("utf-8") for v in value]
            except UnicodeDecodeError:
                raise invalid(f"input {name}: BYTES elements must be UTF-8") from None
            value = np.array(texts, dtype=object).reshape(entry["shape"])
        tensors[name] = (datatype, value)
    if offset != len(body) and header_len != len(body):
        raise invalid(f"{len(body) - offset} bytes of binary data left over")
    return tensors


def json_tensor(
    data: list[Any], dtype: np.dtype[Any], count: int, name: str, datatype: str
) -> Array:
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


def outputs_wanted(header: dict[str, Any], names: tuple[str, ...]) -> list[OutputWanted]:
    """The request's ``outputs`` selection against the model's output ``names``: every output
    in the model's order when it names none; ``binary_data`` per output, defaulting to the
    request's ``parameters.binary_data_output``. Validated before anything is queued.

    Raises:
        ApiError: 400 for a malformed selection, or an unknown or repeated output name.
    """
    params = header.get("parameters") or {}
    binary = bool(params.get("binary_data_output")) if isinstance(params, dict) else False
    outputs = header.get("outputs")
    if outputs is None or outputs == []:
        return [OutputWanted(n, binary) for n in names]
    if not isinstance(outputs, list) or len(outputs) > MAX_TENSORS:
        raise invalid(f"outputs must be a list of at most {MAX_TENSORS} objects")
    wanted: list[OutputWanted] = []
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise invalid("each requested output needs a name")
        name = out["name"]
        if name not in names:
            raise invalid(f"unknown output {name} (the model returns {', '.join(names)})")
        if any(w.name == name for w in wanted):
            raise invalid(f"output {name} is requested twice")
        p = out.get("parameters") or {}
        one = bool(p["binary_data"]) if isinstance(p, dict) and "binary_data" in p else binary
        wanted.append(OutputWanted(name, one))
    return wanted


def _encode_list(flat: Any) -> bytes:
    return _encoder.encode(flat.tolist())


def json_array(arr: Array) -> bytes:
    """``arr`` flattened as a JSON array, encoded JSON_CHUNK elements at a time: each C call
    (tolist, encode) then holds the GIL for a few ms, so the reactors get it in between when
    this runs on the codec thread (all 2M floats of an 8 MB tensor at once: ~100 ms)."""
    flat = arr.reshape(-1)
    encode: Callable[[Any], bytes] = _encode_list
    if flat.dtype.kind == "O":  # BYTES: str or bytes elements, as strings
        flat = np.array(
            [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in flat],
            dtype=object,
        )
    elif flat.dtype.kind in "iub" and flat.dtype.isnative:
        flat = np.ascontiguousarray(flat)
        encode = numpy_json  # from the buffer, no Python number per element (orjson)
    elif flat.dtype.kind == "f":
        # as float64: the same text as tolist() (see engine.api.openai.embeddings_response)
        flat = np.ascontiguousarray(flat, dtype=np.float64)
        encode = numpy_json
    parts = [encode(flat[i : i + JSON_CHUNK])[1:-1] for i in range(0, flat.size, JSON_CHUNK)]
    return b"[" + b",".join(p for p in parts if p) + b"]"


def _binary(arr: Array, datatype: str) -> bytes:
    if datatype != "BYTES":
        return np.ascontiguousarray(arr, dtype=DTYPES[datatype]).tobytes()
    parts = []
    for x in arr.reshape(-1):
        raw = x if isinstance(x, bytes) else str(x).encode()
        parts += [struct.pack("<I", len(raw)), raw]
    return b"".join(parts)


class OutputTensor(NamedTuple):
    """One tensor of an answer."""

    name: str
    datatype: str
    array: Array
    binary: bool


def encode_outputs(
    model: str, tensors: list[OutputTensor], extra: Headers, req_id: Any
) -> Response:
    """The answer: JSON only, or (when any output is binary) the JSON part followed by the
    binary outputs in order, with Inference-Header-Content-Length."""
    head: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": []}
    if req_id is not None:
        head["id"] = req_id
    blobs: list[bytes] = []
    for t in tensors:
        out: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.array.shape)}
        if t.binary:
            data = _binary(t.array, t.datatype)
            out["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            out["data"] = msgspec.Raw(json_array(t.array))
        head["outputs"].append(out)
    if not blobs:
        return json_response(head, headers=extra)
    json_part = _encoder.encode(head)
    headers = [(b"Inference-Header-Content-Length", b"%d" % len(json_part)), *extra]
    return Response(b"".join([json_part, *blobs]), 200, b"application/octet-stream", headers)


def timeout_ms(timeout_us: Any) -> float | None:
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
