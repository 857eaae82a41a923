"""Past one core: what handing requests from a front-end process to an engine process costs.

A prototype of the hand-off in docs/architecture.md ("Past one core"): the front end sends
``(request id, model, inputs)`` as msgspec, the engine answers ``(request id, vectors)`` with
the float32 vectors as raw bytes (384-dim, 1,536 bytes each). Three mechanisms:

- ``pipe``: a ``socketpair`` with 4-byte length-prefixed frames (the baseline);
- ``zmq``: pyzmq PUSH/PULL over ipc://, one frame per message (vLLM's API server / engine core);
- ``shm``: a single-producer single-consumer ring per direction in
  ``multiprocessing.shared_memory``, with a socketpair byte as the doorbell once per burst.

Each is measured two ways, the front end on core 1 and the engine on core 0:
- round trip: one message in flight, the added latency per request;
- burst: 64 requests written, then 64 answers read (what a busy front end does per loop
  iteration), giving CPU µs per request in the front end (``time.process_time``) and in the
  engine, which is what bounds the throughput of N front ends feeding one engine.

Usage: python bench/ipc.py   (ROUNDS per case, default 3000 round trips / 300 bursts)
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from multiprocessing import shared_memory
from typing import Any

import msgspec

DIM = 384
BURST = 64
ROUNDS = int(os.environ.get("ROUNDS", "3000"))
BURSTS = max(1, ROUNDS // 10)
_HDR = struct.Struct("<I")


class Req(msgspec.Struct, array_like=True):
    id: int
    model: str
    inputs: list[str]


class Ans(msgspec.Struct, array_like=True):
    id: int
    vectors: list[bytes]


ENC = msgspec.msgpack.Encoder()
DEC_REQ = msgspec.msgpack.Decoder(Req)
DEC_ANS = msgspec.msgpack.Decoder(Ans)
VECTOR = bytes(DIM * 4)


def answer(raw: bytes | memoryview) -> bytes:
    """The engine's side of one message: decode, 'run', encode (the executor is free)."""
    req = DEC_REQ.decode(raw)
    return ENC.encode(Ans(req.id, [VECTOR] * len(req.inputs)))


# ---- channels: send(bytes), recv() -> bytes, recv_many() -> list[bytes] ----------------------


class PipeEnd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def send_many(self, msgs: list[bytes]) -> None:
        self.sock.sendall(b"".join(_HDR.pack(len(m)) + m for m in msgs))

    def recv_some(self) -> list[bytes]:
        while True:
            out = []
            buf = self.buf
            while len(buf) >= 4:
                (n,) = _HDR.unpack_from(buf)
                if len(buf) < 4 + n:
                    break
                out.append(bytes(buf[4 : 4 + n]))
                del buf[: 4 + n]
            if out:
                return out
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            buf += chunk


class ZmqEnd:
    def __init__(self, push: Any, pull: Any) -> None:
        self.push, self.pull = push, pull

    def send_many(self, msgs: list[bytes]) -> None:
        for m in msgs:
            self.push.send(m, copy=False)

    def recv_some(self) -> list[bytes]:
        import zmq

        out = [self.pull.recv(copy=True)]
        while True:
            try:
                out.append(self.pull.recv(zmq.NOBLOCK, copy=True))
            except zmq.Again:
                return out


class Ring:
    """SPSC byte ring in shared memory: [head u64][tail u64][data]; frames are length + bytes,
    never split across the end (a zero length means 'wrap to 0')."""

    SIZE = 8 << 20

    def __init__(self, name: str | None) -> None:
        create = name is None
        self.shm = shared_memory.SharedMemory(name=name, create=create, size=16 + self.SIZE)
        self.buf = self.shm.buf
        if create:
            self.buf[:16] = bytes(16)

    def _get(self, at: int) -> int:
        return int.from_bytes(self.buf[at : at + 8], "little")

    def _set(self, at: int, v: int) -> None:
        self.buf[at : at + 8] = v.to_bytes(8, "little")

    def put(self, msgs: list[bytes]) -> None:
        head = self._get(0)
        for m in msgs:
            need = 4 + len(m)
            pos = head % self.SIZE
            if pos + need + 4 > self.SIZE:  # wrap marker, then start over at 0
                self.buf[16 + pos : 20 + pos] = bytes(4)
                head += self.SIZE - pos
                pos = 0
            while head + need - self._get(8) > self.SIZE - 4:
                time.sleep(0)  # full: the consumer is behind (never in these runs)
            self.buf[16 + pos : 20 + pos] = _HDR.pack(len(m))
            self.buf[20 + pos : 20 + pos + len(m)] = m
            head += need
        self._set(0, head)

    def take(self) -> list[bytes]:
        head, tail = self._get(0), self._get(8)
        out = []
        while tail < head:
            pos = tail % self.SIZE
            (n,) = _HDR.unpack_from(self.buf, 16 + pos)
            if n == 0:
                tail += self.SIZE - pos
                continue
            out.append(bytes(self.buf[20 + pos : 20 + pos + n]))
            tail += 4 + n
        self._set(8, tail)
        return out


