#!/usr/bin/env python3
"""The chaos run: cache and database faults injected in turn under a bounded, rate-limited
load, each measured against a baseline taken just before it; and a soak mode.

    python3 bench/chaos.py                   # every fault, release build (~8 min)
    python3 bench/chaos.py --only a,c,g      # some faults
    python3 bench/chaos.py --only j,k        # the failovers: Redis Cluster, then Sentinel
    python3 bench/chaos.py --smoke           # every fault briefly, debug build (<2 min; scripts/test)
    python3 bench/chaos.py --soak            # 10 min at half the measured maximum rate
    python3 bench/chaos.py --soak --soak-duration 60s
    python3 bench/chaos.py --write [--label "before the fixes"]   # also write RELIABILITY.md

Run it under `flock /tmp/cachelayer-cpu.lock` on a shared machine, like bench/load.py (whose
helpers it imports: free ports, pinning, apt installs, process stops, machine facts).

What it starts: one private redis-server on a free port (never the machine's 6379), two
`cachelayer serve` instances (A and B) sharing that Redis and one fresh PostgreSQL database
(`cachelayer_chaos_<pid>`, created on the server of --database-url or
CACHELAYER_TEST_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/postgres, dropped at
the end), and one `cachelayer proxy` in front of B on the same Redis (its key scope is its
upstream's origin), with a rules file giving /products a 30 s default TTL (serve sends no
Cache-Control, so without a rule the proxy would store nothing). Every server-side process
runs under `taskset -c 0`; this script, the load generator, pins itself to core 1.
PostgreSQL is the machine's and is not pinned.

The load: an open-loop asyncio generator (raw HTTP/1.1 keep-alive connections, a pool per
target) that schedules --rate requests per second: --writes of them are PATCHes, the rest
reads spread evenly over A, B and the proxy, 80% GET /products/{id} over a hot set of --hot
ids, 20% list pages GET /products?limit=20&offset=.. covering the hot set. Each write
(PATCH {"stock": N}, N from a counter that only grows, on A or B in turn) is preceded by a
list read of the page holding the product on the other instance (sent just before the
PATCH, so that it races the write) and followed, once the PATCH returned 200, by a read of
the product and of its page on the other instance. Every response's status, latency (from
its scheduled time to its last byte, so time spent waiting for a connection counts) and
X-Cache label is recorded, bucketed per second and per target.

Stale reads: a read through A or B sent after a PATCH of product p returned 200 must show
p's stock at least as new as that PATCH's (values only grow). A product read or a list page
showing an older one is a stale read. Reads through the proxy are not checked: the proxy
keeps what it stored for its TTL, by design (docs/consistency.md, proxy).

Errors: responses that are not 2xx (by status), and socket errors: `refused` (connect refused),
`connect` (other connect failures), `lost` (the request was written on a connection that
then closed or reset before a complete response: a request lost), `timeout` (no complete
response within 30 s). The generator stops sending to an instance before it sends it
SIGTERM, and sends again only once the restarted instance answers /health/ready, so a
`refused` or `lost` at a shutdown is the server's fault, not the generator's.

Each fault: the Redis state is reset (FLUSHALL, maxmemory 0) and the load runs --settle
unrecorded, then a --baseline, then the fault, then --recovery. The figures: requests, errors
and stale reads from the fault's start to the end of the recovery period; p99 latency in the
fault (its start to its end, at least 1 s); the time from the fault's end to a normal hit
ratio: the first second after which two consecutive one-second buckets (all targets' reads
together) have a hit ratio (X-Cache HIT or STALE) of at least 90% of the baseline's.

Faults (--only a,b,...):
  a  redis-server killed with SIGKILL, restarted empty on the same port after --redis-down
  b  every key overwritten with garbage as an operator's script would (`redis-cli --scan`, then
     SET key garbage for each through `redis-cli --pipe`: values, lock keys, tag versions,
     fences; TTLs stripped), rounds 0.1 s apart for --fault-duration (each round's garbage
     values make the next reads load, so later rounds find the loads' lock keys too)
  c  FLUSHALL
  d  DEBUG SLEEP 2 (Redis answers nothing for 2 s)
  e  Redis read-only: REPLICAOF of a port where nothing listens, then REPLICAOF NO ONE
  f  the database "stopped": the machine's PostgreSQL is shared and is never stopped, so the
     chaos database alone is closed (ALTER DATABASE .. ALLOW_CONNECTIONS false and
     pg_terminate_backend of its connections), then opened again
  g  SIGTERM of serve A under load, with --burst cold reads (products outside the hot set,
     each a database load) sent to A just before so that the signal finds requests in
     flight, then A started again
  h  Redis under maxmemory (a little below what it holds at the fault's start, so that it must
     evict) with allkeys-lru, for --fault-duration x 2
  i  A's wall clock 30 s behind (--skew; libfaketime, Debian's faketime package, installed if
     missing): A restarted under it, writes through A alone (the load's, plus --skew-writes a
     second) and list pages read through B just before (racing) and right after each, for
     --fault-duration x 2; then A restarted with the true clock
  j  Redis Cluster failover: A, B and the proxy on a local cluster of 3 primaries with 1 replica
     each (bench/redis_topology.py; --node-timeout, default 1 s; cluster-require-full-coverage
     no) instead of one Redis; one primary killed with SIGKILL (--victim: `tags`, the default,
     the primary holding serve's tag clock, so that every list page loses its cache too; or
     `other`, one that does not), left dead; the fault lasts until every running node agrees
     on a healthy cluster again
  k  Sentinel failover: A, B and the proxy on a local Sentinel set-up (1 primary, 1 replica,
     3 sentinels, quorum 2, --down-after, default 1 s) instead of one Redis; the primary
     killed with SIGKILL, left dead; the fault lasts until every sentinel names the promoted
     replica

Faults j and k run on their own Redis (a group of faults per deployment, each with fresh
servers; the database and the written stock counter carry over). Their extra figures, in a
table of their own: the time from the kill to the promotion (the replica reporting
role:master, polled every 50 ms) and to the whole deployment agreeing on it; the time from
the promotion to the first X-Cache HIT of a product read on the dead shard (a cluster: the
products whose keys hash to the killed primary's slots; Sentinel: every product), by send
time; the hit ratio per second of those reads around the kill (and of the other shards'); the
p99 of every request from the kill until the dead shard hits again (or the agreement, if
later; at least 1 s) against the baseline's.

Expected: no error in any Redis fault (a-e, h, j, k) nor under skew (i); only 503s for the
database (f); no request lost or refused at SIGTERM (g); no stale read, except in the
windows docs/consistency.md documents for a Redis down, hung or read-only (a, d, e: an
invalidation the store refused), for eviction (h) and for a failover (j, k: an invalidation
refused while the primary was down, or acknowledged by it and never replicated), which are
reported but not failures. The smoke run (--smoke: debug build, ~1-2 s per phase, every
fault; j and k, each on a deployment of its own, take ~26 s of it together) exits 1 when one
of these expectations fails; it never fails on timings.

Soak (--soak): a flat-out run first (--max-duration, 64 concurrent requests, the same mix)
measures the maximum rate; then, at half of it, a warm-up (a tenth of --soak-duration, at
most 60 s, unsampled: connection pools and caches settle) and --soak-duration, sampling the
RSS and open file descriptors of every server-side process every --soak-sample, each
reported as a least-squares slope per hour with its first and last value.

--write writes the run's section of RELIABILITY.md (chaos and soak have their own; --label
gives a run a section of its own, kept apart from unlabelled runs).
"""

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# As bench/profile.py: importing load.py must not leave bench/__pycache__ in the work tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # noqa: E402
import redis_topology  # noqa: E402

ROOT = load.ROOT
RELIABILITY = ROOT / "RELIABILITY.md"
HOST = "catalogue.test"  # one Host for every request: A and B share list pages, as behind a balancer
DEFAULT_PG = "postgres://postgres@127.0.0.1:5432/postgres"
FAKETIME_LIB_GLOB = "/usr/lib/*/faketime/libfaketime.so.1"
STOCK_BASE = 900_000_000  # written stock values: above any seeded one, below the 1e9 limit
CLIENT_TIMEOUT_S = 30.0
IDLE_CLOSE_S = 30.0  # close pooled connections idle this long (the servers' idle timeout is 60 s)
MAX_CONNS_PER_TARGET = 512
PAGE = 20

FAULTS = {
    "a": "Redis killed (SIGKILL), restarted on the same port",
    "b": "every key overwritten with garbage (scan + SET, TTLs stripped), repeatedly",
    "c": "FLUSHALL",
    "d": "DEBUG SLEEP 2",
    "e": "Redis read-only (REPLICAOF a dead port, then NO ONE)",
    "f": "database closed (ALLOW_CONNECTIONS false + backends terminated)",
    "g": "SIGTERM of serve A under load, then restarted",
    "h": "Redis maxmemory below its data, allkeys-lru",
    "i": "serve A's clock skewed (libfaketime), writes via A, lists via B",
    "j": "Redis Cluster 3+3: a primary killed (SIGKILL), its replica promoted",
    "k": "Sentinel: the primary killed (SIGKILL), the replica promoted",
}
# The Redis deployment a fault runs on (the others: one redis-server).
TOPOLOGY = {"j": "cluster", "k": "sentinel"}
# Faults whose stale reads fall in a window docs/consistency.md documents: reported, not failed.
STALE_DOCUMENTED = {
    "a": "an invalidation the store refused (Redis down, the writer's breaker still open)",
    "d": "an invalidation the store refused (hung Redis)",
    "e": "an invalidation the store refused (read-only Redis)",
    "h": "a load whose lock was evicted",
    "j": "an invalidation refused while the primary was down, or lost in asynchronous replication",
    "k": "an invalidation refused while the primary was down, or lost in asynchronous replication",
}
TARGETS = ("A", "B", "proxy")
SERVES = ("A", "B")

