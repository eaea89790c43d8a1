"""Local Redis Cluster and Sentinel set-ups for the bench scripts (load.py, chaos.py): the
Python twin of cachelayer-testkit's redis_cluster.rs and redis_sentinel.rs.

    cluster = RedisCluster(spawn, workdir)      # 3 primaries, 1 replica each, node timeout 1 s
    cluster.start()                             # nodes, `redis-cli --cluster create`, formed
    cluster.url()                               # redis+cluster://127.0.0.1:P1,...
    sentinel = RedisSentinel(spawn, workdir)    # 1 primary, 1 replica, 3 sentinels, quorum 2
    sentinel.start()
    sentinel.url()                              # redis+sentinel://127.0.0.1:S1,.../cachelayer

`spawn(argv, name)` starts one server-side process and returns its Popen: the caller's, so
that its pinning (`taskset -c 0`) and environment apply to every node. Every process has free
ports, its own directory under workdir and its own log file there (`redis.log`,
`sentinel.log`); `stop()` stops every process this module started, by PID, and nothing else
(never a Redis it did not start, such as a shared one on 6379).

Readiness is a PING answered; what Redis signals nowhere (a cluster having formed, sentinels
having found each other, a failover having finished) is polled every 50 ms, bounded, and a
set-up is never reported as started before: every node reports `cluster_state:ok`, all agree
on who serves every slot and on every running node's role, and every replica is in sync (a
cluster); every sentinel names the primary and knows the replica and the other sentinels, and
the replica is in sync (Sentinel).
"""

import signal
import socket
import subprocess
import time
from pathlib import Path

SLOTS = 16384
POLL_S = 0.05
FORM_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0
START_ATTEMPTS = 3


class Unavailable(RuntimeError):
    """A node did not answer (down, refused, or no reply within the probe's deadline)."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(port, *args, timeout=PROBE_TIMEOUT_S, stdin=None):
    """redis-cli against 127.0.0.1:port: its stripped output (a Redis error reply is output,
    not an exception); Unavailable when the node cannot be reached in time."""
    try:
        result = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *map(str, args)],
                                capture_output=True, text=True, timeout=timeout, input=stdin)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"127.0.0.1:{port} did not answer {' '.join(map(str, args))} within {timeout} s") from None
    if result.returncode or "Could not connect" in result.stderr:
        raise Unavailable(f"127.0.0.1:{port}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def info(port, section, timeout=PROBE_TIMEOUT_S):
    """INFO section as {field: value}."""
    fields = {}
    for line in cli(port, "INFO", section, timeout=timeout).splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def command_calls(port, exclude=("config", "info", "replconf")):
    """Commands the node ran since its last CONFIG RESETSTAT (`INFO commandstats`), without
    the ones this module and the benches send themselves (CONFIG, INFO) and the replicas'
    acknowledgements (REPLCONF ACK, once a second per replica: replication, not clients)."""
    total = 0
    for key, value in info(port, "commandstats").items():
        name = key.removeprefix("cmdstat_")
        if name.split("|")[0] in exclude:
            continue
        calls = dict(part.split("=", 1) for part in value.split(",") if "=" in part).get("calls")
        total += int(calls or 0)
    return total


def stop_processes(processes, timeout=10):
    """SIGTERM, then SIGKILL after timeout, for each of processes (Popen) still running."""
    processes = [p for p in processes if p is not None]
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(check, timeout, what):
    """Polls check() (None when satisfied, else a complaint) until it holds; the time waited.
    Raises RuntimeError with the last complaint after timeout."""
    started = time.monotonic()
    while True:
        try:
            problem = check()
        except Unavailable as err:
            problem = str(err)
        if problem is None:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            raise RuntimeError(f"{what} within {timeout:.0f} s: {problem}")
        time.sleep(POLL_S)


class Node:
    """One redis-server process: a data node of a cluster or a Sentinel set-up."""

    def __init__(self, spawn, directory, name, extra=(), cluster_timeout_ms=None):
        self.spawn_fn = spawn
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.extra = list(extra)
        self.cluster_timeout_ms = cluster_timeout_ms
        self.port = None
        self.bus_port = None
        self.process = None
        self.killed = False  # by kill(): a crash the caller caused, not a failure

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def running(self):
        return self.process is not None and self.process.poll() is None

    def argv(self):
        argv = ["redis-server", "--port", self.port, "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--logfile", self.dir / "redis.log",
                "--repl-diskless-sync-delay", "0"]
        if self.cluster_timeout_ms is not None:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", self.cluster_timeout_ms, "--cluster-port", self.bus_port,
                     "--cluster-require-full-coverage", "no"]
        return argv + self.extra

    def start(self, keep_ports=False):
        """Starts the node (on new free ports unless keep_ports) and waits for its PING."""
        problem = ""
        for _ in range(START_ATTEMPTS):
            if not keep_ports or self.port is None:
                self.port = free_port()
                if self.cluster_timeout_ms is not None:
                    self.bus_port = free_port()
                    (self.dir / "nodes.conf").unlink(missing_ok=True)  # an old identity names old ports
            self.killed = False
            self.process = self.spawn_fn([str(arg) for arg in self.argv()], self.name)
            deadline = time.monotonic() + 20
            while self.process.poll() is None and time.monotonic() < deadline:
                try:
                    if cli(self.port, "PING") == "PONG":
                        return
                except Unavailable as err:
                    problem = str(err)
                time.sleep(POLL_S)
            if self.process.poll() is None:
                self.kill()
                problem = f"no PONG within 20 s: {problem}"
            else:
                problem = f"exited with status {self.process.returncode}; see {self.dir / 'redis.log'}"
            if keep_ports:
                break
        raise RuntimeError(f"redis-server {self.name} did not start: {problem}")

    def kill(self):
        """SIGKILL, as a crash would."""
        self.killed = True
        if self.running():
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()


# --- Redis Cluster ---------------------------------------------------------------------------

def parse_cluster_nodes(text):
    """CLUSTER NODES as a list of dicts: id, port, flags (set), primary_id, slots [(a, b)]."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        address = fields[1].split("@")[0].split(",")[0]
        slots = []
        for field in fields[8:]:
            if field.startswith("["):
                continue  # a slot being imported or migrated
            first, _, last = field.partition("-")
            slots.append((int(first), int(last or first)))
        entries.append({"id": fields[0], "port": int(address.rsplit(":", 1)[1]),
                        "flags": set(fields[2].split(",")),
                        "primary_id": None if fields[3] == "-" else fields[3], "slots": slots})
    return entries


