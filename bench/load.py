#!/usr/bin/env python3
"""The load benchmark: builds the binaries, starts every scenario on loopback, drives it with
wrk, and writes the medians to BENCHMARKS.md with an SVG chart.

    python3 bench/load.py            # 3 rounds x 10 s per scenario, release build (~8 min)
    python3 bench/load.py --smoke    # 1 round x 1 s, debug build, nothing written (scripts/test)
    python3 bench/load.py --only nginx,proxy-memory --rounds 1 --duration 3s --warmup 2s
                                     # some scenarios: the table is printed, nothing written
    python3 bench/load.py --only serve-redis,serve-cluster --json run.json
                                     # ... and every round's figures kept in run.json

Scenarios: the limit (bench_origin, a minimal hyper server answering from memory); nginx and
Varnish, peer caches in front of bench_origin; `cachelayer proxy` in front of bench_origin with
its in-process store, with Redis and its near tier (the default), and with Redis alone
(`--near-capacity-bytes 0`); `cachelayer serve` the same three ways, and uncached. Ids are
spread over 1,000 products (~1 KB each). For the scenarios on Redis, Redis commands per request
come from `INFO commandstats`, reset before the measured run (the near tier's heartbeat PINGs
included).

Redis Cluster: `proxy-cluster` and `serve-cluster` are `proxy-redis` and `serve-redis` (no
near tier: every hit is a GET on Redis) on a local cluster of 3 primaries with 1 replica each
(bench/redis_topology.py: node timeout 1 s, `cluster-require-full-coverage no`), started once
for the session and pinned to core 0 like the single Redis; `proxy-cluster-near` and
`serve-cluster-near` are `proxy-near` and `serve-near` on it. Each is compared with its
one-Redis twin in the same round (the "vs one Redis" column). Their Redis commands per request
are summed over the primaries (`INFO commandstats` of each, reset on every node before the
run), without the replicas' `REPLCONF ACK`s (replication's own, one a second per replica);
their CPU counts all six nodes. A smoke run includes only `serve-cluster` of the four
(unless named in --only): the cluster's start is the fixed cost, each scenario ~3 s more.

Pinning (`taskset`): every server-side process of a scenario runs on core 0 (the server under
test, its upstream bench_origin, Redis), so each figure pays for all the work behind it; only
wrk runs on core 1.

Peers: nginx with one worker and its ordinary proxy_cache setup (bench/load/nginx.conf.tmpl);
Varnish with its default thread pools (2 pools of 100 to 5,000 threads), `-s malloc,256m`
and the built-in VCL plus an X-Cache header (bench/load/varnish.vcl). Both take the cache
lifetime from the origin's `Cache-Control: public, max-age=300`. wrk, nginx and Varnish are
installed from Debian's packages when missing, without starting their services.

CPU per request: user and system CPU time (/proc/<pid>/stat) of every server-side process of
the scenario, whole process trees (nginx's worker, Varnish's child), read just before and just
after the measured wrk run, divided by its requests.

Every round runs every scenario. A ratio is the median of per-round ratios to the limit (every
scenario), to nginx and to Varnish (the proxy scenarios, and the two peers to each other).
It must never report a figure from a run with errors: such a run fails the script.
bench/profile.py imports this module to profile one scenario with perf.
"""

import argparse
import contextlib
import grp
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Importing redis_topology must not leave bench/__pycache__ in the work tree.
sys.dont_write_bytecode = True
import redis_topology  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "load" / "products.lua"
NGINX_CONF = ROOT / "bench" / "load" / "nginx.conf.tmpl"
VARNISH_VCL = ROOT / "bench" / "load" / "varnish.vcl"
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- load-benchmark:start -->", "<!-- load-benchmark:end -->"