class ShmEnd:
    def __init__(self, tx: Ring, rx: Ring, bell: socket.socket) -> None:
        self.tx, self.rx, self.bell = tx, rx, bell

    def send_many(self, msgs: list[bytes]) -> None:
        self.tx.put(msgs)
        self.bell.send(b"x")  # one doorbell per burst

    def recv_some(self) -> list[bytes]:
        while True:
            out = self.rx.take()
            if out:
                return out
            self.bell.recv(4096)  # sleep until the peer rings


# ---- the engine process ----------------------------------------------------------------------


def engine(kind: str, args: Any) -> None:
    os.sched_setaffinity(0, {0})
    end = connect(kind, args, engine_side=True)
    t_cpu = time.process_time()
    handled = 0
    try:
        while True:
            msgs = end.recv_some()
            if msgs == [b"stop"]:
                break
            end.send_many([answer(m) for m in msgs])
            handled += len(msgs)
    except EOFError:
        pass
    cpu = time.process_time() - t_cpu
    end.send_many([msgspec.msgpack.encode([handled, cpu])])


def connect(kind: str, args: Any, engine_side: bool) -> Any:
    if kind == "pipe":
        return PipeEnd(args[1] if engine_side else args[0])
    if kind == "zmq":
        import zmq

        ctx = zmq.Context.instance()
        push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
        a, b = args
        if engine_side:
            pull.connect(a)
            push.connect(b)
        else:
            push.bind(a)
            pull.bind(b)
        return ZmqEnd(push, pull)
    req_name, ans_name, socks = args
    req, ans = Ring(req_name), Ring(ans_name)
    return ShmEnd(ans, req, socks[1]) if engine_side else ShmEnd(req, ans, socks[0])


def setup(kind: str) -> tuple[Any, Callable[[], None]]:
    if kind == "pipe":
        a, b = socket.socketpair()
        return (a, b), lambda: None
    if kind == "zmq":
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        return (f"ipc:///tmp/ig-req-{tag}", f"ipc:///tmp/ig-ans-{tag}"), lambda: None
    req, ans = Ring(None), Ring(None)
    socks = socket.socketpair()

    def cleanup() -> None:
        for r in (req, ans):
            r.buf.release()
            r.shm.close()
            r.shm.unlink()

    return (req.shm.name, ans.shm.name, socks), cleanup


def run(kind: str, n_inputs: int) -> dict[str, float]:
    args, cleanup = setup(kind)
    proc = mp.get_context("fork").Process(target=engine, args=(kind, args))
    proc.start()
    front = connect(kind, args, engine_side=False)
    inputs = [f"hello world {i}" for i in range(n_inputs)]
    if kind == "zmq":
        time.sleep(0.3)  # let the PULL side connect
    # round trips, one in flight
    lat = []
    for i in range(ROUNDS):
        t = time.perf_counter()
        front.send_many([ENC.encode(Req(i, "sim-embed", inputs))])
        got = front.recv_some()
        DEC_ANS.decode(got[0])
        lat.append(time.perf_counter() - t)
    # bursts of BURST requests
    cpu0, t0 = time.process_time(), time.perf_counter()
    for b in range(BURSTS):
        front.send_many([ENC.encode(Req(b * BURST + j, "sim-embed", inputs)) for j in range(BURST)])
        left = BURST
        while left:
            for raw in front.recv_some():
                DEC_ANS.decode(raw)
                left -= 1
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    front.send_many([b"stop"])
    handled, eng_cpu = msgspec.msgpack.decode(front.recv_some()[0])
    proc.join(10)
    cleanup()
    n = BURSTS * BURST
    return {
        "rtt_p50_us": statistics.median(lat[100:]) * 1e6,
        "front_cpu_us": cpu / n * 1e6,
        "engine_cpu_us": eng_cpu / handled * 1e6,
        "burst_req_s": n / wall,
    }


def main() -> None:
    os.sched_setaffinity(0, {1})
    kinds = ["pipe", "shm"]
    try:
        import zmq  # noqa: F401

        kinds.insert(1, "zmq")
    except ImportError:
        print("pyzmq not installed: zmq skipped (pip install pyzmq)", file=sys.stderr)
    rows = []
    for n_inputs in (1, 32):
        for kind in kinds:
            r = run(kind, n_inputs)
            rows.append((kind, n_inputs, r))
            print(kind, n_inputs, {k: round(v, 1) for k, v in r.items()}, file=sys.stderr)
    print(f"\nfront end on core 1, engine on core 0; {ROUNDS} round trips (one in flight), "
          f"{BURSTS} bursts of {BURST}; 384-dim float32 answers as bytes\n")  # fmt: skip
    print("| mechanism | inputs/request | round trip p50 µs | front-end CPU µs/request "
          "| engine CPU µs/request | burst req/s |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for kind, n_inputs, r in rows:
        print(f"| {kind} | {n_inputs} | {r['rtt_p50_us']:.0f} | {r['front_cpu_us']:.1f} | "
              f"{r['engine_cpu_us']:.1f} | {r['burst_req_s']:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