# Request kinds.
PRODUCT, LIST, WRITE, CHECK_PRODUCT, CHECK_LIST, RACE_LIST, CONFIRM = range(7)
KIND_NAMES = ("product", "list", "write", "check-product", "check-list", "race-list", "confirm")
READ_KINDS = {PRODUCT, LIST, CHECK_PRODUCT, CHECK_LIST, RACE_LIST, CONFIRM}
# A stale read sent within this long of the write's acknowledgement may be the near tier's
# propagation (docs/near-cache.md: a change leaves other instances' memory within a bounded
# time; BENCHMARKS.md's target is a p99 under 10 ms). Such a read is confirmed by a second
# read of the same URL on the same instance CONFIRM_AFTER_S later: fresh then, it was
# transient; still stale, it counts. A write acknowledged in between (any write drops every
# list page; a product's own write drops it) leaves it transient: later reads, past the
# window, catch an old copy that stayed.
PROPAGATION_S = 0.010
CONFIRM_AFTER_S = 0.030
FRESH, TRANSIENT, PERSISTENT = 0, 1, 2
# Socket-level outcomes, stored as negative statuses.
REFUSED, CONNECT_ERR, LOST, TIMEOUT = -1, -2, -3, -4
SOCKET_NAMES = {REFUSED: "refused", CONNECT_ERR: "connect", LOST: "lost", TIMEOUT: "timeout"}


def seconds(text):
    """'10s', '1.5s', '500ms', '10m', '1h' or a bare number of seconds."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|m|h)?\s*", str(text))
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}")
    value = float(match[1])
    return value * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[match[2]]


def log(message):
    print(f"chaos.py: {message}", file=sys.stderr, flush=True)


# --- HTTP/1.1 client -------------------------------------------------------------------------

class Failed(Exception):
    def __init__(self, code):
        super().__init__(SOCKET_NAMES[code])
        self.code = code
        self.fresh = True  # the connection had answered nothing before (or never opened)
        self.how = ""  # for a lost request: "closed" (FIN) or "reset"


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, the response parsed as it
    arrives (Content-Length, chunked, or delimited by the close)."""

    def __init__(self):
        self.transport = None
        self.buf = bytearray()
        self.fut = None
        self.closed = False
        self.used = 0  # responses received on it
        self.ended = None  # how the server ended it: "closed" (FIN) or "reset"
        self.last_used = time.monotonic()

    def connection_made(self, transport):
        self.transport = transport
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.buf += data
        if self.fut is not None:
            self._parse(eof=False)

    def eof_received(self):
        self.closed = True
        self.ended = self.ended or "closed"
        if self.fut is not None:
            self._parse(eof=True)
        return False

    def connection_lost(self, exc):
        self.closed = True
        self.ended = self.ended or ("reset" if exc else "closed")
        if self.fut is not None and not self.fut.done():
            self._parse(eof=True)
            if not self.fut.done():
                self.fut.set_exception(Failed(LOST))

    def request(self, raw):
        self.fut = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self.fut

    def close(self):
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _parse(self, eof):
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if eof and not self.fut.done():
                self.fut.set_exception(Failed(LOST))
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            if not self.fut.done():
                self.fut.set_exception(Failed(LOST))
            self.close()
            return
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        body = None
        if "content-length" in headers:
            length = int(headers["content-length"])
            if len(self.buf) - start >= length:
                body = bytes(self.buf[start:start + length])
                consumed = start + length
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body, consumed = _chunked(self.buf, start)
        elif status in (204, 304) or 100 <= status < 200:
            body, consumed = b"", start
        elif eof:
            body, consumed = bytes(self.buf[start:]), len(self.buf)
        if body is None:
            if eof and not self.fut.done():
                self.fut.set_exception(Failed(LOST))
            return
        del self.buf[:consumed]
        fut, self.fut = self.fut, None
        if headers.get("connection", "").lower() == "close":
            self.close()
        self.used += 1
        if not fut.done():
            fut.set_result((status, headers, body))


def _chunked(buf, pos):
    """(body, end) of a complete chunked body at buf[pos:], or (None, 0)."""
    out = bytearray()
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None, 0
        size = int(bytes(buf[pos:line_end]).split(b";")[0], 16)
        pos = line_end + 2
        if size == 0:
            # Trailers, then an empty line.
            while True:
                line_end = buf.find(b"\r\n", pos)
                if line_end < 0:
                    return None, 0
                if line_end == pos:
                    return bytes(out), pos + 2
                pos = line_end + 2
        if len(buf) < pos + size + 2:
            return None, 0
        out += buf[pos:pos + size]
        pos += size + 2


class Pool:
    """Keep-alive connections to one target: the most recently used first, so spare ones age
    out (closed here after IDLE_CLOSE_S, before the server's idle timeout could race a reuse);
    at most MAX_CONNS_PER_TARGET, beyond which requests wait for one."""

    def __init__(self, port):
        self.port = port
        self.idle = []
        self.open = 0
        self.connecting = 0
        self.waiters = collections.deque()

    async def acquire(self):
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed and now - conn.last_used < IDLE_CLOSE_S:
                return conn
            conn.close()
            self.open -= 1
        if self.open >= MAX_CONNS_PER_TARGET:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            conn = await waiter
            if conn is not None:
                return conn
        self.open += 1
        self.connecting += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(Conn, "127.0.0.1", self.port), timeout=5)
        except ConnectionRefusedError:
            self.open -= 1
            self._wake()
            raise Failed(REFUSED) from None
        except (OSError, asyncio.TimeoutError):
            self.open -= 1
            self._wake()
            raise Failed(CONNECT_ERR) from None
        finally:
            self.connecting -= 1
        return conn

    def release(self, conn, reusable):
        conn.last_used = time.monotonic()
        if reusable and not conn.closed:
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self.idle.append(conn)
        else:
            conn.close()
            self.open -= 1
            self._wake()

    def _wake(self):
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # room for a new connection
                return

    def close_all(self):
        for conn in self.idle:
            conn.close()
        self.open -= len(self.idle)
        self.idle.clear()


async def http(pool, method, path, body=None):
    """(status, headers, body); raises Failed."""
    conn = await pool.acquire()
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
    fut = conn.request(raw)
    try:
        result = await asyncio.wait_for(fut, CLIENT_TIMEOUT_S)
    except asyncio.TimeoutError:
        pool.release(conn, reusable=False)
        failed = Failed(TIMEOUT)
        failed.fresh = conn.used == 0
        raise failed from None
    except Failed as failed:
        pool.release(conn, reusable=False)
        failed.fresh = conn.used == 0
        failed.how = conn.ended or ""
        raise
    pool.release(conn, reusable=True)
    return result


# --- Records -----------------------------------------------------------------------------------

@dataclass(slots=True)
class Record:
    t: float          # scheduled send time, s since the run's start
    target: str
    kind: int
    status: int       # HTTP status, or a negative socket outcome
    latency: float    # s from the scheduled time to the last byte (or the failure)
    cache: str        # X-Cache label ("" when none); for a lost request, how it ended
    stale: int = 0    # FRESH, or TRANSIENT / PERSISTENT: older than an acknowledged write
    since: float = 0.0  # for a stale read: s from that write's acknowledgement to its sending
    fresh: bool = False  # a socket failure on a connection that had answered nothing yet
    pid: int = 0      # the product of a product read (0 for other requests)


@dataclass
class Phase:
    name: str
    start: float
    end: float = None


