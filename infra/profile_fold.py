#!/usr/bin/env python3
"""Fold `perf report --sort dso,sym --stdio` of a processor drain into components and
print the drain's wall and CPU summary (infra/profile.sh runs it)."""

import re
import sys

# The first pattern a sample's symbol (or, for the kernel, its dso) matches names it.
COMPONENTS = [
    ("kernel (syscalls, network, page faults)", r"\[k\]"),
    ("librdkafka (C)", r"\] (rd_|cnd_|mtx_|thrd_|tinycthread)"),
    ("compression (zstd, lz4, zlib)", r"\] (ZSTD_|LZ4|HUF_|FSE_|inflate|deflate|crc32)"),
    ("allocators (jemalloc, glibc malloc)", r"(_rjem_|je_|jemalloc|malloc|free|calloc|realloc|cfree|arena)"),
    ("memory copies", r"(memcpy|memmove|memset|memcmp)"),
    ("Avro (apache-avro, the contract's codec)", r"(apache_avro|hookstream_schemas)"),
    ("JSON (serde_json: state values, bodies)", r"serde_json"),
    ("sled", r"sled::"),
    ("rdkafka crate (Rust side)", r"rdkafka::"),
    ("tokio", r"tokio::"),
    ("metrics (prometheus)", r"prometheus::"),
    ("hashing (sha2, std hash)", r"(sha2|Sha256|hash|Hash|siphash)"),
    ("processor code (rules, partition loop)", r"hookstream_processor"),
    ("std, core, alloc (strings, collections)", r"(core::|alloc::|std::|hashbrown)"),
    ("libc (other)", r"libc\.so"),
]


def fold(report: str) -> dict:
    shares: dict = {}
    line_re = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+(\[.\])\s+(.*)$")
    for line in report.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        pct, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        text = f"{dso} {kind} {sym}"
        name = next((n for n, p in COMPONENTS if re.search(p, text)), "other")
        shares[name] = shares.get(name, 0.0) + pct
    return shares


def main() -> None:
    path, events, parts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    started, t0, t1, p0, p1, b0, b1 = (float(x) for x in sys.argv[4:11])
    drain = t1 - t0
    proc_cpu, broker_cpu = p1 - p0, b1 - b0
    print(f"processor drain of {events:,} pre-loaded events, {parts} partitions, exactly once\n")
    print("| wall time | |")
    print("|---|---|")
    print(f"| start → first decision (group join, restore) | {t0 - started:.1f} s |")
    print(f"| first → last decision | {drain:.1f} s ({events / drain:,.0f} events/s) |")
    print(f"| processor CPU in the drain | {proc_cpu:.1f} s ({proc_cpu / events * 1e6:.1f} µs per event) |")
    print(f"| broker CPU in the drain | {broker_cpu:.1f} s |")
    print(f"| 2 cores busy | {(proc_cpu + broker_cpu) / (2 * drain):.0%} |\n")
    report = open(path, encoding="utf-8", errors="replace").read()
    shares = fold(report)
    if not shares:
        return
    total = sum(shares.values())
    print("| processor CPU by component (perf, software clock) | share | µs per event |")
    print("|---|---|---|")
    for name, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
        share = pct / total
        print(f"| {name} | {share:.1%} | {share * proc_cpu / events * 1e6:.2f} |")
    print("\n| top symbols | share |")
    print("|---|---|")
    for line in [l for l in report.splitlines() if re.match(r"^\s*[\d.]+%", l)][:12]:
        pct, dso, _, sym = line.split(None, 3)
        print(f"| `{sym[:90]}` ({dso}) | {float(pct.rstrip('%')) / total:.1%} |")


if __name__ == "__main__":
    main()
