#!/usr/bin/env python3
"""Two builds of the `cachelayer` binary compared on the load benchmark's scenarios,
interleaved round by round (A's scenarios, then B's, then A's again...), so that what the
shared machine does meanwhile falls on both alike. Runs, pins and measures exactly as
bench/load.py does (it imports it); prints each round and, per scenario, the median over
the rounds of its ratio to `limit` in the same run, and of its CPU per request.

    git worktree add --detach /tmp/before <commit>
    (cd /tmp/before && cargo build --release -p cachelayer-server --bin cachelayer)
    cargo build --release -p cachelayer-server --bin cachelayer --example bench_origin
    python3 bench/ab.py --a /tmp/before/target/release/cachelayer \\
        --b target/release/cachelayer --only serve-memory,serve-near --rounds 4

Run it under `flock /tmp/cachelayer-cpu.lock` on a shared machine. It builds nothing but
uses `target/release/examples/bench_origin` of this checkout for the proxy scenarios.
"""

import argparse
import pathlib
import statistics
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import load  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, type=pathlib.Path, help="the first binary")
    parser.add_argument("--b", required=True, type=pathlib.Path, help="the second binary")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--only", required=True,
                        help=f"comma-separated scenarios of {','.join(load.NAMES)} (limit is always run)")
    load.add_load_arguments(parser)
    args = parser.parse_args()
    args.smoke = False
    load.require_pinning()
    scenarios = ["limit"] + [name for name in args.only.split(",") if name != "limit"]
    unknown = sorted(set(scenarios) - set(load.NAMES))
    if unknown:
        raise SystemExit(f"ab.py: unknown scenarios {', '.join(unknown)}")
    origin = load.ROOT / "target" / "release" / "examples" / "bench_origin"
    measured = {}
    for round_ in range(args.rounds):
        for label, binary in (("A", args.a), ("B", args.b)):
            load.build = lambda release, binary=binary: (binary.resolve(), origin)
            with load.session(args, scenarios) as bench:
                got = {}
                for name in bench.scenarios:
                    got[name] = bench.run(name)
                    load.report_round(round_, f"{label} {name}", got[name])
            for name in scenarios[1:]:
                ratio = got[name]["rps"] / got["limit"]["rps"]
                cpu = got[name]["cpu_user_us"] + got[name]["cpu_sys_us"]
                measured.setdefault((name, label), []).append((ratio, cpu))
    print("| scenario | A: x limit (rounds) | B: x limit (rounds) | CPU µs/req, A / B |")
    print("|---|---:|---:|---:|")
    for name in scenarios[1:]:
        a, b = measured[(name, "A")], measured[(name, "B")]
        cells = [f"{statistics.median(r for r, _ in runs):.3f} "
                 f"({', '.join(f'{r:.2f}' for r, _ in runs)})" for runs in (a, b)]
        cpu = " / ".join(f"{statistics.median(c for _, c in runs):.1f}" for runs in (a, b))
        print(f"| {name} | {cells[0]} | {cells[1]} | {cpu} |")


if __name__ == "__main__":
    main()