SCENARIOS = [
    ("limit", "limit: minimal hyper server, bytes from memory"),
    ("nginx", "nginx proxy_cache in front of the limit server"),
    ("varnish", "Varnish (malloc store) in front of the limit server"),
    ("proxy-memory", "proxy, cached (in-process store) in front of the limit server"),
    ("proxy-near", "proxy, cached (Redis + near tier) in front of the limit server"),
    ("proxy-cluster-near", "proxy, cached (Redis Cluster 3+3 + near tier) in front of the limit server"),
    ("proxy-redis", "proxy, cached (Redis, no near tier) in front of the limit server"),
    ("proxy-cluster", "proxy, cached (Redis Cluster 3+3, no near tier) in front of the limit server"),
    ("serve-memory", "serve, cached: in-process store"),
    ("serve-near", "serve, cached: Redis + near tier"),
    ("serve-cluster-near", "serve, cached: Redis Cluster 3+3 + near tier"),
    ("serve-redis", "serve, cached: Redis, no near tier"),
    ("serve-cluster", "serve, cached: Redis Cluster 3+3, no near tier"),
    ("serve-miss", "serve, miss: cache off, SQLite every request"),
]
NAMES = [name for name, _ in SCENARIOS]
PEERS = ("nginx", "varnish")
PROXIES = ("proxy-memory", "proxy-near", "proxy-redis", "proxy-cluster-near", "proxy-cluster")
UNCACHED = ("limit", "serve-miss")
# The scenarios on the Redis Cluster, each with its twin on one Redis (the same flags).
CLUSTER_TWIN = {"proxy-cluster-near": "proxy-near", "proxy-cluster": "proxy-redis",
                "serve-cluster-near": "serve-near", "serve-cluster": "serve-redis"}
# The flags of the scenarios on Redis (its URL added), by scenario.
REDIS_FLAGS = {"proxy-near": [], "proxy-redis": ["--near-capacity-bytes", "0"],
               "serve-near": [], "serve-redis": ["--near-capacity-bytes", "0"]}
USES_REDIS = tuple(REDIS_FLAGS)
USES_CLUSTER = tuple(CLUSTER_TWIN)
REDIS_FLAGS.update({name: REDIS_FLAGS[twin] for name, twin in CLUSTER_TWIN.items()})
SERVE_FLAGS = {"serve-memory": [], "serve-near": [], "serve-redis": [], "serve-cluster-near": [],
               "serve-cluster": [], "serve-miss": ["--cache-ttl", "0s"]}
# A smoke run (no --only) leaves these out: one cluster scenario exercises the cluster's path.
SMOKE_SKIPS = ("proxy-cluster-near", "proxy-cluster", "serve-cluster-near")
# (scenario, command, Debian packages to try in turn: nginx-light is gone from newer Debian).
PEER_COMMANDS = [("nginx", "nginx", ("nginx-light", "nginx")), ("varnish", "varnishd", ("varnish",))]
MEDIAN_KEYS = ("rps", "p50_us", "p99_us", "p999_us", "cpu_user_us", "cpu_sys_us")
CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")
# cachelayer also reads its flags from the environment: a REDIS_URL or CACHELAYER_* of the
# caller's shell would silently change a scenario (proxy-memory would use Redis).
SERVER_ENV = {key: value for key, value in os.environ.items()
              if key != "REDIS_URL" and not key.startswith("CACHELAYER_")}
# nginx and varnishd live in /usr/sbin, which a non-root PATH may lack.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core, argv):
    return ["taskset", "-c", str(core)] + argv if shutil.which("taskset") else argv


def render(template, **values):
    """A template of bench/load with its @NAME@ placeholders filled in (nginx and VCL syntax
    use both braces and dollars, so neither str.format nor string.Template fit)."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", str(value))
    return text


# --- Tools ---------------------------------------------------------------------------------

POLICY_RC = Path("/usr/sbin/policy-rc.d")


def apt_install(*packages):
    """Installs Debian packages without letting them start their services (a packaged nginx
    or Varnish would take ports and CPU): /usr/sbin/policy-rc.d answering 101, Debian's "do not
    start services", for the duration of the install, as scripts/test does."""
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt = sudo + ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]
    own_policy = not POLICY_RC.exists()
    if own_policy:
        subprocess.run(sudo + ["sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {POLICY_RC} "
                                           f"&& chmod +x {POLICY_RC}"], check=True)
    try:
        subprocess.run(apt + ["update", "-qq"], check=True)
        subprocess.run(apt + ["install", "-y", "-qq", *packages], check=True, stdout=subprocess.DEVNULL)
    finally:
        if own_policy:
            subprocess.run(sudo + ["rm", "-f", str(POLICY_RC)], check=True)


