#!/usr/bin/env python3
"""Collect criterion's median estimates, and summarise repeated runs as BENCHMARKS.md quotes them.

After each `cargo bench` run:   bench/criterion_medians.py > run-N.json
After all runs:                  bench/criterion_medians.py --summarize run-1.json run-2.json run-3.json

Prints, per benchmark, each run's median (µs) and the median of the runs, then the ratios
BENCHMARKS.md quotes: of the medians of the runs, and each run's own (same-run) ratio.
"""
import json
import os
import statistics
import sys

CRITERION_DIR = os.path.join("target", "criterion")

RATIOS = [
    ("10 GET sequential / MGET", "redis_10_keys/get_sequential", "redis_10_keys/get_mget"),
    ("10 GET sequential / pipeline", "redis_10_keys/get_sequential", "redis_10_keys/get_pipeline"),
    ("10 SET sequential / pipeline", "redis_10_keys/set_sequential", "redis_10_keys/set_pipeline"),
    ("10 typed get / get_many", "cache_10_keys/get_sequential", "cache_10_keys/get_many"),
    ("100 GETs pool 4 / pool 1", "concurrent_100_gets/pool_4", "concurrent_100_gets/pool_1"),
    ("encode 4 KB zstd / plain", "envelope/encode/zstd1_4148B", "envelope/encode/plain_4148B"),
    ("decode 4 KB zstd / plain", "envelope/decode/zstd1_4148B", "envelope/decode/plain_4148B"),
    ("HTTP hit / no layer", "http_layer/hit", "http_layer/no_layer"),
    ("HTTP miss and store / no layer", "http_layer/miss_and_store", "http_layer/no_layer"),
    ("HTTP bypass / no layer", "http_layer/bypass", "http_layer/no_layer"),
    ("get_many 10, store: cluster / one Redis", "get_many_10/store_cluster", "get_many_10/store_one_redis"),
    ("get_many 10, typed: cluster / one Redis", "get_many_10/cache_cluster", "get_many_10/cache_one_redis"),
    ("get_many 100, store: cluster / one Redis", "get_many_100/store_cluster", "get_many_100/store_one_redis"),
    ("get_many 100, typed: cluster / one Redis", "get_many_100/cache_cluster", "get_many_100/cache_one_redis"),
]


def collect():
    medians = {}
    for root, _dirs, files in os.walk(CRITERION_DIR):
        if root.endswith(os.sep + "new") and "estimates.json" in files:
            name = os.path.relpath(os.path.dirname(root), CRITERION_DIR)
            with open(os.path.join(root, "estimates.json")) as f:
                medians[name] = json.load(f)["median"]["point_estimate"]  # nanoseconds
    if not medians:
        sys.exit(f"no criterion results under {CRITERION_DIR}; run cargo bench first")
    json.dump(medians, sys.stdout, indent=1, sort_keys=True)
    print()


def summarize(paths):
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    names = sorted(set.intersection(*(set(r) for r in runs)))
    median = {}
    for name in names:
        values = [r[name] / 1000 for r in runs]
        median[name] = statistics.median(values)
        each = " ".join(f"{v:9.2f}" for v in values)
        print(f"{name:40s} {each}   median {median[name]:9.2f} µs")
    for label, num, den in RATIOS:
        if num in median and den in median:
            each = ", ".join(f"{r[num] / r[den]:.2f}" for r in runs)
            print(f"{label:32s} {median[num] / median[den]:.2f}   (per run: {each})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--summarize":
        summarize(sys.argv[2:])
    else:
        collect()