class RedisCluster:
    """A Redis Cluster of `primaries` primaries with `replicas` replicas each (see the module)."""

    def __init__(self, spawn, workdir, primaries=3, replicas=1, node_timeout_ms=1000, name="cluster"):
        self.spawn = spawn
        self.workdir = Path(workdir)
        self.primaries_wanted = primaries
        self.replicas_wanted = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes = [Node(spawn, self.workdir / f"{name}-{i}", f"{name}-{i}", cluster_timeout_ms=node_timeout_ms)
                      for i in range(primaries * (1 + replicas))]

    def start(self):
        """Every node, the cluster created, formed: the seconds it took."""
        started = time.monotonic()
        for node in self.nodes:
            node.start()
        argv = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas", str(self.replicas_wanted), "--cluster-yes"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode or "All 16384 slots covered" not in result.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{result.stdout}{result.stderr}")
        wait_until(lambda: self.problem(complete=True), FORM_TIMEOUT_S, "the Redis Cluster did not form")
        return time.monotonic() - started

    def url(self):
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.primary_ports())

    def running(self):
        return [node for node in self.nodes if node.running()]

    def node(self, port):
        return next(node for node in self.nodes if node.port == port)

    def pids(self):
        """{role: pid} of every running node, by port ("redis-<port>")."""
        return {f"redis-{node.port}": node.pid for node in self.running()}

    def view(self):
        """CLUSTER NODES as the first running node that answers sees it."""
        problem = "no node is running"
        for node in self.running():
            try:
                return parse_cluster_nodes(cli(node.port, "CLUSTER", "NODES"))
            except Unavailable as err:
                problem = str(err)
        raise Unavailable(problem)

    def primary_ports(self):
        """The current primaries serving slots and not failing, in slot order."""
        primaries = [e for e in self.view()
                     if "master" in e["flags"] and e["slots"] and not {"fail", "fail?"} & e["flags"]]
        primaries.sort(key=lambda e: min(first for first, _ in e["slots"]))
        return [e["port"] for e in primaries]

    def replica_of(self, port):
        """The port of a replica of the primary on port, as the cluster sees it now."""
        view = self.view()
        primary = next(e for e in view if e["port"] == port)
        replicas = [e["port"] for e in view if e["primary_id"] == primary["id"] and "slave" in e["flags"]]
        if not replicas:
            raise RuntimeError(f"primary {port} has no replica")
        return replicas[0]

    def slots_of(self, port):
        return next(e["slots"] for e in self.view() if e["port"] == port)

    def problem(self, complete=False):
        """None when the running nodes are healthy (every one reports cluster_state:ok; they
        agree on which running primary serves each slot and on every running node's role; none
        sees a running node failing; every running replica's link is up); with complete, also
        every node known to every node and the shape as created. Else what is wrong."""
        live = [node.port for node in self.running()]
        if not live:
            return "no node is running"
        agreed = None
        for port in live:
            state = info(port, "replication")
            cluster_info = dict(line.split(":", 1) for line in cli(port, "CLUSTER", "INFO").splitlines()
                                if ":" in line)
            if cluster_info.get("cluster_state", "").strip() != "ok":
                return f"node {port} reports cluster_state:{cluster_info.get('cluster_state', '?').strip()}"
            view = parse_cluster_nodes(cli(port, "CLUSTER", "NODES"))
            by_id = {e["id"]: e for e in view}
            slots = []
            for e in view:
                if "master" in e["flags"]:
                    slots += [(first, last, e["port"]) for first, last in e["slots"]]
            slots.sort()
            covered = sum(last - first + 1 for first, last, _ in slots)
            if covered != SLOTS:
                return f"node {port} sees {covered} of {SLOTS} slots served"
            for _, _, owner in slots:
                if owner not in live:
                    return f"node {port} sees slots served by node {owner}, which is not running"
            roles = []
            for e in view:
                if e["port"] not in live:
                    continue
                if {"fail", "fail?"} & e["flags"]:
                    return f"node {port} sees running node {e['port']} as failing"
                primary = by_id.get(e["primary_id"]) if e["primary_id"] else None
                roles.append((e["port"], primary["port"] if primary and "slave" in e["flags"] else None))
            topology = (slots, sorted(roles))
            if agreed is not None and agreed[1] != topology:
                return f"nodes {agreed[0]} and {port} disagree on the slots or roles"
            agreed = (port, topology)
            if complete:
                if len(view) != len(self.nodes) or any({"handshake", "noaddr", "fail", "fail?"} & e["flags"]
                                                       for e in view):
                    return f"node {port} does not know every node yet"
                primaries = [e for e in view if "master" in e["flags"]]
                if len(primaries) != self.primaries_wanted or any(
                        sum(r["primary_id"] == p["id"] for r in view) != self.replicas_wanted for p in primaries):
                    return f"node {port} does not see {self.primaries_wanted} primaries with {self.replicas_wanted} replicas each"
            if state.get("role") == "slave" and state.get("master_link_status") != "up":
                return f"replica {port} has not finished syncing with its primary"
        return None

    def wait_healthy(self, timeout=FORM_TIMEOUT_S):
        return wait_until(self.problem, timeout, "the Redis Cluster was not healthy")

    def reset_stats(self):
        for node in self.running():
            cli(node.port, "CONFIG", "RESETSTAT")

    def commands_on(self, ports):
        """Commands the nodes on ports ran since reset_stats (see command_calls); ports: the
        primaries, looked up before the reset, since the look-up is a command itself."""
        return sum(command_calls(port) for port in ports)

    def flushall(self):
        """FLUSHALL on every primary, then WAIT until its in-sync replicas applied it."""
        for port in self.primary_ports():
            online = sum(1 for key, value in info(port, "replication").items()
                         if key.startswith("slave") and "state=online" in value)
            cli(port, timeout=10, stdin=f"FLUSHALL\nWAIT {online} 5000\n")

    def dbsize(self):
        return sum(int(cli(port, "DBSIZE") or 0) for port in self.primary_ports())

    def config_set(self, name, value):
        for node in self.running():
            cli(node.port, "CONFIG", "SET", name, value)

    def stop(self):
        stop_processes([node.process for node in self.nodes])