class Load:
    """The load generator and what it recorded."""

    def __init__(self, ports, rate, writes, hot, seed=1):
        self.pools = {name: Pool(port) for name, port in ports.items()}
        self.rate = rate
        self.writes = writes
        self.hot = hot
        self.rng = random.Random(seed)
        self.records = []
        self.t0 = time.monotonic()
        self.live = {name: True for name in ports}
        self.acked = {}               # product id -> newest stock acknowledged
        self.writing = set()          # product ids with a write in flight
        self.last_ack = 0.0           # when the last write was acknowledged
        self.list_latency = {}        # target -> moving average of its list reads' latency, s
        self.stock = STOCK_BASE
        self.writer_turn = 0
        self.writer_only = None       # fault i: every write through this instance
        self.running = False
        self.tasks = set()
        self.sent = 0
        self.lag = []                 # s between a request's scheduled time and its send
        self.inflight = collections.Counter()  # requests started and not finished, by target

    def now(self):
        return time.monotonic() - self.t0

    # -- targets --

    def readable(self):
        return [name for name in TARGETS if self.live.get(name)]

    def pair(self):
        """(writer, reader) among the live serve instances; the reader is the other one."""
        live = [name for name in SERVES if self.live[name]]
        if not live:
            return None, None
        if self.writer_only and self.live[self.writer_only]:
            writer = self.writer_only
        elif self.writer_only:
            return None, None
        else:
            self.writer_turn += 1
            writer = live[self.writer_turn % len(live)]
        others = [name for name in live if name != writer]
        return writer, (others[0] if others else writer)

    # -- requests --

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def call(self, target, kind, method, path, scheduled, body=None, expect=None, out=None, pid=0):
        """Sends one request and records it; returns (status, body) or (None, None). Nothing
        is sent to a target that is not live (being stopped or restarted)."""
        if not self.live.get(target):
            return None, None
        self.sent += 1
        self.inflight[target] += 1
        sent = self.now()
        self.lag.append(sent - scheduled)
        try:
            status, headers, data = await http(self.pools[target], method, path, body)
        except Failed as failed:
            self.records.append(Record(scheduled, target, kind, failed.code, self.now() - scheduled,
                                       failed.how, fresh=failed.fresh, pid=pid))
            return None, None
        finally:
            self.inflight[target] -= 1
        record = Record(scheduled, target, kind, status, self.now() - scheduled, headers.get("x-cache", ""),
                        pid=pid)
        if kind in (LIST, RACE_LIST, CHECK_LIST):
            previous = self.list_latency.get(target, record.latency)
            self.list_latency[target] = 0.9 * previous + 0.1 * record.latency
        if expect and status == 200 and target in SERVES:
            acked_at = self.is_stale(data, expect)
            if acked_at is not None:
                record.since = sent - acked_at
                if kind == CONFIRM:
                    record.stale = PERSISTENT  # only read by the confirmation below, never counted
                elif record.since < PROPAGATION_S:
                    record.stale = TRANSIENT
                    self.spawn(self.confirm(record, target, path, expect, sent))
                else:
                    record.stale = PERSISTENT
        self.records.append(record)
        if out is not None:
            out.append(record)
        return status, data

    async def confirm(self, record, target, path, expect, sent):
        """A second read of a stale read's URL: still stale, and the first read was not
        transient. When a write was acknowledged in between, the second read cannot tell (that
        write may have dropped the old copy itself); the first stays transient, being inside
        the near tier's window, and an old copy that outlived it is caught by the reads that
        follow, which are past the window and count."""
        await asyncio.sleep(CONFIRM_AFTER_S)
        out = []
        await self.call(target, CONFIRM, "GET", path, self.now(), expect=expect, out=out)
        if "?" in path:
            intervened = self.last_ack > sent
        else:
            intervened = any(self.acked[pid][1] > sent for pid in expect)
        if intervened:
            return
        if not out or out[0].status != 200 or out[0].stale:
            record.stale = PERSISTENT

    def expectation(self, kind, path_ids):
        """What a read sent now must show at least: {id: (stock, acknowledged at)} for the ids
        it covers that have acknowledged writes."""
        return {pid: self.acked[pid] for pid in path_ids if pid in self.acked} or None

    @staticmethod
    def is_stale(data, expect):
        """None when the body shows every expected product at least as new as expected, else
        the acknowledgement time of the newest write it misses."""
        try:
            doc = json.loads(data)
        except ValueError:
            return None  # an unparsable body is not a stale one; its status said 200, though
        items = doc.get("items") if isinstance(doc, dict) and "items" in doc else [doc]
        missed = None
        for item in items:
            if isinstance(item, dict) and item.get("id") in expect:
                value, acked_at = expect[item["id"]]
                if not isinstance(item.get("stock"), int) or item["stock"] < value:
                    missed = acked_at if missed is None else max(missed, acked_at)
        return missed

    async def read_product(self, target, pid, scheduled, kind=PRODUCT):
        expect = self.expectation(kind, [pid])
        await self.call(target, kind, "GET", f"/products/{pid}", scheduled, expect=expect, pid=pid)

    async def read_page(self, target, offset, scheduled, kind=LIST):
        expect = self.expectation(kind, range(offset + 1, offset + PAGE + 1))
        await self.call(target, kind, "GET", f"/products?limit={PAGE}&offset={offset}", scheduled,
                        expect=expect)

    async def write(self, scheduled):
        writer, reader = self.pair()
        if writer is None:
            return
        # One write per product at a time: two in flight could commit in either order, and the
        # older value could then rightly be the newest in the database.
        pid = self.rng.randint(1, self.hot)
        while pid in self.writing:
            pid = self.rng.randint(1, self.hot)
        self.writing.add(pid)
        try:
            await self.write_one(scheduled, writer, reader, pid)
        finally:
            self.writing.discard(pid)

    async def write_one(self, scheduled, writer, reader, pid):
        offset = (pid - 1) // PAGE * PAGE
        # A list read on the reader racing the write, then the write, then the checks. The
        # write goes out a random part of a typical list read's time later, so that its commit
        # and invalidation land while the racing read is being answered.
        self.spawn(self.read_page(reader, offset, self.now(), RACE_LIST))
        await asyncio.sleep(self.rng.uniform(0, self.list_latency.get(reader, 0.002)))
        scheduled = self.now()
        self.stock += 1
        value = self.stock
        status, _ = await self.call(writer, WRITE, "PATCH", f"/products/{pid}", scheduled,
                                    body=json.dumps({"stock": value}).encode())
        if status != 200:
            return
        self.acked[pid] = (value, self.now())  # writes of one product are never concurrent
        self.last_ack = self.now()
        if not self.live.get(reader):
            return
        now = self.now()
        await asyncio.gather(self.read_product(reader, pid, now, CHECK_PRODUCT),
                             self.read_page(reader, offset, now, CHECK_LIST))

    def one(self, scheduled, write):
        if write:
            self.spawn(self.write(scheduled))
            return
        targets = self.readable()
        if not targets:
            return
        target = targets[self.rng.randrange(len(targets))]
        if self.rng.random() < 0.8:
            self.spawn(self.read_product(target, self.rng.randint(1, self.hot), scheduled))
        else:
            offset = self.rng.randrange((self.hot + PAGE - 1) // PAGE) * PAGE
            self.spawn(self.read_page(target, offset, scheduled))

    async def run_open(self, stop_event):
        """Open loop: --rate requests per second on a fixed schedule until stop_event."""
        self.running = True
        interval = 1.0 / self.rate
        write_every = max(1, round(self.rate / self.writes)) if self.writes > 0 else 0
        i = 0
        start = self.now()
        while not stop_event.is_set():
            scheduled = start + i * interval
            delay = scheduled - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
                if stop_event.is_set():
                    break
            else:
                await asyncio.sleep(0)  # behind schedule: still let the requests run
            self.one(scheduled, write_every and i % write_every == write_every - 1)
            i += 1
        self.running = False

    async def run_closed(self, duration, concurrency):
        """Flat out: concurrency loops each sending the same mix back to back; the requests
        sent per second."""
        end = self.now() + duration
        sent0 = self.sent

        async def worker(n):
            i = n
            while self.now() < end:
                i += concurrency
                scheduled = self.now()
                if self.writes and i % max(1, round(self.rate / self.writes)) == 0:
                    await self.write(scheduled)
                else:
                    targets = self.readable()
                    target = targets[i % len(targets)]
                    if self.rng.random() < 0.8:
                        await self.read_product(target, self.rng.randint(1, self.hot), scheduled)
                    else:
                        await self.read_page(target, self.rng.randrange(self.hot // PAGE) * PAGE, scheduled)

        start = self.now()
        await asyncio.gather(*(worker(n) for n in range(concurrency)))
        await self.drain()
        return (self.sent - sent0) / (self.now() - start)

    async def drain(self, timeout=CLIENT_TIMEOUT_S + 5):
        deadline = time.monotonic() + timeout
        while self.tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)


# --- Servers -------------------------------------------------------------------------------------

class Servers:
    """Redis (one redis-server, a Redis Cluster or a Sentinel set-up, as topology says), serve
    A and B, the proxy: started, restarted and stopped by PID."""

    def __init__(self, args, binary, workdir, database_url, topology="single"):
        self.args = args
        self.binary = binary
        self.workdir = Path(workdir)
        self.database_url = database_url
        self.topology = topology
        self.server_core, self.load_core = (0, 1) if (os.cpu_count() or 1) >= 2 else (0, 0)
        self.redis = None
        self.cluster = None
        self.sentinel = None
        self.redis_port = load.free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.ports = {"A": load.free_port(), "B": load.free_port(), "proxy": load.free_port()}
        self.admin_port = load.free_port()
        self.procs = {}
        self.faketime_lib = None
        self.admin_url = None
        self.rules = self.workdir / "proxy-rules.toml"
        self.rules.write_text('[[rules]]\npath = "/products"\ndefault_ttl = "30s"\n')

    def spawn(self, argv, name, env=None):
        logfile = open(self.workdir / f"{name}.log", "a")
        try:
            return subprocess.Popen(load.pinned(self.server_core, [str(a) for a in argv]),
                                    stdout=logfile, stderr=subprocess.STDOUT,
                                    env=env or load.SERVER_ENV)
        finally:
            logfile.close()

    # -- Redis --

    def start_redis(self):
        if self.topology == "cluster":
            self.cluster = redis_topology.RedisCluster(
                self.spawn, self.workdir / "cluster", node_timeout_ms=round(self.args.node_timeout * 1000))
            took = self.cluster.start()
            self.redis_url = self.cluster.url()
            log(f"Redis Cluster of 3 primaries + 3 replicas formed in {took:.1f} s: {self.redis_url}")
            return
        if self.topology == "sentinel":
            self.sentinel = redis_topology.RedisSentinel(
                self.spawn, self.workdir / "sentinel", down_after_ms=round(self.args.down_after * 1000))
            took = self.sentinel.start()
            self.redis_url = self.sentinel.url()
            log(f"Sentinel set-up (1 primary, 1 replica, 3 sentinels) settled in {took:.1f} s: {self.redis_url}")
            return
        self.redis = self.spawn(["redis-server", "--port", self.redis_port, "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", self.workdir,
                                 "--enable-debug-command", "local"], "redis")
        deadline = time.time() + 20
        while self.redis_cli("PING").strip() != "PONG":
            if self.redis.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.redis_port}")
            time.sleep(0.05)

    def redis_cli(self, *args, check=False):
        result = subprocess.run(["redis-cli", "-p", str(self.redis_port), *map(str, args)],
                                capture_output=True, text=True)
        if check and (result.returncode or result.stdout.startswith(("ERR", "(error)"))):
            raise RuntimeError(f"redis-cli {' '.join(map(str, args))}: {result.stdout}{result.stderr}")
        return result.stdout

    def kill_redis(self):
        self.redis.send_signal(signal.SIGKILL)
        self.redis.wait()

    def redis_info(self, section):
        info = {}
        for line in self.redis_cli("INFO", section).splitlines():
            key, _, value = line.partition(":")
            info[key] = value.strip()
        return info

    def data_ports(self):
        """The ports holding the data now: the primaries of a cluster, the Sentinel set-up's
        current primary, or the one redis-server."""
        if self.cluster is not None:
            return self.cluster.primary_ports()
        if self.sentinel is not None:
            return [self.sentinel.primary_port()]
        return [self.redis_port]

    def reset(self):
        """Empty, and no memory limit (fault h sets one) on the one redis-server."""
        if self.cluster is not None:
            self.cluster.flushall()
        elif self.sentinel is not None:
            redis_topology.cli(self.sentinel.primary_port(), "FLUSHALL", timeout=10)
        else:
            self.redis_cli("CONFIG", "SET", "maxmemory", "0")
            self.redis_cli("FLUSHALL")

    def dbsize(self):
        """Keys held, over every primary; None when a primary did not answer."""
        try:
            return sum(int(redis_topology.cli(port, "DBSIZE") or 0) for port in self.data_ports())
        except (redis_topology.Unavailable, ValueError):
            return None

    def keys_without_ttl(self):
        """keys_without_ttl over every primary, summed."""
        total = forever = locks = 0
        kinds = collections.Counter()
        for port in self.data_ports():
            t, f, lk, k = keys_without_ttl(port)
            total, forever, locks = total + t, forever + f, locks + lk
            kinds.update(k)
        return total, forever, locks, dict(kinds)

    def redis_processes(self):
        """{name: Popen} of the Redis processes that must stay up."""
        if self.cluster is not None:
            return {f"redis-{node.port}": node.process for node in self.cluster.nodes if not node.killed}
        if self.sentinel is not None:
            procs = {f"redis-{node.port}": node.process for node in self.sentinel.data if not node.killed}
            procs.update({f"sentinel-{s['port']}": s["process"] for s in self.sentinel.sentinels})
            return procs
        return {"redis": self.redis}

    # -- serve and proxy --

    def serve_argv(self, name):
        return [self.binary, "serve", "--listen", f"127.0.0.1:{self.ports[name]}",
                "--database-url", self.database_url, "--redis-url", self.redis_url,
                "--seed", "1000", "--db-pool-size", "5", "--workers", "1", "--log", "warn"]

    def start_serve(self, name, skew=None):
        env = None
        if skew:
            # Only the wall clock: a host's skew moves its CLOCK_REALTIME, not its monotonic clock.
            env = dict(load.SERVER_ENV, LD_PRELOAD=self.faketime(), FAKETIME=skew,
                       FAKETIME_DONT_FAKE_MONOTONIC="1")
        self.procs[name] = self.spawn(self.serve_argv(name), name, env)

    def start_proxy(self):
        self.procs["proxy"] = self.spawn(
            [self.binary, "proxy", "--upstream", f"http://127.0.0.1:{self.ports['B']}",
             "--listen", f"127.0.0.1:{self.ports['proxy']}",
             "--admin-listen", f"127.0.0.1:{self.admin_port}", "--redis-url", self.redis_url,
             "--rules", self.rules, "--workers", "1", "--log", "warn"], "proxy")

    def wait_ready(self, name, deadline_s=120):
        if name == "proxy":
            load.wait_http(f"http://127.0.0.1:{self.admin_port}/health/ready", [self.procs[name]], deadline_s)
        else:
            load.wait_http(f"http://127.0.0.1:{self.ports[name]}/health/ready", [self.procs[name]], deadline_s)

    def faketime(self):
        if self.faketime_lib is None:
            found = sorted(Path("/").glob(FAKETIME_LIB_GLOB.lstrip("/")))
            if not found:
                load.ensure("faketime", "faketime")
                found = sorted(Path("/").glob(FAKETIME_LIB_GLOB.lstrip("/")))
            if not found:
                raise SystemExit("chaos.py: libfaketime.so.1 not found after installing faketime")
            self.faketime_lib = str(found[0])
        return self.faketime_lib

    def server_pids(self):
        pids = {name: proc.pid for name, proc in self.procs.items() if proc.poll() is None}
        if self.redis is not None and self.redis.poll() is None:
            pids["redis"] = self.redis.pid
        if self.cluster is not None:
            pids.update(self.cluster.pids())
        if self.sentinel is not None:
            pids.update(self.sentinel.pids())
        return pids

    def stop_all(self):
        load.stop(list(self.procs.values()) + [self.redis])
        for deployment in (self.cluster, self.sentinel):
            if deployment is not None:
                deployment.stop()

    def print_logs(self):
        logs = sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("*/*/redis.log")) + \
            sorted(self.workdir.glob("*/*/sentinel.log"))
        for logfile in logs:
            text = logfile.read_text(errors="replace").strip()
            if text:
                print(f"--- {logfile.name}:\n" + "\n".join(text.splitlines()[-15:]), file=sys.stderr)