def ensure(command, *packages):
    """The path of command, installing the first of packages that installs when it is missing."""
    path = shutil.which(command, path=SEARCH_PATH)
    if path:
        return path
    for package in packages:
        print(f"load.py: {command} not found; installing Debian's {package}", file=sys.stderr)
        try:
            apt_install(package)
            break
        except (OSError, subprocess.CalledProcessError):
            if package == packages[-1]:
                raise
    path = shutil.which(command, path=SEARCH_PATH)
    if not path:
        raise RuntimeError(f"{command} is still missing after installing {' or '.join(packages)}")
    return path


def ensure_tools(scenarios, smoke):
    """{command: path} of wrk and the peers among scenarios, installed when missing, and the
    scenarios that can run. A measured run needs every peer; a smoke run (CI) exercises the
    peers when they can be installed and says loudly when one cannot."""
    tools = {"wrk": ensure("wrk", "wrk")}
    runnable = list(scenarios)
    for name, command, packages in PEER_COMMANDS:
        if name not in scenarios:
            continue
        try:
            tools[command] = ensure(command, *packages)
        except (OSError, subprocess.CalledProcessError, RuntimeError) as err:
            if not smoke:
                raise SystemExit(f"load.py: the {name} scenario needs {command}, which could not be installed: {err}")
            print(f"load.py: WARNING: smoke run WITHOUT {name}: {command} could not be installed ({err})",
                  file=sys.stderr)
            runnable.remove(name)
    return tools, runnable


def build(release):
    profile = ["--release"] if release else []
    subprocess.run(["cargo", "build", "--locked", *profile, "-p", "cachelayer-server",
                    "--bin", "cachelayer", "--example", "bench_origin"], cwd=ROOT, check=True)
    target = ROOT / "target" / ("release" if release else "debug")
    return target / "cachelayer", target / "examples" / "bench_origin"


# --- Processes -----------------------------------------------------------------------------

def wait_http(url, processes=(), deadline_s=120):
    """Waits for url to answer 200, failing at once if one of processes has exited."""
    deadline = time.time() + deadline_s
    while True:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(map(str, process.args))} "
                                   f"exited with status {process.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {deadline_s} s")
        time.sleep(0.1)


def check_cached(scenario, base):
    """A cached scenario must be measuring hits: /products/1, stored by the readiness probe
    and read again by the warm-up, must now be answered from the cache. Every cache here,
    nginx and Varnish included, labels its answer with X-Cache."""
    if scenario in UNCACHED:
        return
    with urllib.request.urlopen(f"{base}/products/1", timeout=5) as response:
        label = response.headers.get("x-cache")
    if label != "HIT":
        raise SystemExit(f"load.py: {scenario} answered X-Cache {label} after the warm-up, not HIT")