# --- Sentinel --------------------------------------------------------------------------------

def parse_records(text):
    """redis-cli's flat output of an array of field/value arrays (SENTINEL replicas, SENTINEL
    sentinels): one dict per record, each starting at its `name` field."""
    lines = [line.strip() for line in text.splitlines()]
    records = []
    for i in range(0, len(lines) - 1, 2):
        name, value = lines[i], lines[i + 1]
        if name == "name" or not records:
            records.append({})
        records[-1][name] = value
    return records


class RedisSentinel:
    """One primary, one replica, `sentinels` sentinels with a quorum of `quorum` (see the
    module), watching the primary under `master`."""

    def __init__(self, spawn, workdir, master="cachelayer", down_after_ms=1000, failover_timeout_ms=5000,
                 sentinels=3, quorum=2, name="sentinel"):
        self.spawn = spawn
        self.workdir = Path(workdir)
        self.master = master
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.quorum = quorum
        self.name = name
        self.data = [Node(spawn, self.workdir / f"{name}-data-{i}", f"{name}-data-{i}") for i in range(2)]
        self.sentinels = [{"dir": self.workdir / f"{name}-s{i}", "port": None, "process": None}
                          for i in range(sentinels)]

    def start(self):
        """Primary, replica (in sync), sentinels (settled): the seconds it took."""
        started = time.monotonic()
        primary, replica = self.data
        primary.start()
        replica.extra = ["--replicaof", "127.0.0.1", str(primary.port)]
        replica.start()
        wait_until(lambda: self.replica_problem(replica.port), FORM_TIMEOUT_S, "the replica did not sync")
        for sentinel in self.sentinels:
            self.start_sentinel(sentinel, primary.port)
        wait_until(lambda: self.settled_problem(primary.port, replica.port), FORM_TIMEOUT_S,
                   "the sentinels did not settle")
        return time.monotonic() - started

    def start_sentinel(self, sentinel, primary_port):
        directory = sentinel["dir"]
        directory.mkdir(parents=True, exist_ok=True)
        problem = ""
        for _ in range(START_ATTEMPTS):
            sentinel["port"] = free_port()
            conf = directory / "sentinel.conf"
            conf.write_text("\n".join([
                f"port {sentinel['port']}",
                "bind 127.0.0.1",
                f'dir "{directory}"',
                f'logfile "{directory / "sentinel.log"}"',
                "sentinel resolve-hostnames no",
                f"sentinel monitor {self.master} 127.0.0.1 {primary_port} {self.quorum}",
                f"sentinel down-after-milliseconds {self.master} {self.down_after_ms}",
                f"sentinel failover-timeout {self.master} {self.failover_timeout_ms}",
            ]) + "\n")
            process = self.spawn(["redis-server", str(conf), "--sentinel"], f"{self.name}-s")
            sentinel["process"] = process
            deadline = time.monotonic() + 20
            while process.poll() is None and time.monotonic() < deadline:
                try:
                    if cli(sentinel["port"], "PING") == "PONG":
                        return
                except Unavailable as err:
                    problem = str(err)
                time.sleep(POLL_S)
            stop_processes([process])
            problem = problem or f"exited with status {process.returncode}"
        raise RuntimeError(f"a sentinel did not start: {problem}; see {directory / 'sentinel.log'}")

    def url(self):
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s['port']}" for s in self.sentinels) + f"/{self.master}"

    def data_ports(self):
        return [node.port for node in self.data]

    def pids(self):
        pids = {f"redis-{node.port}": node.pid for node in self.data if node.running()}
        pids.update({f"sentinel-{s['port']}": s["process"].pid for s in self.sentinels
                     if s["process"] is not None and s["process"].poll() is None})
        return pids

    def node(self, port):
        return next(node for node in self.data if node.port == port)

    def sentinel_primary(self, sentinel_port):
        reply = cli(sentinel_port, "SENTINEL", "get-master-addr-by-name", self.master).splitlines()
        if len(reply) < 2 or not reply[1].strip().isdigit():
            raise Unavailable(f"sentinel {sentinel_port} answered {reply!r}")
        return int(reply[1])

    def primary_port(self):
        """The primary as the first sentinel that answers names it."""
        problem = "no sentinel is running"
        for sentinel in self.sentinels:
            try:
                return self.sentinel_primary(sentinel["port"])
            except Unavailable as err:
                problem = str(err)
        raise Unavailable(problem)

    def replica_problem(self, port):
        fields = info(port, "replication")
        return None if fields.get("master_link_status") == "up" else f"replica {port} has not finished syncing"

    def settled_problem(self, primary, replica):
        for sentinel in self.sentinels:
            port = sentinel["port"]
            named = self.sentinel_primary(port)
            if named != primary:
                return f"sentinel {port} names {named} as the primary"
            replicas = parse_records(cli(port, "SENTINEL", "replicas", self.master))
            if not any(r.get("port") == str(replica) and r.get("flags") == "slave" for r in replicas):
                return f"sentinel {port} does not know replica {replica} as up"
            others = parse_records(cli(port, "SENTINEL", "sentinels", self.master))
            up = sum(r.get("flags") == "sentinel" for r in others)
            if up != len(self.sentinels) - 1:
                return f"sentinel {port} knows {up} other sentinels as up, not {len(self.sentinels) - 1}"
        return self.replica_problem(replica)

    def failed_over_problem(self, old_port):
        """None once every sentinel names the same primary, not old_port, and it says it is one."""
        named = {self.sentinel_primary(s["port"]) for s in self.sentinels}
        if len(named) != 1:
            return f"the sentinels name {sorted(named)}"
        (primary,) = named
        if primary == old_port:
            return f"the sentinels still name {old_port}"
        return None if info(primary, "replication").get("role") == "master" else f"{primary} is not master yet"

    def reset_stats(self):
        for node in self.data:
            if node.running():
                cli(node.port, "CONFIG", "RESETSTAT")

    def stop(self):
        # Sentinels first, so that none reacts to the data nodes going away.
        stop_processes([s["process"] for s in self.sentinels])
        stop_processes([node.process for node in self.data])