def resp(args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def resp_read(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind in (b"+", b"-"):
        return rest
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2]
    if kind == b"*":
        return [resp_read(f) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected Redis reply {line!r}")


def keys_without_ttl(port):
    """(keys, keys without a TTL, lock keys without a TTL) in the Redis on port, by SCAN and a
    pipeline of TTL: what a fault left behind that will never expire."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock, sock.makefile("rb") as f:
        keys, cursor = [], b"0"
        while True:
            sock.sendall(resp([b"SCAN", cursor, b"COUNT", b"1000"]))
            cursor, batch = resp_read(f)
            keys += batch
            if cursor == b"0":
                break
        sock.sendall(b"".join(resp([b"TTL", key]) for key in keys))
        ttls = [resp_read(f) for _ in keys]
    forever = [key for key, ttl in zip(keys, ttls) if ttl == -1]
    kinds = collections.Counter(key_kind(key) for key in forever)
    return len(keys), len(forever), kinds.get("lock", 0), dict(kinds)


def key_kind(key):
    """'lock', or the first part of the key after its namespace ('product', 'tag', ...)."""
    text = key.decode("latin-1")
    if ":lock:" in text:
        return "lock"
    parts = text.split(":")
    skip = 2 if len(parts) > 2 and re.fullmatch(r"v\d+", parts[1]) else 1  # namespace, version
    return parts[skip] if len(parts) > skip else text


def crc16(data):
    """CRC16-CCITT (XMODEM), Redis Cluster's key hash."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of(key):
    """A key's hash slot: of its hash tag (the text between the first { and the next }, when
    not empty), else of the whole key."""
    data = key.encode()
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return crc16(data) % redis_topology.SLOTS


# --- PostgreSQL ----------------------------------------------------------------------------------

def psql(url, sql):
    result = subprocess.run(["psql", "-w", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", sql],
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"psql: {sql}: {result.stderr.strip()}")
    return result.stdout.strip()


def database_urls(args):
    """(admin URL, the chaos database's name, its URL)."""
    base = args.database_url or os.environ.get("CACHELAYER_TEST_POSTGRES_URL") or DEFAULT_PG
    parts = urllib.parse.urlsplit(base)
    name = f"cachelayer_chaos_{os.getpid()}"
    admin = urllib.parse.urlunsplit(parts._replace(path="/postgres"))
    return admin, name, urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


# --- Faults ----------------------------------------------------------------------------------------

class Run:
    """One chaos or soak run: servers, load, phases."""

    def __init__(self, args, servers, admin_url, db_name):
        self.args = args
        self.s = servers
        self.admin_url = admin_url
        self.db_name = db_name
        self.load = None
        self.phases = []
        self.notes = collections.defaultdict(list)
        self.left = {}  # fault -> (keys, keys without TTL, lock keys without TTL) at the end
        self.failover = {}  # fault j or k -> its events (times on the load's clock) and the dead shard

    def mark(self, name):
        phase = Phase(name, self.load.now())
        if self.phases and self.phases[-1].end is None:
            self.phases[-1].end = phase.start
        self.phases.append(phase)
        return phase

    def close_phase(self):
        if self.phases and self.phases[-1].end is None:
            self.phases[-1].end = self.load.now()

    async def thread(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def reset_redis(self):
        await self.thread(self.s.reset)

    async def stop_serve(self, name, burst=0):
        """Stops sending to name (no request starts after this; connections being opened
        finish first), then SIGTERM; its exit status. With burst, that many reads of products
        outside the hot set (cold: each loads from the database) are sent to it first, so that
        the signal finds requests in flight."""
        pool = self.load.pools[name]
        now = self.load.now()
        for pid in range(self.load.hot + 1, self.load.hot + 1 + burst):
            self.load.spawn(self.load.read_product(name, pid, now))
        await asyncio.sleep(0)
        self.load.live[name] = False
        deadline = time.monotonic() + 5
        await asyncio.sleep(0)
        while pool.connecting and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        for _ in range(3):
            await asyncio.sleep(0)  # the coroutines whose connections just opened write
        proc = self.s.procs[name]
        self.signalled = (self.load.inflight[name], pool.open)
        proc.send_signal(signal.SIGTERM)
        try:
            code = await self.thread(proc.wait, self.args.shutdown_wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = await self.thread(proc.wait)
            self.notes["g"].append(f"{name} did not exit within {self.args.shutdown_wait:.0f} s of SIGTERM; killed")
        self.load.pools[name].close_all()
        return code

    async def start_serve(self, name, skew=None):
        started = time.monotonic()
        self.s.start_serve(name, skew)
        await self.thread(self.s.wait_ready, name)
        self.load.live[name] = True
        return time.monotonic() - started

    async def fault(self, key):
        a = self.args
        hold = a.fault_duration
        if key == "a":
            await self.thread(self.s.kill_redis)
            await asyncio.sleep(a.redis_down)
            await self.thread(self.s.start_redis)
        elif key == "b":
            end = time.monotonic() + hold
            rounds = keys = 0
            while time.monotonic() < end:
                keys += await self.thread(self.garbage_round)
                rounds += 1
                await asyncio.sleep(0.1)
            self.notes[key].append(f"{rounds} rounds, {keys} keys overwritten in all")
        elif key == "c":
            await self.thread(self.s.redis_cli, "FLUSHALL")
        elif key == "d":
            out = await self.thread(self.s.redis_cli, "DEBUG", "SLEEP", "2")
            if "ERR" in out:  # DEBUG refused: the same hang by SIGSTOP
                self.notes[key].append(f"DEBUG refused ({out.strip()}); SIGSTOP for 2 s instead")
                self.s.redis.send_signal(signal.SIGSTOP)
                await asyncio.sleep(2)
                self.s.redis.send_signal(signal.SIGCONT)
        elif key == "e":
            dead = load.free_port()
            await self.thread(self.s.redis_cli, "REPLICAOF", "127.0.0.1", dead)
            await asyncio.sleep(hold)
            await self.thread(self.s.redis_cli, "REPLICAOF", "NO", "ONE")
        elif key == "f":
            await self.thread(psql, self.admin_url, f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS false')
            killed = await self.thread(psql, self.admin_url,
                                       "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                       f"WHERE datname = '{self.db_name}'")
            self.notes[key].append(f"{killed} backends terminated")
            await asyncio.sleep(hold)
            await self.thread(psql, self.admin_url, f'ALTER DATABASE "{self.db_name}" ALLOW_CONNECTIONS true')
        elif key == "g":
            code = await self.stop_serve("A", burst=self.args.burst)
            inflight, conns = self.signalled
            self.notes[key].append(f"{self.args.burst} cold reads sent to A just before; at SIGTERM {inflight} requests "
                                   f"in flight on A, {conns} connections open to it; "
                                   f"A exited with status {code}")
            took = await self.start_serve("A")
            self.notes[key].append(f"restarted and ready in {took:.1f} s")
        elif key == "h":
            info = await self.thread(self.s.redis_info, "memory")
            used, dataset = int(info["used_memory"]), int(info.get("used_memory_dataset", 0))
            limit = max(used - dataset // 2, 1 << 20)
            before = int((await self.thread(self.s.redis_info, "stats")).get("evicted_keys", 0))
            await self.thread(self.s.redis_cli, "CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
            await self.thread(self.s.redis_cli, "CONFIG", "SET", "maxmemory", limit)
            await asyncio.sleep(hold * 2)
            after = int((await self.thread(self.s.redis_info, "stats")).get("evicted_keys", 0))
            await self.thread(self.s.redis_cli, "CONFIG", "SET", "maxmemory", "0")
            self.notes[key].append(f"maxmemory {limit / 2**20:.2f} MiB (Redis held {used / 2**20:.2f} MiB, "
                                   f"{dataset / 2**20:.2f} MiB of data); {after - before} keys evicted")
        elif key == "i":
            await self.stop_serve("A")
            await self.start_serve("A", skew=a.skew)
            self.load.writer_only = "A"
            # Besides the load's own writes, --skew-writes more a second through A, each with
            # its racing and checking list reads on B: the window is a race, so give it chances.
            end = time.monotonic() + hold * 2
            writes = 0
            while time.monotonic() < end:
                self.load.spawn(self.load.write(self.load.now()))
                writes += 1
                await asyncio.sleep(1 / a.skew_writes)
            self.load.writer_only = None
            await self.stop_serve("A")
            await self.start_serve("A")
            self.notes[key].append(f"FAKETIME={a.skew} on A ({self.s.faketime_lib}); {writes} extra writes through A")
        elif key == "j":
            await self.thread(self.cluster_failover, key)
        elif key == "k":
            await self.thread(self.sentinel_failover, key)

    def product_keys(self, port):
        """{product id: its key} of the product keys `serve` stored on the node on port (SCAN)."""
        out = redis_topology.cli(port, "--scan", "--pattern", "*:product:*", timeout=10)
        keys = {}
        for key in out.split():
            last = key.rsplit(":", 1)[-1]
            if last.isdigit():
                keys[int(last)] = key
        return keys

    def cluster_failover(self, key):
        """Fault j (in a thread): the victim primary killed, then its replica's promotion and
        the cluster's agreement polled; the events on the load's clock."""
        cluster = self.s.cluster
        primaries = cluster.primary_ports()
        tags = {}
        for port in primaries:
            out = redis_topology.cli(port, "--scan", "--pattern", "*tags}*", timeout=10)
            tags[port] = len(out.split())
        tag_primary = max(primaries, key=lambda port: tags[port])
        victim = tag_primary if self.args.victim == "tags" else next(p for p in primaries if p != tag_primary)
        replica = cluster.replica_of(victim)
        ranges = cluster.slots_of(victim)
        sample = self.product_keys(victim)
        if not sample:
            raise RuntimeError(f"no product key found on the victim primary {victim}")
        prefix = next(iter(sample.values())).rsplit(":", 1)[0] + ":"
        def on_victim(key):
            return any(first <= slot_of(key) <= last for first, last in ranges)
        dead = {pid for pid in range(1, self.load.hot + 1) if on_victim(f"{prefix}{pid}")}
        # Every key found there must be where the slots computed here put it (a product
        # outside the hot set may be cached too: it is checked, not counted).
        misplaced = sorted(key for key in sample.values() if not on_victim(key))
        if misplaced:
            raise RuntimeError(f"the slots computed here disagree with where the keys are: {misplaced[:5]} "
                               f"found on {victim}, whose slots are {ranges}")
        events = {"victim": victim, "replica": replica, "dead": dead, "tags_on_victim": victim == tag_primary,
                  "slots": sum(last - first + 1 for first, last in ranges), "keys_on_victim": sample}
        events["kill"] = self.load.now()
        cluster.node(victim).kill()
        redis_topology.wait_until(
            lambda: None if redis_topology.info(replica, "replication").get("role") == "master" else "not yet",
            60, f"replica {replica} was not promoted")
        events["promoted"] = self.load.now()
        cluster.wait_healthy(60)
        events["agreed"] = self.load.now()
        self.failover[key] = events
        self.notes[key].append(
            f"killed primary {victim} ({events['slots']} slots, {len(dead)} of the {self.load.hot} hot products"
            + (", and serve's tag clock: every list page" if events["tags_on_victim"] else ", not the tag clock")
            + f"); replica {replica} promoted {events['promoted'] - events['kill']:.2f} s after the kill, "
            f"every node agreeing {events['agreed'] - events['kill']:.2f} s after it")

    def sentinel_failover(self, key):
        """Fault k (in a thread): the primary killed, then the replica's promotion and the
        sentinels' agreement polled; the events on the load's clock."""
        sentinel = self.s.sentinel
        victim = sentinel.primary_port()
        replica = next(port for port in sentinel.data_ports() if port != victim)
        events = {"victim": victim, "replica": replica, "dead": set(range(1, self.load.hot + 1))}
        events["kill"] = self.load.now()
        sentinel.node(victim).kill()
        redis_topology.wait_until(
            lambda: None if redis_topology.info(replica, "replication").get("role") == "master" else "not yet",
            60, f"replica {replica} was not promoted")
        events["promoted"] = self.load.now()
        redis_topology.wait_until(lambda: sentinel.failed_over_problem(victim), 60, "the sentinels did not agree")
        events["agreed"] = self.load.now()
        self.failover[key] = events
        self.notes[key].append(
            f"killed primary {victim} (down-after {self.args.down_after * 1000:.0f} ms); replica {replica} promoted "
            f"{events['promoted'] - events['kill']:.2f} s after the kill, every sentinel naming it "
            f"{events['agreed'] - events['kill']:.2f} s after it")

    def garbage_round(self):
        """One pass of the operator's script: every key listed with `redis-cli --scan`, then
        `SET key garbage` for each, pipelined through `redis-cli --pipe`."""
        listed = subprocess.run(["redis-cli", "-p", str(self.s.redis_port), "--scan"],
                                capture_output=True).stdout
        keys = [key for key in listed.split(b"\n") if key]
        if not keys:
            return 0
        payload = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$7\r\ngarbage\r\n" % (len(k), k) for k in keys)
        subprocess.run(["redis-cli", "-p", str(self.s.redis_port), "--pipe"], input=payload,
                       capture_output=True)
        return len(keys)

    def health(self, name):
        port = self.s.admin_port if name == "proxy" else self.s.ports[name]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return json.loads(response.read()).get("status")
        except (OSError, ValueError) as err:
            return getattr(err, "code", None) and "unhealthy" or "unanswered"

    async def wait_healthy(self, key):
        """Until A, B and the proxy report `healthy` on /health and Redis holds keys again
        (cachelayer is storing), within --healthy-wait: a fault's recovery must not spill into
        the next fault's baseline. Notes how long it took, or that it did not happen."""
        started = time.monotonic()
        while True:
            states = {name: await self.thread(self.health, name) for name in TARGETS}
            size = await self.thread(self.s.dbsize)
            ok = all(state == "healthy" for state in states.values()) and bool(size)
            waited = time.monotonic() - started
            if ok:
                if waited > 1:
                    self.notes[key].append(f"waited {waited:.1f} s before the baseline for every instance to "
                                           "report healthy and Redis to hold keys again")
                return
            if waited > self.args.healthy_wait:
                self.notes[key].append(f"NOT healthy {waited:.0f} s after the reset (health {states}, "
                                       f"Redis keys {size}); baseline taken anyway")
                return
            await asyncio.sleep(0.2)

    async def chaos(self, keys):
        a = self.args
        for key in keys:
            await self.reset_redis()
            self.mark(f"{key}:settle")
            await self.wait_healthy(key)
            await asyncio.sleep(a.settle)
            self.mark(f"{key}:baseline")
            await asyncio.sleep(a.baseline)
            log(f"fault {key}: {FAULTS[key]}")
            self.mark(f"{key}:fault")
            try:
                await self.fault(key)
            finally:
                self.load.writer_only = None
            self.mark(f"{key}:recovery")
            await asyncio.sleep(a.recovery)
            self.close_phase()
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                self.left[key] = await self.thread(self.s.keys_without_ttl)
            for name, proc in list(self.s.procs.items()) + list(self.s.redis_processes().items()):
                if proc.poll() is not None and self.load.live.get(name, True):
                    raise RuntimeError(f"{name} exited (status {proc.returncode}) during fault {key}")


# --- Results -------------------------------------------------------------------------------------

def p99(values):
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def hit(record):
    return record.cache in ("HIT", "STALE")


def ms(value):
    return "—" if value is None else f"{value * 1000:.1f} ms"


def in_window(records, start, end):
    return [r for r in records if start <= r.t < end]


def error_summary(records):
    counts = collections.Counter()
    for r in records:
        if r.status < 0:
            counts[SOCKET_NAMES[r.status]] += 1
        elif not 200 <= r.status < 300:
            counts[str(r.status)] += 1
    return counts


def hit_ratio(records):
    reads = [r for r in records if r.kind in READ_KINDS]
    return (sum(map(hit, reads)) / len(reads)) if reads else None


def analyse(run, keys):
    """One row per fault."""
    phases = {p.name: p for p in run.phases}
    records = sorted(run.load.records, key=lambda r: r.t)
    rows = []
    for key in keys:
        base, fault, rec = phases[f"{key}:baseline"], phases[f"{key}:fault"], phases[f"{key}:recovery"]
        baseline = in_window(records, base.start, base.end)
        window = in_window(records, fault.start, rec.end)
        during = in_window(records, fault.start, max(fault.end, fault.start + 1))
        after = in_window(records, fault.end, rec.end)
        writes = [r.latency for r in window if r.kind == WRITE]
        base_ratio = hit_ratio(baseline)
        recovery = None
        if base_ratio is not None:
            normal = []
            k = 0
            while fault.end + k + 1 <= rec.end:
                ratio = hit_ratio(in_window(records, fault.end + k, fault.end + k + 1))
                normal.append(ratio is not None and ratio >= 0.9 * base_ratio)
                if len(normal) >= 2 and normal[-1] and normal[-2]:
                    recovery = k - 1
                    break
                k += 1
        errors = error_summary(window)
        stale = [r for r in window if r.stale and r.kind != CONFIRM]
        persistent = [r for r in stale if r.stale == PERSISTENT]
        for r in persistent[:3]:
            run.notes[key].append(f"stale: {KIND_NAMES[r.kind]} on {r.target} at fault start {r.t - fault.start:+.2f} s, "
                                  f"X-Cache {r.cache or 'none'}, sent {r.since * 1000:.1f} ms after the write's 200")
        lost = [r for r in window if r.status == LOST]
        if lost:
            run.notes[key].append(f"{len(lost)} lost ({sum(r.fresh for r in lost)} the first request on a new "
                                  f"connection; the server {dict(collections.Counter(r.cache or '?' for r in lost))} "
                                  f"the connection; by target {dict(collections.Counter(r.target for r in lost))}, "
                                  f"by kind {dict(collections.Counter(KIND_NAMES[r.kind] for r in lost))})")
        rows.append({
            "fault": key,
            "what": FAULTS[key],
            "requests": len(window),
            "errors": dict(errors),
            "baseline_errors": dict(error_summary(baseline)),
            "baseline_stale": sum(r.stale == PERSISTENT and r.kind != CONFIRM for r in baseline),
            "baseline_transient": sum(r.stale == TRANSIENT and r.kind != CONFIRM for r in baseline),
            "lost": errors.get("lost", 0),
            "refused": errors.get("refused", 0),
            "p99_baseline_s": p99([r.latency for r in baseline]),
            "p99_fault_s": p99([r.latency for r in during]),
            "max_fault_s": max((r.latency for r in during), default=None),
            "p99_recovery_s": p99([r.latency for r in after]),
            "p99_write_s": p99(writes),
            "max_write_s": max(writes, default=None),
            "left": run.left.get(key),
            "stale": len(stale),
            "persistent": len(persistent),
            "stale_product": sum(r.kind in (PRODUCT, CHECK_PRODUCT) for r in persistent),
            "stale_list": sum(r.kind in (LIST, CHECK_LIST, RACE_LIST) for r in persistent),
            "stale_checks": sum(r.kind in (CHECK_PRODUCT, CHECK_LIST) for r in persistent),
            "baseline_hit_ratio": base_ratio,
            "fault_hit_ratio": hit_ratio(during),
            "fault_s": fault.end - fault.start,
            "recovery_window_s": rec.end - fault.end,
            "recovery_s": recovery,
            "failover": failover_figures(run.failover.get(key), records, baseline),
            "notes": run.notes.get(key, []),
        })
        rows[-1]["verdict"] = verdict(rows[-1])
        rows[-1]["warnings"] = warnings(rows[-1])
    return rows


def failover_figures(events, records, baseline):
    """For faults j and k: times from the kill to the promotion and to the agreement; from the
    promotion to the first hit of a product read (serve A or B) on the dead shard, by send
    time; hit ratios per second around the kill; p99 from the kill until the dead shard hits
    again (or the agreement, whichever is later) against the baseline's."""
    if not events:
        return None
    kill, promoted, agreed, dead = events["kill"], events["promoted"], events["agreed"], events["dead"]
    product_reads = [r for r in records if r.kind in (PRODUCT, CHECK_PRODUCT) and r.target in SERVES]
    on_dead = [r for r in product_reads if r.pid in dead]
    on_others = [r for r in product_reads if r.pid not in dead]
    first_hit = next((r.t for r in on_dead if r.t >= promoted and hit(r)), None)
    between = [r for r in on_dead if kill <= r.t < promoted]
    last_hit = max((r.t for r in between if hit(r)), default=None)
    first_miss = next((r.t for r in on_dead if r.t >= kill and not hit(r)), None)
    event_end = max(agreed, first_hit if first_hit is not None else agreed, kill + 1)
    event = in_window(records, kill, event_end)
    per_second = []
    for k in range(-2, 9):
        dead_ratio = hit_ratio(in_window(on_dead, kill + k, kill + k + 1))
        other_ratio = hit_ratio(in_window(on_others, kill + k, kill + k + 1))
        per_second.append((k, dead_ratio, other_ratio))
    return {
        "victim": events["victim"], "replica": events["replica"], "dead_products": len(dead),
        "tags_on_victim": events.get("tags_on_victim"),
        "promotion_s": promoted - kill,
        "agreed_s": agreed - kill,
        "first_hit_after_promotion_s": None if first_hit is None else first_hit - promoted,
        "first_miss_after_kill_s": None if first_miss is None else first_miss - kill,
        "dead_reads_before_promotion": len(between),
        "dead_hits_before_promotion": sum(map(hit, between)),
        "last_dead_hit_after_kill_s": None if last_hit is None else last_hit - kill,
        "event_s": event_end - kill,
        "p99_baseline_s": p99([r.latency for r in baseline]),
        "p99_event_s": p99([r.latency for r in event]),
        "max_event_s": max((r.latency for r in event), default=None),
        "p99_dead_event_s": p99([r.latency for r in on_dead if kill <= r.t < event_end]),
        "hit_ratio_per_second": per_second,
    }


def verdict(row):
    """The expectations; a list of failures (empty: as expected)."""
    key, errors, failures = row["fault"], row["errors"], []
    if row["baseline_errors"]:
        failures.append(f"errors in the baseline {row['baseline_errors']}")
    if row["baseline_stale"]:
        failures.append(f"{row['baseline_stale']} stale reads in the baseline")
    if key == "f":
        unexpected = {k: v for k, v in errors.items() if k != "503"}
        if unexpected:
            failures.append(f"errors other than 503: {unexpected}")
    elif errors:
        failures.append(f"errors {errors}")
    if row["persistent"] and key not in STALE_DOCUMENTED:
        failures.append(f"{row['persistent']} stale reads")
    return failures


def warnings(row):
    """What looks wrong without being a documented expectation (never fails a smoke run):
    lock keys that will never expire, a tail or a hit ratio that did not come back."""
    out = []
    if row["left"] is not None and row["left"][2]:
        out.append(f"{row['left'][2]} lock keys left without TTL")
    base, after = row["p99_baseline_s"], row["p99_recovery_s"]
    if base and after and after > 10 * base and after > 0.05:
        out.append(f"p99 in recovery {after / base:.0f}× the baseline's")
    if row["baseline_hit_ratio"] and row["recovery_s"] is None:
        out.append("hit ratio not back to normal")
    return out


def errors_cell(errors):
    if not errors:
        return "0"
    total = sum(errors.values())
    return f"{total} (" + ", ".join(f"{k}×{v}" for k, v in sorted(errors.items())) + ")"


def stale_cell(row):
    if not row["stale"]:
        return "0"
    transient = row["stale"] - row["persistent"]
    cell = (f"{row['persistent']} ({row['stale_product']} product, {row['stale_list']} list; {row['stale_checks']} "
            f"in the checks after writes)" if row["persistent"] else "0")
    if transient:
        cell += f" + {transient} transient"
    if row["fault"] in STALE_DOCUMENTED and row["persistent"]:
        cell += f"; documented: {STALE_DOCUMENTED[row['fault']]}"
    return cell


def recovery_cell(row):
    base = row["baseline_hit_ratio"]
    if base is None:
        return "—"
    if row["recovery_s"] is None:
        return f"not within {row['recovery_window_s']:.0f} s"
    return f"{row['recovery_s']} s"


def left_cell(row):
    if row["left"] is None:
        return "—"
    _, forever, locks, _ = row["left"]
    return f"{forever} ({locks})"


def ratio_cell(value):
    return "—" if value is None else f"{value:.0%}"


def table(rows):
    lines = ["| fault | requests | errors (by status; socket) | lost / refused | p99 baseline | p99 in fault | "
             "p99 in recovery | stale reads | hit ratio baseline → fault | back to normal hit ratio | "
             "keys left without TTL (locks) | as expected? |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for row in rows:
        ok = "yes" if not row["verdict"] else "**no**: " + "; ".join(row["verdict"])
        if row["warnings"]:
            ok += "; but " + "; ".join(row["warnings"])
        lines.append(f"| ({row['fault']}) {row['what']} | {row['requests']:,} | {errors_cell(row['errors'])} | "
                     f"{row['lost']} / {row['refused']} | {ms(row['p99_baseline_s'])} | {ms(row['p99_fault_s'])} | "
                     f"{ms(row['p99_recovery_s'])} | "
                     f"{stale_cell(row)} | {ratio_cell(row['baseline_hit_ratio'])} → {ratio_cell(row['fault_hit_ratio'])} | "
                     f"{recovery_cell(row)} | {left_cell(row)} | {ok} |")
    return "\n".join(lines)


def seconds_cell(value):
    return "—" if value is None else f"{value:.2f} s"


def failover_table(rows):
    lines = ["| fault | kill → promoted | kill → all agree | promoted → first HIT on the dead shard | "
             "product reads on the dead shard, kill → promotion: hits / reads | p99 baseline | "
             "p99 kill → dead shard hits again | max in it | errors | stale reads |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in rows:
        f = row["failover"]
        if not f:
            continue
        lines.append(f"| ({row['fault']}) {row['what']} | {seconds_cell(f['promotion_s'])} | "
                     f"{seconds_cell(f['agreed_s'])} | {seconds_cell(f['first_hit_after_promotion_s'])} | "
                     f"{f['dead_hits_before_promotion']} / {f['dead_reads_before_promotion']} | "
                     f"{ms(f['p99_baseline_s'])} | {ms(f['p99_event_s'])} ({f['event_s']:.1f} s) | "
                     f"{ms(f['max_event_s'])} | {errors_cell(row['errors'])} | {stale_cell(row)} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def per_second_line(row):
    """The hit ratio per second from the kill: of the dead shard's product reads, and (a
    cluster) in parentheses of the other shards'."""
    f = row["failover"]
    cells = [f"{k:+d} s {ratio_cell(dead)}" + ("" if other is None else f" ({ratio_cell(other)})")
             for k, dead, other in f["hit_ratio_per_second"]]
    shard = ("every product read (the one primary holds them all)" if f["tags_on_victim"] is None
             else "the dead shard's product reads (the other shards')")
    return f"hit ratio per second from the kill, {shard}: " + ", ".join(cells)


def notes_lines(rows):
    out = []
    for row in rows:
        bits = list(row["notes"])
        if row["failover"]:
            f = row["failover"]
            bits.append(per_second_line(row))
            bits.append(f"first product read on the dead shard not a hit {seconds_cell(f['first_miss_after_kill_s'])} "
                        f"after the kill; last hit before the promotion {seconds_cell(f['last_dead_hit_after_kill_s'])} "
                        f"after the kill; p99 of the dead shard's product reads in the event "
                        f"{ms(f['p99_dead_event_s'])}")
        bits.append(f"fault lasted {row['fault_s']:.1f} s; max latency in it {ms(row['max_fault_s'])}; "
                    f"writes (PATCH) from the fault to the end of recovery: p99 {ms(row['p99_write_s'])}, "
                    f"max {ms(row['max_write_s'])}")
        if row["left"] is not None:
            total, forever, _, kinds = row["left"]
            bits.append(f"at the end of recovery Redis held {total} keys"
                        + (f", {forever} without TTL: " + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items()))
                           if forever else ""))
        out.append(f"- ({row['fault']}) " + "; ".join(bits))
    return out


def buckets(records):
    """Per-second buckets per target: {target: {second: {...}}}."""
    out = collections.defaultdict(dict)
    for r in records:
        b = out[r.target].setdefault(int(r.t), {"requests": 0, "statuses": collections.Counter(),
                                                  "hits": 0, "reads": 0, "stale": 0, "latencies": []})
        b["requests"] += 1
        b["statuses"][SOCKET_NAMES.get(r.status, str(r.status))] += 1
        if r.kind in READ_KINDS:
            b["reads"] += 1
            b["hits"] += hit(r)
        b["stale"] += r.stale == PERSISTENT and r.kind != CONFIRM
        b["latencies"].append(r.latency)
    for target in out.values():
        for b in target.values():
            b["p99_ms"] = round(p99(b.pop("latencies")) * 1000, 2)
            b["statuses"] = dict(b["statuses"])
    return out


def generator_line(load_, wall_s, cpu_s):
    lag = p99(load_.lag)
    return (f"load generator: scheduled {load_.rate:.0f} req/s ({load_.writes:g} writes/s, each with 3 reads "
            f"on the other instance), sent {load_.sent / wall_s:.0f} req/s over {wall_s:.0f} s; "
            f"its CPU {cpu_s / wall_s:.0%} of one core; send lag p99 {ms(lag)}")


# --- Soak ----------------------------------------------------------------------------------------

def rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(points):
    """Least-squares slope of (t seconds, value), per hour."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / den * 3600


def soak_table(samples):
    lines = ["| process | RSS first → last | RSS slope | open fds first → last | fd slope | "
             "the generator's connections to it, first → last |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, points in samples.items():
        rss = [(t, v / 1024) for t, v, _, _ in points]
        fds = [(t, f) for t, _, f, _ in points]
        conns = "—" if points[0][3] is None else f"{points[0][3]} → {points[-1][3]}"
        lines.append(f"| {name} | {rss[0][1]:.1f} → {rss[-1][1]:.1f} MiB | {slope_per_hour(rss):+.2f} MiB/h | "
                     f"{fds[0][1]} → {fds[-1][1]} | {slope_per_hour(fds):+.1f}/h | {conns} |")
    return "\n".join(lines)


# --- RELIABILITY.md -----------------------------------------------------------------------------

def versions(servers):
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v=(\S+)", redis)
    try:
        pg = psql(servers.admin_url, "SHOW server_version")
    except RuntimeError:
        pg = "?"
    return f"redis-server {match[1] if match else '?'}, PostgreSQL {pg.split()[0]}, Python {sys.version.split()[0]}"


def write_section(kind, label, body):
    slug = re.sub(r"[^a-z0-9]+", "-", (label or "").lower()).strip("-")
    name = f"{kind}:{slug}" if slug else kind
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    title = {"chaos": "Chaos run", "soak": "Soak run"}[kind] + (f": {label}" if label else "")
    section = f"{start}\n### {title}\n\n{body}\n{end}"
    text = RELIABILITY.read_text() if RELIABILITY.exists() else "# Reliability\n"
    if start in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RELIABILITY.write_text(text)
    log(f"wrote the {name} section of {RELIABILITY.name}")


def tree(args):
    """What was measured: the commit, and whether the work tree's Rust sources differed from
    it when the binary was built (read-only git commands); or the binary given."""
    if args.binary:
        return f"the binary {args.binary} (given with --binary; its source is not this work tree's)"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "crates", "Cargo.toml", "Cargo.lock"],
                             cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    return ("the work tree's build" + (f", with uncommitted changes in {len(changed)} files under crates/ "
                                       "or Cargo.* (not the commit's code alone)" if changed else ", clean"))


def command_line():
    return "python3 bench/chaos.py " + shlex.join(sys.argv[1:])


# --- Main ----------------------------------------------------------------------------------------

def build(release):
    profile = ["--release"] if release else []
    subprocess.run(["cargo", "build", "--locked", *profile, "-p", "cachelayer-server", "--bin", "cachelayer"],
                   cwd=ROOT, check=True)
    return ROOT / "target" / ("release" if release else "debug") / "cachelayer"


async def warm(load_, servers):
    """Every hot product and page read once through every target, not recorded."""
    for target in load_.readable():
        pool = load_.pools[target]
        for pid in range(1, load_.hot + 1):
            await http(pool, "GET", f"/products/{pid}")
        for offset in range(0, load_.hot, PAGE):
            await http(pool, "GET", f"/products?limit={PAGE}&offset={offset}")


async def check_catalogue(load_):
    status, _, body = await http(load_.pools["A"], "GET", f"/products?limit={PAGE}&offset=0")
    page = json.loads(body)
    ids = [item["id"] for item in page["items"]]
    if status != 200 or ids != list(range(1, PAGE + 1)) or page["total"] < load_.hot:
        raise SystemExit(f"chaos.py: the catalogue is not the seeded 1..N (status {status}, ids {ids[:5]}.., "
                         f"total {page.get('total')})")


async def main_async(args, servers, admin_url, db_name, keys=(), stock=STOCK_BASE):
    """One group of faults (keys) on servers, or the soak; stock: the last stock value written
    by an earlier group on the same database (written values must keep growing)."""
    run = Run(args, servers, admin_url, db_name)
    servers.start_redis()
    servers.start_serve("A")
    await asyncio.to_thread(servers.wait_ready, "A")  # A migrates and seeds; B finds it done
    servers.start_serve("B")
    await asyncio.to_thread(servers.wait_ready, "B")
    servers.start_proxy()
    await asyncio.to_thread(servers.wait_ready, "proxy")
    if servers.load_core != servers.server_core:
        os.sched_setaffinity(0, {servers.load_core})
    run.load = Load(servers.ports, args.rate, args.writes, args.hot)
    run.load.stock = stock
    await check_catalogue(run.load)
    await warm(run.load, servers)
    if args.soak:
        return await soak(run)
    keys = list(keys)
    stop = asyncio.Event()
    wall0, cpu0 = time.monotonic(), time.process_time()
    generator = asyncio.get_running_loop().create_task(run.load.run_open(stop))
    try:
        await run.chaos(keys)
    finally:
        stop.set()
        await generator
        await run.load.drain()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return run, keys, wall, cpu


async def soak(run):
    a = run.args
    load_ = run.load
    log(f"measuring the maximum rate: {a.max_duration:.0f} s flat out, 64 concurrent requests")
    wall0, cpu0 = time.monotonic(), time.process_time()
    maximum = await load_.run_closed(a.max_duration, 64)
    max_cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
    max_errors = error_summary(load_.records)
    for pool in load_.pools.values():
        pool.close_all()  # the flat-out run's spare connections would otherwise age out during the soak
    load_.rate = maximum / 2
    warmup = min(60.0, a.soak_duration / 10)
    log(f"maximum {maximum:.0f} req/s (generator CPU {max_cpu:.0%}); soaking at {load_.rate:.0f} req/s "
        f"for {warmup:.0f} s unsampled, then {a.soak_duration:.0f} s")
    stop = asyncio.Event()
    generator = asyncio.get_running_loop().create_task(load_.run_open(stop))
    await asyncio.sleep(warmup)
    load_.records.clear()
    load_.lag.clear()
    load_.sent = 0
    samples = collections.defaultdict(list)
    pids = run.s.server_pids()
    wall0, cpu0 = time.monotonic(), time.process_time()
    t_start = time.monotonic()
    while True:
        t = time.monotonic() - t_start
        for name, pid in pids.items():
            conns = load_.pools[name].open if name in load_.pools else None
            samples[name].append((t, rss_kib(pid), fd_count(pid), conns))
        if t >= a.soak_duration:
            break
        await asyncio.sleep(min(a.soak_sample, a.soak_duration - t))
    stop.set()
    await generator
    await load_.drain()
    wall, cpu = time.monotonic() - wall0, time.process_time() - cpu0
    return {"maximum": maximum, "max_cpu": max_cpu, "max_errors": dict(max_errors), "samples": samples,
            "warmup": warmup,
            "wall": wall, "cpu": cpu, "load": load_, "records": load_.records}


DEPLOYMENTS = {"single": "one redis-server",
               "cluster": "a Redis Cluster of 3 primaries with 1 replica each (node timeout {node_timeout:g} s)",
               "sentinel": "a Sentinel set-up: 1 primary, 1 replica, 3 sentinels (quorum 2, down-after "
                           "{down_after_ms:.0f} ms, failover-timeout 5 s)"}


def groups(keys):
    """[(topology, faults)]: the faults in the order given, grouped by the Redis deployment
    they run on, each group in the order its first fault was named."""
    out = {}
    for key in keys:
        out.setdefault(TOPOLOGY.get(key, "single"), []).append(key)
    return list(out.items())


def report_chaos(args, results, elapsed):
    """results: [(servers, (run, keys, wall, cpu))], one per group of faults."""
    rows, phases, lines = [], [], []
    for servers, (run, keys, wall, cpu) in results:
        rows += analyse(run, keys)
        gen = generator_line(run.load, wall, cpu)
        where = DEPLOYMENTS[servers.topology].format(node_timeout=args.node_timeout,
                                                     down_after_ms=args.down_after * 1000)
        lines.append(f"Faults {', '.join(keys)} on {where}: {gen}.")
        phases.append({"topology": servers.topology, "keys": keys, "phases": [vars(p) for p in run.phases],
                       "buckets": buckets(run.load.records)})
    failovers = failover_table(rows)
    body = "\n".join([
        f"`{command_line()}` on {load.machine()}; measured: {args.tree}; {versions(results[0][0])}; "
        f"run time {elapsed:.0f} s.",
        "",
        f"Phases: settle {args.settle:g} s (after FLUSHALL), baseline {args.baseline:g} s, the fault, "
        f"recovery {args.recovery:g} s. " + " ".join(lines),
        "",
        table(rows),
        *(["", failovers] if failovers else []),
        "",
        *notes_lines(rows),
    ])
    print(body)
    failures = {row["fault"]: row["verdict"] for row in rows if row["verdict"]}
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "groups": phases}, indent=1, default=str))
    return body, failures


def report_soak(args, servers, result, elapsed):
    records = result["records"]
    errors = error_summary(records)
    stale = sum(r.stale == PERSISTENT and r.kind != CONFIRM for r in records)
    transient = sum(r.stale == TRANSIENT and r.kind != CONFIRM for r in records)
    gen = generator_line(result["load"], result["wall"], result["cpu"])
    body = "\n".join([
        f"`{command_line()}` on {load.machine()}; measured: {args.tree}; {versions(servers)}; run time {elapsed:.0f} s.",
        "",
        f"Maximum rate (flat out, 64 concurrent requests, {args.max_duration:g} s): {result['maximum']:.0f} req/s, "
        f"the generator's CPU {result['max_cpu']:.0%} of its core ("
        + ("so the generator, not the server core, was the limit" if result["max_cpu"] >= 0.9
           else "so the server core, not the generator, was the limit")
        + f"), errors {errors_cell(result['max_errors'])}. Soak at half of it, {result['warmup']:.0f} s unsampled, "
        f"then {args.soak_duration:g} s: "
        f"{gen}; {len(records):,} requests, errors {errors_cell(errors)}, stale reads {stale} (+ {transient} transient), "
        f"p99 {ms(p99([r.latency for r in records]))}, hit ratio {ratio_cell(hit_ratio(records))}. "
        f"RSS and open file descriptors sampled every {args.soak_sample:g} s; slopes are least-squares fits, per hour. "
        "The generator keeps a pool of keep-alive connections per target that grows with concurrency and "
        "closes connections idle for 30 s, so a server's descriptors follow it (B's also hold the proxy's "
        "upstream connections): read an fd slope against the last column.",
        "",
        soak_table(result["samples"]),
    ])
    print(body)
    failures = {}
    if errors:
        failures["soak"] = [f"errors {dict(errors)}"]
    if stale:
        failures.setdefault("soak", []).append(f"{stale} stale reads")
    return body, failures


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--smoke", action="store_true", help="every fault briefly, debug build; exit 1 on an unexpected error, loss or stale read")
    parser.add_argument("--soak", action="store_true", help="the soak run instead of the faults")
    parser.add_argument("--only", help=f"comma-separated faults of {','.join(FAULTS)} (default: all)")
    parser.add_argument("--rate", type=float, help="requests per second scheduled (default 400; smoke 150)")
    parser.add_argument("--writes", type=float, help="PATCHes per second among them (default 4; smoke 3)")
    parser.add_argument("--hot", type=int, default=200, help="hot product ids 1..N (default 200)")
    parser.add_argument("--settle", type=seconds, help="unrecorded load after each reset (default 3s)")
    parser.add_argument("--baseline", type=seconds, help="baseline before each fault (default 10s)")
    parser.add_argument("--recovery", type=seconds, help="recovery period after each fault (default 30s)")
    parser.add_argument("--fault-duration", type=seconds, help="how long a lasting fault lasts (default 5s)")
    parser.add_argument("--redis-down", type=seconds, help="(a): seconds before Redis is restarted (default 5s)")
    parser.add_argument("--skew", default="-30s", help="(i): FAKETIME offset of serve A (default -30s)")
    parser.add_argument("--skew-writes", type=float, default=20.0,
                        help="(i): extra writes per second through the skewed instance (default 20)")
    parser.add_argument("--healthy-wait", type=seconds, default=60.0,
                        help="longest wait before a baseline for every instance to be healthy (default 60s)")
    parser.add_argument("--burst", type=int, default=32, help="(g): cold reads sent to A just before SIGTERM")
    parser.add_argument("--node-timeout", type=seconds, default=1.0,
                        help="(j): the cluster's cluster-node-timeout (default 1s)")
    parser.add_argument("--victim", choices=("tags", "other"), default="tags",
                        help="(j): the primary killed: the one holding serve's tag clock (default), or another")
    parser.add_argument("--down-after", type=seconds, default=1.0,
                        help="(k): the sentinels' down-after-milliseconds (default 1s)")
    parser.add_argument("--shutdown-wait", type=seconds, default=40.0, help="(g): wait for exit after SIGTERM")
    parser.add_argument("--database-url", help="PostgreSQL server to create the chaos database on "
                        f"(default $CACHELAYER_TEST_POSTGRES_URL, else {DEFAULT_PG})")
    parser.add_argument("--soak-duration", type=seconds, default=600.0, help="soak length (default 10m)")
    parser.add_argument("--soak-sample", type=seconds, default=10.0, help="RSS/fd sampling interval (default 10s)")
    parser.add_argument("--max-duration", type=seconds, help="flat-out run measuring the maximum (default 10s)")
    parser.add_argument("--write", action="store_true", help="write the run's section of RELIABILITY.md")
    parser.add_argument("--label", help="with --write: a section of its own, e.g. 'before the fixes'")
    parser.add_argument("--binary", help="use this cachelayer binary instead of building one (e.g. built from "
                        "an export of another commit)")
    parser.add_argument("--json", help="also write rows, phases and per-second buckets per target to this file")
    args = parser.parse_args()
    smoke = args.smoke
    defaults = {"rate": 150 if smoke else 400, "writes": 3 if smoke else 4, "settle": 0.5 if smoke else 3,
                "baseline": 1.5 if smoke else 10, "recovery": 2 if smoke else 30,
                "fault_duration": 1 if smoke else 5, "redis_down": 1 if smoke else 5,
                "max_duration": 3 if smoke else 10}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = args.only.split(",") if args.only else list(FAULTS)
    if len(set(args.only)) != len(args.only):
        parser.error("--only names each fault once")
    unknown = sorted(set(args.only) - set(FAULTS))
    if unknown:
        parser.error(f"unknown faults {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    if smoke and args.write:
        parser.error("--smoke writes nothing")
    return args


def main():
    args = parse_args()
    started = time.monotonic()
    # A SIGTERM (a CI timeout, a killed flock) unwinds like Ctrl-C: servers stopped, database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not args.smoke:
        load.require_pinning()
    for tool in ("redis-server", "redis-cli"):
        load.ensure(tool, "redis-server" if tool == "redis-server" else "redis-tools")
    load.ensure("psql", "postgresql-client")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    binary = Path(args.binary).resolve() if args.binary else build(release=not args.smoke)
    args.tree = tree(args)
    admin_url, db_name, database_url = database_urls(args)
    psql(admin_url, f'CREATE DATABASE "{db_name}"')
    failures, body = {}, None
    try:
        results, stock = [], STOCK_BASE
        # The soak runs on one redis-server; the faults by groups, a deployment of Redis each.
        for topology, keys in ([("single", [])] if args.soak else groups(args.only)):
            with tempfile.TemporaryDirectory(prefix="cachelayer-chaos-") as workdir:
                servers = Servers(args, binary, workdir, database_url, topology)
                servers.admin_url = admin_url
                if "i" in keys:
                    servers.faketime()  # installed before the load starts, not in the middle of a fault
                try:
                    result = asyncio.run(main_async(args, servers, admin_url, db_name, keys, stock))
                except BaseException:
                    servers.print_logs()
                    raise
                finally:
                    servers.stop_all()
            results.append((servers, result))
            if not args.soak:
                stock = result[0].load.stock
        elapsed = time.monotonic() - started
        if args.soak:
            body, failures = report_soak(args, results[0][0], results[0][1], elapsed)
        else:
            body, failures = report_chaos(args, results, elapsed)
    finally:
        with contextlib.suppress(RuntimeError):
            psql(admin_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
    if args.write:
        write_section("soak" if args.soak else "chaos", args.label, body)
    elapsed = time.monotonic() - started
    if failures:
        for key, problems in failures.items():
            log(f"UNEXPECTED in ({key}): " + "; ".join(problems))
    if args.smoke:
        if failures:
            raise SystemExit(f"chaos.py: smoke run FAILED in {elapsed:.0f} s")
        log(f"smoke run passed in {elapsed:.0f} s")
    else:
        log(f"done in {elapsed:.0f} s" + (" (with unexpected results above)" if failures else ""))


if __name__ == "__main__":
    main()