def proc_stat(pid):
    """(ppid, utime, stime) of a process: fields 4, 14 and 15 of /proc/<pid>/stat, counted
    after the command name, which may hold spaces and parentheses. Times are in clock ticks
    and cover all the process's threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[11]), int(fields[12])


def process_tree(pid):
    """pid and all its descendants (nginx's worker, Varnish's child), by a walk of /proc
    (/proc/<pid>/task/*/children needs a kernel option that not every kernel has)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(proc_stat(entry.name)[0], []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass  # gone meanwhile
    tree, queue = [], [pid]
    while queue:
        tree.append(queue.pop())
        queue.extend(children.get(tree[-1], []))
    return tree


def cpu_ticks(roots):
    """{role: {pid: (utime, stime)}} over the process trees of {role: root pid}."""
    snapshot = {}
    for role, root in roots.items():
        snapshot[role] = {}
        for pid in process_tree(root):
            with contextlib.suppress(OSError, IndexError, ValueError):
                snapshot[role][pid] = proc_stat(pid)[1:]
    return snapshot


def cpu_spent(before, after):
    """{role: {"user_s", "sys_s"}} between two cpu_ticks snapshots; a process born in between
    counts from zero."""
    spent = {}
    for role, pids in after.items():
        user = system = 0
        for pid, (utime, stime) in pids.items():
            utime0, stime0 = before.get(role, {}).get(pid, (0, 0))
            user, system = user + utime - utime0, system + stime - stime0
        spent[role] = {"user_s": user * CLOCK_TICK_S, "sys_s": system * CLOCK_TICK_S}
    return spent


def started_at(pid):
    """A process's start time (field 22 of /proc/<pid>/stat), which tells it from a later
    process given the same PID; None once it is gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def stop(processes):
    """Stops the processes (SIGTERM, then SIGKILL after 15 s). nginx's master and Varnish's
    manager stop their children themselves; one that had to be killed may leave them, and
    those are killed too, so that nothing outlives the benchmark."""
    processes = [process for process in processes if process is not None]
    descendants = {process.pid: [(pid, started_at(pid)) for pid in process_tree(process.pid)[1:]]
                   for process in processes if process.poll() is None}
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            for pid, start in descendants.get(process.pid, []):
                if start is not None and started_at(pid) == start:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def nginx_user():
    """nginx started as root runs its worker as `user` (nobody by default), which could not
    write its cache in this root-only temporary directory: it runs as whoever runs the
    benchmark. Without root the directive would only draw a warning."""
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"


@dataclass
class Running:
    """A started scenario: its base URL and its processes by role ("server", "upstream")."""
    name: str
    base: str
    processes: dict


class Bench:
    def __init__(self, args, cachelayer, origin, workdir, tools, scenarios):
        self.args = args
        self.cachelayer = cachelayer
        self.origin = origin
        self.workdir = Path(workdir)
        self.tools = tools
        self.scenarios = scenarios
        self.database = f"sqlite://{workdir}/catalogue.db"
        self.server_core, self.load_core = (0, 1) if os.cpu_count() >= 2 else (0, 0)
        self.redis = None
        self.redis_port = None
        self.redis_url = None
        self.cluster = None

    def spawn(self, argv, log=None):
        """A server-side process, on the server core; its stderr to log when given (Varnish
        narrates its start and stop there), to ours otherwise."""
        stderr = open(log, "w") if log else None
        try:
            return subprocess.Popen(pinned(self.server_core, [str(arg) for arg in argv]),
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=SERVER_ENV)
        finally:
            if stderr:
                stderr.close()

    def start_redis(self):
        port = free_port()
        self.redis = self.spawn(["redis-server", "--port", port, "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", self.workdir])
        deadline = time.time() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.redis_port = port
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def start_cluster(self):
        """The Redis Cluster of the cluster scenarios: 3 primaries + 3 replicas, each node
        pinned to the server core, logging into its own directory under workdir."""
        self.cluster = redis_topology.RedisCluster(
            lambda argv, name: self.spawn(argv), self.workdir / "cluster")
        took = self.cluster.start()
        print(f"load.py: Redis Cluster of 3 primaries + 3 replicas formed in {took:.1f} s", flush=True)

    def redis_flags(self, scenario):
        if scenario in USES_CLUSTER:
            return ["--redis-url", self.cluster.url(), *REDIS_FLAGS[scenario]]
        return ["--redis-url", self.redis_url, *REDIS_FLAGS[scenario]] if scenario in REDIS_FLAGS else []

    def serve(self, port, scenario):
        flags = [*SERVE_FLAGS[scenario], *self.redis_flags(scenario)]
        return self.spawn([self.cachelayer, "serve", "--listen", f"127.0.0.1:{port}", "--database-url",
                           self.database, "--seed", "1000", "--workers", "1", "--log", "warn", *flags])

    def proxy(self, port, upstream, scenario):
        store = self.redis_flags(scenario)
        return self.spawn([self.cachelayer, "proxy", "--upstream", f"http://127.0.0.1:{upstream}",
                           "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}",
                           *store, "--workers", "1", "--log", "warn"])

    def nginx(self, port, upstream):
        directory = self.workdir / f"nginx-{port}"
        directory.mkdir()
        conf = directory / "nginx.conf"
        conf.write_text(render(NGINX_CONF, USER=nginx_user(), DIR=directory, PORT=port, UPSTREAM_PORT=upstream))
        # -e: the error log before the configuration is read (Debian's default is stderr).
        return self.spawn([self.tools["nginx"], "-p", directory, "-c", conf, "-e", directory / "error.log"])

    def varnish(self, port, upstream):
        vcl = self.workdir / f"varnish-{port}.vcl"
        vcl.write_text(render(VARNISH_VCL, UPSTREAM_PORT=upstream))
        # -F: in the foreground, so that this is the manager's PID (its child is found by
        # process_tree); -n: its own working directory, apart from any system instance.
        # As root, its default jail would run the child as user vcache, which cannot enter
        # this root-only temporary directory: -j none keeps it as the benchmark's user.
        jail = ["-j", "none"] if os.geteuid() == 0 else []
        return self.spawn([self.tools["varnishd"], "-F", "-a", f"127.0.0.1:{port}", "-f", vcl,
                           "-s", "malloc,256m", "-n", self.workdir / f"varnish-{port}", *jail],
                          log=self.workdir / f"varnish-{port}.log")

    def launch(self, scenario, port, processes):
        """Starts the scenario's processes into processes (by role), upstream first."""
        if scenario == "limit":
            processes["server"] = self.spawn([self.origin, f"127.0.0.1:{port}", "1"])
        elif scenario in SERVE_FLAGS:
            processes["server"] = self.serve(port, scenario)
        else:
            upstream = free_port()
            processes["upstream"] = self.spawn([self.origin, f"127.0.0.1:{upstream}", "1"])
            wait_http(f"http://127.0.0.1:{upstream}/products/1", processes.values())
            if scenario == "nginx":
                processes["server"] = self.nginx(port, upstream)
            elif scenario == "varnish":
                processes["server"] = self.varnish(port, upstream)
            elif scenario in PROXIES:
                processes["server"] = self.proxy(port, upstream, scenario)
            else:
                raise ValueError(scenario)

    def start(self, scenario):
        """The started scenario, answering (its /products/1 stored when it caches)."""
        port, processes = free_port(), {}
        base = f"http://127.0.0.1:{port}"
        try:
            self.launch(scenario, port, processes)
            wait_http(f"{base}/products/1", processes.values())
        except BaseException:
            stop(processes.values())
            self.print_logs()
            raise
        return Running(scenario, base, processes)

    def print_logs(self):
        """The servers' own logs in the temporary directory (nginx's, Varnish's), for a
        scenario that failed to start: they go with the directory."""
        for log in sorted(self.workdir.glob("*.log")) + sorted(self.workdir.glob("nginx-*/error.log")):
            text = log.read_text(errors="replace").strip()
            if text:
                print(f"--- {log.relative_to(self.workdir)}:\n" + "\n".join(text.splitlines()[-20:]), file=sys.stderr)

    @contextlib.contextmanager
    def warmed(self, scenario):
        """The started scenario after the warm-up, its hits checked; stopped on exit."""
        running = self.start(scenario)
        try:
            # Warm-up: fills the caches (1,000 keys) and the connection pools.
            self.wrk(running.base, self.args.warmup)
            check_cached(scenario, running.base)
            yield running
        finally:
            stop(running.processes.values())

    def server_side(self, running):
        """{role: pid} of every process that works for the scenario's requests."""
        roles = {role: process.pid for role, process in running.processes.items()}
        if running.name in USES_REDIS:
            # Shared across scenarios, but idle between them: its delta is this scenario's.
            roles["redis"] = self.redis.pid
        if running.name in USES_CLUSTER:
            roles.update(self.cluster.pids())  # all six nodes, replicas included
        return roles

    def measure(self, running):
        """The measured wrk run, with the CPU that the server-side processes spent in it."""
        roles = self.server_side(running)
        on_redis, on_cluster = running.name in USES_REDIS, running.name in USES_CLUSTER
        if on_redis:
            self.redis_cli("CONFIG", "RESETSTAT")
        if on_cluster:
            # Asked before the reset: the question (CLUSTER NODES) must not count.
            primaries = self.cluster.primary_ports()
            self.cluster.reset_stats()
        before = cpu_ticks(roles)
        result = self.wrk(running.base, self.args.duration)
        spent = cpu_spent(before, cpu_ticks(roles))
        requests = max(result["requests"], 1)
        if on_redis:
            result["redis_commands_per_req"] = self.redis_commands() / requests
        if on_cluster:
            result["redis_commands_per_req"] = self.cluster.commands_on(primaries) / requests
        result["cpu_user_us"] = sum(role["user_s"] for role in spent.values()) / requests * 1e6
        result["cpu_sys_us"] = sum(role["sys_s"] for role in spent.values()) / requests * 1e6
        result["cpu_s"] = spent
        return result

    def redis_cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.redis_port), *args], capture_output=True,
                              text=True, check=True).stdout

    def redis_commands(self):
        """Commands Redis executed since the last CONFIG RESETSTAT (that one excluded)."""
        calls = [int(m[1]) for m in re.finditer(r"^cmdstat_(?!config)\S+?:calls=(\d+)",
                                                 self.redis_cli("INFO", "commandstats"), re.M)]
        return sum(calls)

    def run(self, scenario):
        with self.warmed(scenario) as running:
            return self.measure(running)

    def wrk(self, base, duration):
        argv = pinned(self.load_core, [self.tools["wrk"], "-t1", f"-c{self.args.connections}",
                                       f"-d{duration}", "--timeout", "5s", "-s", str(LUA), base])
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        line = [line for line in output.splitlines() if line.startswith("{")][-1]
        result = json.loads(line)
        result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
        return result


