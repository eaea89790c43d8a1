#!/usr/bin/env python3
"""Where one load-benchmark scenario spends its CPU on the hit path: `perf record` on the
server core while wrk drives the scenario exactly as bench/load.py does (same processes, same
pinning, same warm-up and hit check; this script imports load.py), then the server's samples
sorted into buckets (kernel, HTTP, cache lookup, encoding, metrics, allocation, runtime,
other), each with its share and its µs of CPU per request. Prints a markdown table for
BENCHMARKS.md, and the top 25 symbols.

    python3 bench/profile.py proxy-memory               # 10 s under load after a 3 s warm-up
    python3 bench/profile.py nginx --duration 5s
    python3 bench/profile.py serve-memory --call-graph none   # leaf symbols only

Run it like load.py, under `flock /tmp/cachelayer-cpu.lock` on a shared machine. Scenarios:
those of load.py (limit, nginx, varnish, proxy-memory, proxy-near, proxy-redis, proxy-cluster-near,
proxy-cluster, serve-memory, serve-near, serve-redis, serve-cluster-near, serve-cluster, serve-miss).

How: `perf record -e cpu-clock` (a software event: virtual machines often have no hardware
counters) samples all of core 0, where every server-side process runs, at 999 Hz; perf itself
runs on wrk's core. The release build has symbols but no debug info and no frame pointers,
so call stacks come from DWARF unwinding of an 8 KB copy of the user stack (`--call-graph
dwarf`; `fp` gives garbage there). A sample goes to the bucket of its innermost frame that has
one: a sample in `core::fmt` under `cachelayer::key::hash` is cache lookup, one in `memcpy` is
allocation wherever it is called from. Inlined code counts as the function it was inlined
into. The CPU µs per request are the bucket's share of the server's samples times the
server's CPU per request, read from /proc over the same wrk run as load.py reads it.
nginx and Varnish symbols may be partly unresolved (Debian strips them): their split is
kernel versus user at least.
"""

import argparse
import bisect
import collections
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

# Importing load.py would leave bench/__pycache__ in the work tree, where a `git add -A`
# sweeps it up.
sys.dont_write_bytecode = True
import load  # noqa: E402

KERNEL_START = 0xFFFF800000000000  # x86-64 kernel addresses; perf names the DSO too
# (bucket, pattern on the symbol's owning path, see owner()), first match wins. A symbol that
# matches none (core::fmt, hashbrown, futures' combinators...) takes its caller's bucket.
BUCKETS = [
    ("allocation", r"^_?mi_|mimalloc|^je_|jemalloc|^(__libc_)?(malloc|calloc|realloc|free|cfree)$|"
                   r"^_int_(malloc|free|realloc)|^malloc_|^unlink_chunk|^tcache|^__(memcpy|memmove|memset)|"
                   r"^mem(cpy|move|set)$|^(__rustc::)?__rust_(alloc|dealloc|realloc|alloc_zeroed)|^__rdl_|"
                   r"^alloc::(alloc|raw_vec)::|"
                   r"^ngx_(palloc|pnalloc|pcalloc|alloc|calloc|create_pool|destroy_pool|reset_pool|pfree)$|^WS_"),
    ("metrics", r"^metrics(_exporter_prometheus|_util)?::|^cachelayer_server::(observe|metrics)::|"
                r"^cachelayer::telemetry::|^(VSL|VSM|VSC|vsl|vsm)"),
    ("encoding", r"^(serde|serde_core|serde_json|rmp|rmp_serde|base64|zstd|zstd_safe|zstd_sys)::|"
                 r"^_?(ZSTD_|HUF_|FSE_|HIST_)|^cachelayer::(codec|http::stored)::"),
    ("cache lookup", r"^cachelayer::(cache|store|stampede|key|breaker)::|"
                     r"^cachelayer::http::(lookup|key|vary|lifetime|policy|admit|collapse|revalidate|refresh|invalidate|tags)::|"
                     r"^(moka|redis|crossbeam_\w+|quanta|tagptr)::|"
                     r"^ngx_http_(file_cache|upstream_cache)|^(HSH|hsh|EXP|exp|BAN|ban|stv|SML|sml|ObjGet|ObjIter|OBJ)"),
    ("HTTP", r"^(hyper|hyper_util|h2|httparse|http|http_body|http_body_util|axum|axum_core|tower|tower_service|"
             r"tower_layer|tower_http|matchit|bytes|mio)::|^tokio::(io|net|runtime::io)::|^cachelayer::http::|"
             r"^cachelayer_server::(proxy|listen)::|^cachelayer_server::serve::(api|app)::|"
             r"^(__libc_)?(send|recv|sendmsg|recvmsg|read|write|writev|readv)$|"
             r"^ngx_(http_|recv|send|unix_|linux_sendfile|readv|writev|output_chain|chain_)|^(HTTP1?_|V1[DFLP]_|http_|http1_|VRT_|VCL_|vcl_|CNT_|cnt_|Req_|SES_|VFP_|VDP_|vdp_|vfp_)"),
    ("runtime", r"^tokio::|^(parking_lot|parking_lot_core)::|^std::(thread|sys|sync)::|futex|^syscall$|pthread|"
                r"^__lll_|^epoll_(wait|ctl)$|^ngx_(epoll|process_events|event_|process_cycle|worker_process)|"
                r"^(Pool_|pool_|WRK_|wrk_|Lck_|VTIM_|Mtx|vwe_|vwp_|VWP_|VWE_)"),
]
ORDER = ["kernel", "HTTP", "cache lookup", "encoding", "metrics", "allocation", "runtime", "other"]
PATH = re.compile(r"[A-Za-z_]\w*(?:::[A-Za-z_]\w*)+")


