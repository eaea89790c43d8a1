#!/usr/bin/env python3
"""The load benchmark: builds the binaries, starts every scenario on loopback, drives it with
wrk, and writes the medians to BENCHMARKS.md with an SVG chart.

    python3 bench/load.py            # 3 rounds x 10 s per scenario, release build (~6 min)
    python3 bench/load.py --smoke    # 1 round x 1 s, debug build, nothing written (scripts/test)

Each scenario's server runs pinned to core 0 and wrk to core 1 (`taskset`); Redis and the
proxy's upstream share core 1 with wrk. Ids are spread over 1,000 products (~1 KB each).
Every round runs every scenario, and a ratio is the median of per-round ratios to the limit.
It must never report a figure from a run with errors: such a run fails the script.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "load" / "products.lua"
RESULTS = ROOT / "bench" / "results"
START, END = "<!-- load-benchmark:start -->", "<!-- load-benchmark:end -->"

SCENARIOS = [
    ("limit", "limit: minimal hyper server, bytes from memory"),
    ("serve-redis", "serve, cached: Redis store"),
    ("serve-memory", "serve, cached: in-process store"),
    ("serve-miss", "serve, miss: cache off, SQLite every request"),
    ("proxy-redis", "proxy, cached (Redis) in front of the limit server"),
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(core, argv):
    return ["taskset", "-c", str(core)] + argv if shutil.which("taskset") else argv


def ensure_wrk():
    if shutil.which("wrk"):
        return
    print("load.py: wrk not found; installing Debian's wrk", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "wrk"], check=True, env=env,
                   stdout=subprocess.DEVNULL)


def build(release):
    profile = ["--release"] if release else []
    subprocess.run(["cargo", "build", "--locked", *profile, "-p", "cachelayer-server",
                    "--bin", "cachelayer", "--example", "bench_origin"], cwd=ROOT, check=True)
    target = ROOT / "target" / ("release" if release else "debug")
    return target / "cachelayer", target / "examples" / "bench_origin"


def wait_http(url, deadline_s=120):
    deadline = time.time() + deadline_s
    while True:
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
    and read again by the warm-up, must now be answered from the cache."""
    if scenario in ("limit", "serve-miss"):
        return
    with urllib.request.urlopen(f"{base}/products/1", timeout=5) as response:
        label = response.headers.get("x-cache")
    if label != "HIT":
        raise SystemExit(f"load.py: {scenario} answered X-Cache {label} after the warm-up, not HIT")


def stop(processes):
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Bench:
    def __init__(self, args, cachelayer, origin, workdir):
        self.args = args
        self.cachelayer = cachelayer
        self.origin = origin
        self.workdir = workdir
        self.database = f"sqlite://{workdir}/catalogue.db"
        self.server_core, self.load_core = (0, 1) if os.cpu_count() >= 2 else (0, 0)
        self.redis = None
        self.redis_url = None

    def start_redis(self):
        port = free_port()
        self.redis = subprocess.Popen(
            pinned(self.load_core, ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                    "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]),
            stdout=subprocess.DEVNULL)
        deadline = time.time() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                             text=True).stdout.strip() != "PONG":
            if time.time() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        self.redis_url = f"redis://127.0.0.1:{port}/0"

    def serve(self, port, extra):
        argv = [str(self.cachelayer), "serve", "--listen", f"127.0.0.1:{port}", "--database-url",
                self.database, "--seed", "1000", "--workers", "1", "--log", "warn", *extra]
        return subprocess.Popen(pinned(self.server_core, argv), stdout=subprocess.DEVNULL)

    def start(self, scenario):
        """The scenario's processes, and the base URL to load."""
        port = free_port()
        if scenario == "limit":
            processes = [subprocess.Popen(pinned(self.server_core, [str(self.origin), f"127.0.0.1:{port}", "1"]),
                                          stdout=subprocess.DEVNULL)]
        elif scenario == "serve-redis":
            processes = [self.serve(port, ["--redis-url", self.redis_url])]
        elif scenario == "serve-memory":
            processes = [self.serve(port, [])]
        elif scenario == "serve-miss":
            processes = [self.serve(port, ["--cache-ttl", "0s"])]
        elif scenario == "proxy-redis":
            upstream = free_port()
            origin = subprocess.Popen(pinned(self.load_core, [str(self.origin), f"127.0.0.1:{upstream}", "1"]),
                                      stdout=subprocess.DEVNULL)
            proxy = subprocess.Popen(pinned(self.server_core, [
                str(self.cachelayer), "proxy", "--upstream", f"http://127.0.0.1:{upstream}",
                "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{free_port()}",
                "--redis-url", self.redis_url, "--workers", "1", "--log", "warn"]),
                stdout=subprocess.DEVNULL)
            processes = [origin, proxy]
        else:
            raise ValueError(scenario)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{base}/products/1")
        except Exception:
            stop(processes)
            raise
        return processes, base

    def wrk(self, base, duration, connections):
        argv = pinned(self.load_core, ["wrk", "-t1", f"-c{connections}", f"-d{duration}",
                                       "--timeout", "5s", "-s", str(LUA), base])
        output = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        line = [line for line in output.splitlines() if line.startswith("{")][-1]
        result = json.loads(line)
        result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
        return result

    def run(self, scenario):
        processes, base = self.start(scenario)
        try:
            # Warm-up: fills the caches (1,000 keys) and the connection pools.
            self.wrk(base, self.args.warmup, self.args.connections)
            check_cached(scenario, base)
            return self.wrk(base, self.args.duration, self.args.connections)
        finally:
            stop(processes)