@contextlib.contextmanager
def session(args, scenarios):
    """A Bench for scenarios: tools installed, binaries built, a temporary directory, and
    Redis when a scenario needs it; everything stopped and removed on exit."""
    tools, runnable = ensure_tools(scenarios, args.smoke)
    cachelayer, origin = build(release=not args.smoke)
    with tempfile.TemporaryDirectory(prefix="cachelayer-load-") as workdir:
        bench = Bench(args, cachelayer, origin, workdir, tools, runnable)
        try:
            if any(name in USES_REDIS for name in runnable):
                bench.start_redis()
            if any(name in USES_CLUSTER for name in runnable):
                bench.start_cluster()
            yield bench
        finally:
            stop([bench.redis])
            if bench.cluster is not None:
                bench.cluster.stop()


# --- Results -------------------------------------------------------------------------------

def compared_to(name):
    """The scenarios whose throughput name's is compared with: the limit for every other,
    nginx and Varnish for the proxy scenarios, the two peers to each other, and a cluster
    scenario's one-Redis twin."""
    targets = [] if name == "limit" else ["limit"]
    if name in PROXIES:
        targets += PEERS
    elif name in PEERS:
        targets += [peer for peer in PEERS if peer != name]
    if name in CLUSTER_TWIN:
        targets.append(CLUSTER_TWIN[name])
    return targets