def owner(symbol):
    """The path a symbol belongs to: `<hyper::Conn<..> as Trait>::poll` -> `hyper::Conn`,
    `core::ptr::drop_in_place<h2::Frame>` -> `h2::Frame` (core, alloc and std wrappers say
    little of whose work it is); a C symbol is its own owner."""
    paths = PATH.findall(symbol)
    for path in paths:
        if not path.startswith(("core::", "alloc::", "std::")):
            return path
    return paths[0] if paths else symbol


def classify(symbol):
    """The bucket of a user-space symbol, or None."""
    name = owner(symbol.removeprefix("~"))
    for bucket, pattern in BUCKETS:
        if re.search(pattern, name):
            return bucket
    return None


def bucket_of(frames):
    """The bucket of a sample from its frames (innermost first, each (ip, symbol, dso))."""
    ip, _, dso = frames[0]
    if ip >= KERNEL_START or dso.startswith("[kernel"):
        return "kernel"
    for _, symbol, _ in frames:
        bucket = classify(symbol)
        if bucket:
            return bucket
    return "other"


FRAME = re.compile(r"^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)$")
MMAP = re.compile(r"PERF_RECORD_MMAP2 (\d+)/\d+: \[0x([0-9a-f]+)\(0x([0-9a-f]+)\) @ (0x[0-9a-f]+|0) .*\]: \S+ (/.*)$")