def medians(runs, limits):
    """Medians of a scenario's rounds; its ratio is the median of per-round ratios, each to
    the limit of the same round."""
    summary = {key: statistics.median(run[key] for run in runs)
               for key in ("rps", "p50_us", "p99_us", "p999_us")}
    summary["ratio"] = statistics.median(run["rps"] / limit["rps"] for run, limit in zip(runs, limits))
    return summary


def table(summary, args):
    lines = [
        f"| scenario | requests/s | vs limit | p50 | p99 | p99.9 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, label in SCENARIOS:
        m = summary[name]
        ratio = "1.00 (ceiling)" if name == "limit" else f"{m['ratio']:.2f}"
        lines.append(f"| {label} | {m['rps']:,.0f} | {ratio} | {m['p50_us'] / 1000:.2f} ms | "
                     f"{m['p99_us'] / 1000:.2f} ms | {m['p999_us'] / 1000:.2f} ms |")
    return "\n".join(lines)


def svg(summary):
    """Two bar charts: requests per second (limit dashed) and p99 (2 ms target dashed)."""
    names = [name for name, _ in SCENARIOS]
    width, height, top, bottom, left = 880, 340, 40, 90, 60
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
            fill = "#888" if name == "limit" else color
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{bar_h:.1f}" fill="{fill}"/>')
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" text-anchor="middle">{value:,.{0 if unit == "" else 2}f}{unit}</text>')
            out.append(f'<text x="{x + slot * 0.35:.1f}" y="{top + plot_h + 16}" text-anchor="end" '
                       f'transform="rotate(-30 {x + slot * 0.35:.1f} {top + plot_h + 16})">{name}</text>')
        mark_y = top + plot_h - plot_h * mark / top_value
        out.append(f'<line x1="{x0}" y1="{mark_y:.1f}" x2="{x0 + panel}" y2="{mark_y:.1f}" '
                   f'stroke="#c00" stroke-dasharray="5,4"/>')
        out.append(f'<text x="{x0 + panel}" y="{mark_y - 4:.1f}" text-anchor="end" fill="#c00">{mark_label}</text>')

    rps = [summary[n]["rps"] for n in names]
    chart(left / 2, "requests per second (median of 3)", rps, "", summary["limit"]["rps"], "limit", "#2a6")
    p99 = [summary[n]["p99_us"] / 1000 for n in names]
    chart(left * 1.5 + panel, "p99 latency, ms (median of 3)", p99, " ms", 2.0, "2 ms target", "#36c")
    out.append("</svg>")
    return "\n".join(out) + "\n"


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


def write_benchmarks(summary, runs, args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "load.json").write_text(json.dumps({"runs": runs, "medians": summary}, indent=2) + "\n")
    (RESULTS / "load.svg").write_text(svg(summary))
    section = "\n".join([
        START,
        f"`python3 bench/load.py` on {machine()}: {args.rounds} rounds x {args.duration} per scenario "
        f"after a {args.warmup} warm-up, wrk with 1 thread and {args.connections} connections, "
        "server pinned to core 0 and wrk to core 1 (Redis and the proxy's upstream on core 1 too), "
        "medians of the rounds; each ratio is the median of per-round ratios to the limit of the same round.",
        "",
        table(summary, args),
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 round x 1 s, debug build, nothing written")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--warmup", default="3s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--only", help="comma-separated scenarios")
    args = parser.parse_args()
    if args.smoke:
        args.rounds, args.duration, args.warmup, args.connections = 1, "1s", "1s", 8
    elif (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        raise SystemExit("load.py: figures need 2 cores and taskset (util-linux) to pin the server "
                         "and wrk apart; --smoke runs without them")
    ensure_wrk()
    cachelayer, origin = build(release=not args.smoke)
    chosen = [name for name, _ in SCENARIOS if not args.only or name in args.only.split(",")]
    runs = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory(prefix="cachelayer-load-") as workdir:
        bench = Bench(args, cachelayer, origin, workdir)
        bench.start_redis()
        try:
            for round_ in range(args.rounds):
                for name in chosen:
                    result = bench.run(name)
                    print(f"round {round_ + 1} {name}: {result['rps']:,.0f} req/s, p50 {result['p50_us']} µs, "
                          f"p99 {result['p99_us']} µs, p99.9 {result['p999_us']} µs, errors {result['errors']}",
                          flush=True)
                    if result["errors"] or result["requests"] == 0:
                        raise SystemExit(f"load.py: {name} had {result['errors']} errors in {result['requests']} requests")
                    runs[name].append(result)
        finally:
            stop([bench.redis])
    if args.smoke or args.only:
        print("load.py: smoke run passed" if args.smoke else "load.py: partial run, nothing written")
        return
    summary = {name: medians(results, runs["limit"]) for name, results in runs.items()}
    write_benchmarks(summary, runs, args)
    print(table(summary, args))


if __name__ == "__main__":
    main()