def summarize(runs):
    """Medians of each scenario's rounds; each ratio ("vs_limit", "vs_nginx", "vs_varnish",
    "vs_<twin>" for a cluster scenario) is the median of per-round ratios, each to the other
    scenario of the same round."""
    summary = {}
    for name, results in runs.items():
        medians = {key: statistics.median(run[key] for run in results) for key in MEDIAN_KEYS}
        if "redis_commands_per_req" in results[0]:
            medians["redis_commands_per_req"] = statistics.median(
                run["redis_commands_per_req"] for run in results)
        for other in compared_to(name):
            if other in runs:
                medians[f"vs_{other}"] = statistics.median(
                    run["rps"] / peer["rps"] for run, peer in zip(results, runs[other]))
        summary[name] = medians
    return summary


def ratio_cell(medians, other):
    ratio = medians.get(f"vs_{other}")
    return "—" if ratio is None else f"{ratio:.2f}"


def redis_cell(medians):
    per_request = medians.get("redis_commands_per_req")
    return "—" if per_request is None else f"{per_request:.4f}"


def table(summary):
    lines = [
        "| scenario | requests/s | vs limit | vs nginx | vs Varnish | vs one Redis | p50 | p99 | p99.9 | "
        "CPU µs/req (user+sys) | Redis commands/req |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, label in SCENARIOS:
        if name not in summary:
            continue
        m = summary[name]
        vs_limit = "1.00 (ceiling)" if name == "limit" else ratio_cell(m, "limit")
        user, system = m["cpu_user_us"], m["cpu_sys_us"]
        twin = ratio_cell(m, CLUSTER_TWIN[name]) if name in CLUSTER_TWIN else "—"
        lines.append(f"| {label} | {m['rps']:,.0f} | {vs_limit} | {ratio_cell(m, 'nginx')} | "
                     f"{ratio_cell(m, 'varnish')} | {twin} | {m['p50_us'] / 1000:.2f} ms | {m['p99_us'] / 1000:.2f} ms | "
                     f"{m['p999_us'] / 1000:.2f} ms | {user + system:.1f} ({user:.1f}+{system:.1f}) | "
                     f"{redis_cell(m)} |")
    return "\n".join(lines)


def svg(summary, rounds):
    """Two bar charts: requests per second (limit dashed) and p99 (2 ms target dashed); the
    limit's bar is grey and the peers' (nginx, Varnish) orange."""
    names = [name for name in NAMES if name in summary]
    width, height, top, bottom, left = 1100, 360, 40, 100, 60
    panel = (width - 2 * left) // 2
    plot_h = height - top - bottom
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']

    def chart(x0, title, values, unit, mark, mark_label, color):
        top_value = max(max(values), mark) * 1.15
        out.append(f'<text x="{x0 + panel / 2}" y="22" text-anchor="middle" font-size="14" '
                   f'font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{top + plot_h}" x2="{x0 + panel}" y2="{top + plot_h}" stroke="#333"/>')
        slot = panel / len(values)
        for i, (name, value) in enumerate(zip(names, values)):
            bar_h = plot_h * value / top_value
            x = x0 + i * slot + slot * 0.15
            y = top + plot_h - bar_h
            fill = "#888" if name == "limit" else "#e80" if name in PEERS else color
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{bar_h:.1f}" fill="{fill}"/>')
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" text-anchor="middle" font-size="10">'
                       f'{value:,.{0 if unit == "" else 2}f}{unit}</text>')
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{top + plot_h + 16}" text-anchor="end" '
                       f'transform="rotate(-30 {x + slot * 0.35:.1f} {top + plot_h + 16})">{name}</text>')
        mark_y = top + plot_h - plot_h * mark / top_value
        out.append(f'<line x1="{x0}" y1="{mark_y:.1f}" x2="{x0 + panel}" y2="{mark_y:.1f}" '
                   f'stroke="#c00" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{x0 + panel}" y="{mark_y - 4:.1f}" text-anchor="end" fill="#c00">{mark_label}</text>')

    rps = [summary[n]["rps"] for n in names]
    chart(left / 2, f"requests per second (median of {rounds})", rps, "", summary["limit"]["rps"], "limit", "#2a6")
    p99 = [summary[n]["p99_us"] / 1000 for n in names]
    chart(left * 1.5 + panel, f"p99 latency, ms (median of {rounds})", p99, " ms", 2.0, "2 ms target", "#36c")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def version(argv, name):
    """A tool's version, "nginx 1.22.1" (nginx and varnishd print theirs to stderr)."""
    result = subprocess.run(argv, capture_output=True, text=True)
    match = re.search(r"(\d+(?:\.\d+)+)", result.stderr + result.stdout)
    return f"{name} {match[1]}" if match else name