class Symbolizer:
    """Names the frames perf leaves [unknown] in an executable with a symbol table: code under
    a symbol without a size, such as zstd's assembly Huffman loops, gets the nearest symbol
    before it (marked with a `~`). perf prints a leaf without call graph as an address in
    memory, mapped by its own MMAP2 records, and a call-graph frame as an offset in its file."""

    def __init__(self):
        self.maps = collections.defaultdict(list)
        self.tables = {}

    def mapped(self, line):
        match = MMAP.search(line)
        if match:
            pid, start, length, offset, path = match.groups()
            self.maps[int(pid)].append((int(start, 16), int(length, 16), int(offset, 16), path))

    def name(self, pid, ip, dso):
        for start, length, offset, path in self.maps.get(pid, ()):
            if start <= ip < start + length:
                return self.lookup(path, ip - start + offset)
        return self.lookup(dso, ip) if dso.startswith("/") else None

    def lookup(self, path, file_offset):
        segments, addresses, names = self.table(path)
        for p_offset, p_vaddr, p_size in segments:
            if p_offset <= file_offset < p_offset + p_size:
                index = bisect.bisect_right(addresses, file_offset - p_offset + p_vaddr) - 1
                return "~" + names[index] if index >= 0 else None
        return None

    def table(self, path):
        """(LOAD segments, sorted symbol addresses, their names) of an ELF file; empty when
        it is stripped or binutils is missing."""
        if path not in self.tables:
            try:
                headers = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
                symbols = subprocess.run(["nm", "-n", "--defined-only", path], capture_output=True, text=True).stdout
            except OSError:
                headers = symbols = ""
            segments = [(int(m[1], 16), int(m[2], 16), int(m[3], 16)) for m in
                        re.finditer(r"LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)", headers)]
            text = [line.split(None, 2) for line in symbols.splitlines()]
            text = [(int(address, 16), name) for address, kind, name in (t for t in text if len(t) == 3)
                    if kind in "tTwW"]
            self.tables[path] = (segments, [a for a, _ in text], [n for _, n in text])
        return self.tables[path]


def samples(perf_data):
    """(pid, frames) per sample of a perf.data, frames innermost first, each (ip, symbol,
    DSO). `perf script` prints a sample as a header line with the pid, then one line per frame
    (or, without call graphs, the leaf on the header line itself), and the mappings as MMAP2
    records. --no-inline: resolving inlined frames without debug info only takes minutes."""
    output = subprocess.run(["perf", "script", "--no-inline", "--show-mmap-events", "-i", str(perf_data),
                             "-F", "pid,ip,sym,dso"], capture_output=True, text=True, check=True).stdout
    symbolizer = Symbolizer()
    pid, frames = None, []

    def sample():
        return pid, [(ip, symbolizer.name(pid, ip, dso) or symbol if symbol == "[unknown]" else symbol, dso)
                     for ip, symbol, dso in frames]

    for line in output.splitlines():
        if "PERF_RECORD_" in line:
            symbolizer.mapped(line)
            continue
        if not line.strip():
            continue
        if not line.startswith("\t"):
            if frames:
                yield sample()
            head, _, line = line.strip().partition(" ")
            pid, frames = int(head), []
        match = FRAME.match(line)
        if match:
            frames.append((int(match[1], 16), match[2], match[3]))
    if frames:
        yield sample()


def lost_events(perf_data):
    """Samples perf could not keep: a profile that lost some says so."""
    stats = subprocess.run(["perf", "report", "--stats", "-i", str(perf_data)], capture_output=True, text=True).stdout
    return sum(int(m[1]) for m in re.finditer(r"LOST(?:_SAMPLES)? events:\s+(\d+)", stats))


class Recorder:
    """`perf record` over the server core, itself on the load core, until stopped."""

    def __init__(self, bench, output, call_graph):
        graph = {"dwarf": ["--call-graph", "dwarf,8192"], "none": []}[call_graph]
        argv = ["perf", "record", "-e", "cpu-clock", "-F", "999", "-C", str(bench.server_core),
                "-o", str(output), *graph]
        self.process = subprocess.Popen(load.pinned(bench.load_core, argv))
        time.sleep(1)  # perf attaches to the core before the measured run starts
        if self.process.poll() is not None:
            raise SystemExit(f"profile.py: perf record exited with {self.process.returncode}")

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # perf writes its data on SIGINT
        if self.process.wait(timeout=60) not in (0, -signal.SIGINT):
            raise SystemExit(f"profile.py: perf record failed with {self.process.returncode}")


def profile(bench, scenario, call_graph):
    """The measured wrk run under perf: (wrk result, {role: server-side pids}, perf.data)."""
    output = bench.workdir / "perf.data"
    with bench.warmed(scenario) as running:
        recorder = Recorder(bench, output, call_graph)
        try:
            result = bench.measure(running)
        finally:
            recorder.stop()
        # The trees before the processes stop: nginx's worker, Varnish's child.
        pids = {role: set(load.process_tree(pid)) for role, pid in bench.server_side(running).items()}
    load.report_round(0, scenario, result)
    return result, pids, output


