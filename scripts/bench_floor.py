#!/usr/bin/env python3
"""The floor under Sign: what the least work a signature needs costs over bare gRPC.

    .venv/bin/python scripts/bench_floor.py [--concurrency 32] [--duration 8] [--rounds 2]

``scripts/bench.py`` compares Sign with a bare mutual-TLS echo. This asks how
close to the echo any signer written in this interpreter can come on this
machine, by measuring servers that do only the work no design can leave out,
next to the echo, with the same clients, certificates, payload and concurrency
(``scripts/bench.py``'s client processes):

- ``echo``: the bare unary echo (a thread-pool server, as ``scripts/bench.py``);
- ``floor``: per call, the RFC 8785 text of a payment payload, its SHA-256 signed
  ECDSA P-256 by the SoftHSM2 token (one PKCS#11 session, so one call at a
  time), the RFC 8785 text of an audit-sized record, both written as two rows in
  a group-committed SQLite transaction (WAL, ``synchronous=FULL``; each caller
  answered after the commit that holds its rows) and one JSON log line;
- ``echo-aio`` and ``floor-aio``: the same two on ``grpc.aio`` (one event loop;
  the HSM called on the loop; one writer thread drains the rows in batches).

No authentication, validation, policy, facts, nonce, session, budget, Merkle
tree or audit chain: a real signer does all of that on top. Prints throughput,
p50/p99 and CPU time per call for each server, and each one's throughput as a
share of the echo's measured in the same round. Run it by hand; the figures
depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # scripts/bench.py: the data directory, the clients, the figures
from paywarden.signer.encoding import Json, jcs

TARGETS = ("echo", "floor", "echo-aio", "floor-aio")
TRACE_RULES = 19  # as many trace entries as the benchmark pack's rules


# -- the work every signature needs -------------------------------------------------------------


class Work:
    """The HSM key, the store file and the log of one floor server."""

    def __init__(self, root: Path) -> None:
        import pkcs11

        os.environ["SOFTHSM2_CONF"] = str(root / "hsm" / "softhsm2.conf")
        token = pkcs11.lib(bench.MODULE).get_token(token_label=bench.TOKEN_LABEL)
        pin = (root / "hsm" / "user.pin").read_text(encoding="utf-8").strip()
        self._session = token.open(user_pin=pin)
        self._key: Any = self._session.get_key(
            object_class=pkcs11.ObjectClass.PRIVATE_KEY, label="payments", id=b"v1"
        )
        self._mechanism = pkcs11.Mechanism.ECDSA
        self.path = root / "floor.db"
        self.log = logging.getLogger("bench.floor")
        self.log.addHandler(logging.StreamHandler(open(os.devnull, "w", encoding="utf-8")))
        self.log.setLevel(logging.INFO)
        self.log.propagate = False

    def prepare(self, request: bytes) -> tuple[bytes, bytes]:
        """The payload's canonical text and signature, and the audit record's text."""
        digest = hashlib.sha256(request).hexdigest()
        payload: dict[str, Json] = {
            "agent": "bench-agent-1",
            "amount": "0.01",
            "asset": "USD",
            "expires_at": int(time.time()) + 300,
            "nonce": digest[:22],
            "payee": "api.example",
            "session_id": digest[22:48],
        }
        text = jcs(payload)
        signature: bytes = self._key.sign(hashlib.sha256(text).digest(), mechanism=self._mechanism)
        trace: list[Json] = [
            {"rule": f"rule-{i}", "outcome": "pass", "detail": "x" * 40} for i in range(TRACE_RULES)
        ]
        record = jcs({"decision": payload, "signature": signature.hex(), "trace": trace})
        return text, record

    def connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY, body BLOB, leaf BLOB)"
        )
        db.execute("CREATE TABLE IF NOT EXISTS decisions (nonce TEXT PRIMARY KEY, payload BLOB)")
        return db

    @staticmethod
    def write(db: sqlite3.Connection, rows: Sequence[tuple[bytes, bytes]]) -> None:
        """One transaction, one fsync, for a batch of (payload, record) pairs."""
        db.execute("BEGIN IMMEDIATE")
        for text, record in rows:
            leaf = hashlib.sha256(b"\x00" + record).digest()
            db.execute("INSERT INTO audit (body, leaf) VALUES (?, ?)", (record, leaf))
            db.execute(
                "INSERT OR REPLACE INTO decisions (nonce, payload) VALUES (?, ?)",
                (hashlib.sha256(text).hexdigest(), text),
            )
        db.execute("COMMIT")


def _credentials(pki: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [((pki / "server.key").read_bytes(), (pki / "server.crt").read_bytes())],
        root_certificates=(pki / "ca.crt").read_bytes(),
        require_client_auth=True,
    )


def _handlers(behaviour: Callable[..., Any]) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(behaviour)}
    )


# -- the thread-pool servers --------------------------------------------------------------------


def thread_server_main(
    target: str, pki: Path, workers: int, conn: multiprocessing.connection.Connection
) -> None:
    if target == "echo":
        behaviour: Callable[[bytes, grpc.ServicerContext], bytes] = bench._echo
    else:
        work = Work(pki.parent)
        db = work.connect()
        hsm = threading.Lock()  # one PKCS#11 session: one call at a time
        pending: list[tuple[tuple[bytes, bytes], threading.Event]] = []
        guard = threading.Lock()
        leading = [False]

        def behaviour(request: bytes, _context: grpc.ServicerContext) -> bytes:
            with hsm:
                rows = work.prepare(request)
            done = threading.Event()
            with guard:
                pending.append((rows, done))
                lead = not leading[0]
                leading[0] = True
            if not lead:
                done.wait()
            while lead:  # the leader commits batches until none is waiting
                with guard:
                    batch = pending[:]
                    pending.clear()
                    if not batch:
                        leading[0] = False
                        break
                Work.write(db, [rows for rows, _ in batch])
                for _, event in batch:
                    event.set()
            work.log.info("signed %s", len(request))
            return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers((_handlers(behaviour),))
    port = server.add_secure_port("127.0.0.1:0", _credentials(pki))
    server.start()
    conn.send(port)
    conn.recv()
    server.stop(grace=None)


# -- the event-loop servers ---------------------------------------------------------------------


def aio_server_main(
    target: str, pki: Path, _workers: int, conn: multiprocessing.connection.Connection
) -> None:
    asyncio.run(_aio_server(target, pki, conn))


async def _aio_server(target: str, pki: Path, conn: multiprocessing.connection.Connection) -> None:
    loop = asyncio.get_running_loop()
    if target == "echo-aio":

        async def behaviour(request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            return request

    else:
        work = Work(pki.parent)
        inbox: queue.SimpleQueue[tuple[tuple[bytes, bytes], asyncio.Future[None]]]
        inbox = queue.SimpleQueue()

        def writer() -> None:
            db = work.connect()
            while True:
                batch = [inbox.get()]
                while not inbox.empty():
                    batch.append(inbox.get_nowait())
                Work.write(db, [rows for rows, _ in batch])
                loop.call_soon_threadsafe(_resolve, [future for _, future in batch])

        threading.Thread(target=writer, daemon=True).start()

        async def behaviour(request: bytes, _context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            rows = work.prepare(request)  # on the loop: one HSM call at a time
            future: asyncio.Future[None] = loop.create_future()
            inbox.put((rows, future))
            await future
            work.log.info("signed %s", len(request))
            return request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((_handlers(behaviour),))
    port = server.add_secure_port("127.0.0.1:0", _credentials(pki))
    await server.start()
    conn.send(port)
    await loop.run_in_executor(None, conn.recv)
    await server.stop(None)


def _resolve(waiting: list[asyncio.Future[None]]) -> None:
    for future in waiting:
        future.set_result(None)


# -- the run ------------------------------------------------------------------------------------


def measure(
    ctx: multiprocessing.context.SpawnContext,
    data: bench.DataDir,
    target: str,
    args: argparse.Namespace,
) -> tuple[bench.Figures, float]:
    """One phase against a fresh server of ``target``: its figures and its CPU ms per call."""
    main = aio_server_main if target.endswith("-aio") else thread_server_main
    parent, child = ctx.Pipe()
    server = ctx.Process(target=main, args=(target, data.pki, args.workers, child), daemon=True)
    server.start()
    clients = []
    try:
        addr = f"127.0.0.1:{parent.recv()}"
        slots = [
            bench.Slot(data.agents[i % len(data.agents)], "s", addr)
            for i in range(args.concurrency)
        ]
        for p in range(args.processes):
            here, there = ctx.Pipe()
            proc = ctx.Process(
                target=bench.client_main,
                args=(data, addr, slots[p :: args.processes], p * 1_000_000_000, there),
                daemon=True,
            )
            proc.start()
            clients.append((proc, here))
        for _, conn in clients:
            if conn.recv() != "ready":
                raise SystemExit("bench_floor: a client process did not start")
            conn.send(bench.Phase("echo", args.duration))
        for _, conn in clients:
            if conn.recv() != "prepared":
                raise SystemExit("bench_floor: a client process failed")
        start = time.time() + 0.2
        used = bench.cpu_seconds(server.pid or 0)
        for _, conn in clients:
            conn.send(start)
        results: list[bench.PhaseResult] = [conn.recv() for _, conn in clients]
        used = bench.cpu_seconds(server.pid or 0) - used
        for _, conn in clients:
            conn.send(None)
    finally:
        for proc, _ in clients:
            proc.join(timeout=30)
        parent.send("stop")
        server.join(timeout=30)
    latencies = [t for r in results for t in r.latencies]
    errors = sum(len(r.errors) for r in results)
    figs = bench.figures(latencies, errors, max(r.elapsed for r in results))
    return figs, (used / figs.calls * 1000 if figs.calls else 0.0)


def run(args: argparse.Namespace, root: Path) -> int:
    data = bench.make_data_dir(root, 8, args.workers, args.concurrency)
    ctx = multiprocessing.get_context("spawn")
    rounds: list[dict[str, dict[str, Any]]] = []
    for number in range(1, args.rounds + 1):
        row: dict[str, dict[str, Any]] = {}
        for target in TARGETS:
            figs, cpu_ms = measure(ctx, data, target, args)
            row[target] = {**asdict(figs), "cpu_ms_per_call": round(cpu_ms, 3)}
            print(
                f"bench_floor: round {number} {target}: {figs.rps:.1f} calls/s,"
                f" p50 {figs.p50_ms} ms, p99 {figs.p99_ms} ms, {cpu_ms:.3f} ms CPU per call,"
                f" {figs.errors} errors",
                flush=True,
            )
        rounds.append(row)
    print()
    print("round  server     calls/s  p50 ms  p99 ms  CPU ms/call  of echo  of echo-aio")
    errors = 0
    for number, row in enumerate(rounds, 1):
        for target in TARGETS:
            f = row[target]
            errors += f["errors"]
            share, share_aio = f["rps"] / row["echo"]["rps"], f["rps"] / row["echo-aio"]["rps"]
            print(
                f"{number:>5}  {target:<9}  {f['rps']:>7.1f}  {f['p50_ms']:>6.2f}"
                f"  {f['p99_ms']:>6.2f}  {f['cpu_ms_per_call']:>11.3f}"
                f"  {share:>7.3f}  {share_aio:>11.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds}, indent=2) + "\n", encoding="utf-8")
    print(f"bench_floor: {errors} errors")
    return 0 if errors == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight (32)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per phase (8)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the four servers (2)")
    parser.add_argument("--processes", type=int, default=2, help="client processes (2)")
    parser.add_argument("--workers", type=int, default=64, help="thread-pool size (64)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="paywarden-floor-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