def machine():
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({model}), commit {commit}, {time.strftime('%Y-%m-%d')}"


def write_benchmarks(summary, runs, args, tools):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps({"runs": runs, "medians": summary}, indent=2) + "\n")
    (RESULTS / "load.svg").write_text(svg(summary, args.rounds))
    nginx, varnish = version([tools["nginx"], "-v"], "nginx"), version([tools["varnishd"], "-V"], "Varnish")
    section = "\n".join([
        START,
        f"`python3 bench/load.py` on {machine()}: {args.rounds} rounds x {args.duration} per scenario "
        f"after a {args.warmup} warm-up, wrk with 1 thread and {args.connections} connections pinned to "
        "core 1; every server-side process of a scenario (the server, its upstream bench_origin, Redis) "
        f"pinned to core 0. Peers in front of the same bench_origin: {nginx} (1 worker, proxy_cache, "
        f"`bench/load/nginx.conf.tmpl`) and {varnish} (default thread pools: 2 pools of 100 to 5,000 "
        "threads; `-s malloc,256m`; `bench/load/varnish.vcl`), both caching for the origin's "
        "`max-age=300`. Medians of the rounds; each ratio is the median of per-round ratios to the "
        "named scenario of the same round. CPU µs/req: user and system CPU time of all the "
        "scenario's server-side processes (whole process trees, `/proc/<pid>/stat`) over the "
        "measured run, per request. Redis commands/req: every command Redis ran during the "
        "measured run (`INFO commandstats`; on the cluster, summed over its primaries), per request. "
        "vs one Redis: a Redis Cluster scenario (3 primaries + 3 replicas, all on core 0) against "
        "the same scenario on one Redis, per round.",
        "",
        table(summary),
        "",
        "![requests per second and p99 per scenario](bench/results/load.svg)",
        END,
    ])
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    if START in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip() + "\n\n## Load benchmark (HTTP, end to end)\n\n" + section + "\n"
    path.write_text(text)