def per_request_us(spent, requests):
    return (spent["user_s"] + spent["sys_s"]) / requests * 1e6


def report(scenario, result, pids, perf_data, call_graph, args):
    """The markdown: what was run, the buckets of the server's samples, the top symbols."""
    buckets, symbols, by_role = collections.Counter(), collections.Counter(), collections.Counter()
    role_of = {pid: role for role, members in pids.items() for pid in members}
    total = 0
    for pid, frames in samples(perf_data):
        total += 1
        by_role[role_of.get(pid, "idle" if pid == 0 else "other processes")] += 1
        if role_of.get(pid) != "server":
            continue
        bucket = bucket_of(frames)
        buckets[bucket] += 1
        _, symbol, dso = frames[0]
        symbols[(symbol, Path(dso).name, bucket)] += 1
    server_samples = sum(buckets.values())
    if server_samples == 0:
        raise SystemExit(f"profile.py: no samples of {scenario}'s server process")
    requests = result["requests"]
    server_us = per_request_us(result["cpu_s"]["server"], requests)
    spent = result["cpu_s"]["server"]
    sys_share = spent["sys_s"] / max(spent["user_s"] + spent["sys_s"], 1e-9)
    command = shlex.join(["python3", "bench/profile.py", *sys.argv[1:]])
    core = ", ".join(f"{role} {count / total:.0%}" for role, count in by_role.most_common())
    others = "; ".join(f"{role} {per_request_us(s, requests):.1f} µs/req" for role, s in result["cpu_s"].items()
                       if role != "server")
    lines = [
        f"`{command}` on {load.machine()}: `perf record -e cpu-clock -F 999 -C 0"
        f"{' --call-graph dwarf,8192' if call_graph == 'dwarf' else ''}` over a {args.duration} wrk run "
        f"({args.connections} connections, after a {args.warmup} warm-up, pinned as in load.py): "
        f"{result['rps']:,.0f} req/s under perf. The server ({scenario}, whole process tree): {server_samples:,} samples, "
        f"{server_us:.1f} µs of CPU per request ({spent['user_s'] / requests * 1e6:.1f} user + "
        f"{spent['sys_s'] / requests * 1e6:.1f} sys, /proc; {sys_share:.0%} sys).",
        f"Core 0's samples: {core}.{f' Other server-side processes: {others}.' if others else ''}",
        "",
        "| bucket | share of the server's samples | CPU µs/req |",
        "|---|---:|---:|",
    ]
    for bucket in ORDER:
        share = buckets[bucket] / server_samples
        lines.append(f"| {bucket} | {share:.1%} | {share * server_us:.2f} |")
    lines.append(f"| total | 100% | {server_us:.2f} |")
    lines += ["", f"Top 25 symbols of the server (leaf frames, {server_samples:,} samples):", "",
              "| symbol | DSO | share | bucket |", "|---|---|---:|---|"]
    for (symbol, dso, bucket), count in symbols.most_common(25):
        shown = (symbol if len(symbol) <= 120 else symbol[:117] + "...").replace("|", "\\|")
        lines.append(f"| `{shown}` | {dso} | {count / server_samples:.1%} | {bucket} |")
    lost = lost_events(perf_data)
    if lost:
        lines += ["", f"perf lost {lost} events: the shares above are from what it kept."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=load.NAMES)
    load.add_load_arguments(parser)
    parser.add_argument("--call-graph", choices=["dwarf", "none"], default="dwarf",
                        help="dwarf: buckets by the innermost known frame (default); none: by the leaf only")
    args = parser.parse_args()
    args.smoke = False
    load.require_pinning()
    load.ensure("perf", "linux-perf")
    with load.session(args, [args.scenario]) as bench:
        result, pids, perf_data = profile(bench, args.scenario, args.call_graph)
        print(report(args.scenario, result, pids, perf_data, args.call_graph, args))


if __name__ == "__main__":
    main()