# --- Command line --------------------------------------------------------------------------

def add_load_arguments(parser):
    """The flags of a measured wrk run, shared with bench/profile.py."""
    parser.add_argument("--duration", default="10s", help="measured wrk run per scenario (default 10s)")
    parser.add_argument("--warmup", default="3s", help="wrk warm-up before it (default 3s)")
    parser.add_argument("--connections", type=int, default=64)


def require_pinning():
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        raise SystemExit("load.py: figures need 2 cores and taskset (util-linux) to pin the server "
                         "and wrk apart; --smoke runs without them")


def report_round(round_, name, result):
    redis = (f", Redis {result['redis_commands_per_req']:.4f} commands/req"
             if "redis_commands_per_req" in result else "")
    print(f"round {round_ + 1} {name}: {result['rps']:,.0f} req/s, p50 {result['p50_us']} µs, "
          f"p99 {result['p99_us']} µs, p99.9 {result['p999_us']} µs, CPU {result['cpu_user_us']:.1f}+"
          f"{result['cpu_sys_us']:.1f} µs/req{redis}, errors {result['errors']}", flush=True)
    if result["errors"] or result["requests"] == 0:
        raise SystemExit(f"load.py: {name} had {result['errors']} errors in {result['requests']} requests")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 round x 1 s, debug build, nothing written")
    parser.add_argument("--rounds", type=int, default=3)
    add_load_arguments(parser)
    parser.add_argument("--only", help=f"comma-separated scenarios of {','.join(NAMES)}; writes nothing")
    parser.add_argument("--json", help="also write every round's figures and the medians to this file")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.duration, args.warmup, args.connections = 1, "1s", "1s", 8
    else:
        require_pinning()
    only = args.only.split(",") if args.only else NAMES
    if args.smoke and not args.only:
        only = [name for name in NAMES if name not in SMOKE_SKIPS]
    unknown = sorted(set(only) - set(NAMES))
    if unknown:
        raise SystemExit(f"load.py: unknown scenarios {', '.join(unknown)}; known: {', '.join(NAMES)}")
    runs = {}
    with session(args, [name for name in NAMES if name in only]) as bench:
        for round_ in range(args.rounds):
            for name in bench.scenarios:
                result = bench.run(name)
                report_round(round_, name, result)
                runs.setdefault(name, []).append(result)
        tools = bench.tools
    summary = summarize(runs)
    print(table(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs, "medians": summary},
                                              indent=2) + "\n")
    if args.smoke or args.only:
        print("load.py: smoke run passed" if args.smoke else "load.py: partial run, nothing written")
        return
    write_benchmarks(summary, runs, args, tools)


if __name__ == "__main__":
    main()
