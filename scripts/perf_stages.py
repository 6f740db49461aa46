#!/usr/bin/env python3
"""Sums a `perf report --no-children --sort dso,symbol --stdio` by pipeline stage.

Usage: scripts/perf_stages.py report.txt

Each sampled symbol goes to the first stage whose pattern matches its name (or its shared
object, for the kernel and libc). librdkafka is linked into the binary; its consumer-side and
producer-side functions are told apart by name where they can be, the rest is "librdkafka,
shared". Prints the share of samples per stage, largest first, and the top symbols of each.
"""

import re
import sys
from collections import defaultdict

STAGES = [
    ("kernel (syscalls, network, scheduling)", r"^\[kernel|\[k\]"),
    ("clock reads (vdso clock_gettime: Instant::now, SystemTime::now)", r"^\[vdso\]|clock_gettime"),
    ("DSP (specflow::dsp, rustfft)", r"specflow::dsp|rustfft"),
    ("decode (specflow::audio)", r"specflow::audio"),
    ("JSON (serde_json, float formatting: zmij, ryu)", r"serde_json|ryu::|zmij|to_json"),
    ("BSON (bson, record → document)", r"bson::|to_document|RawDocument|ForMongo|record::"),
    ("MongoDB client (mongodb driver)", r"mongodb::"),
    ("Kafka consume (librdkafka fetch, rdkafka consumer)",
     r"rd_kafka_msgset_reader|rd_kafka_fetch|rd_kafka_consume|rd_kafka_q_serve|rd_kafka_toppar_fetch|"
     r"rdkafka::consumer|LZ4_decompress|crc32c|rd_kafka_message_"),
    ("Kafka produce (librdkafka, rdkafka producer)",
     r"rd_kafka_msgset_writer|rd_kafka_produce|rd_kafka_msg_new|LZ4_compress|LZ4F_|rdkafka::producer|"
     r"rd_kafka_msgq|rd_kafka_broker_produce"),
    ("librdkafka, shared (broker threads, queues, stats)", r"^rd_|rd_kafka|rdkafka|LZ4|lz4|ZSTD|zstd"),
    ("serde and number formatting (shared by JSON and BSON: map entries, array keys)",
     r"serde_core::|serde::ser|core::fmt|fmt::Display|fmt::write|itoa"),
    ("clock reads (vdso clock_gettime: Instant::now, SystemTime::now)", r"clock_gettime|vdso"),
    ("memory (malloc, free, memcpy)", r"malloc|free|realloc|calloc|memcpy|memmove|memset|alloc::|__rdl_|mi_"),
    ("async runtime and sync (tokio, futures, locks)", r"tokio|futures|parking_lot|crossbeam|std::sync|pthread|__lll_|mutex"),
    ("worker pipeline (specflow::pipeline, streams, checkpoints)", r"specflow::"),
    ("prometheus, tracing, other crates", r"prometheus|tracing|::"),
]

LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


def main(path: str) -> None:
    totals = defaultdict(float)
    tops = defaultdict(list)
    other = 0.0
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        share, dso, kind, symbol = float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()
        name = f"[k] {symbol}" if kind == "k" else symbol
        if dso.startswith("[kernel"):
            name = f"[kernel] {symbol}"
        elif dso.startswith("[vdso"):
            name = f"[vdso] {symbol}"
        for stage, pattern in STAGES:
            if re.search(pattern, name) or (dso.startswith("libc") and stage.startswith("memory")
                                            and re.search(r"malloc|free|memcpy|memmove|memset", symbol)):
                totals[stage] += share
                tops[stage].append((share, symbol))
                break
        else:
            other += share
            tops["other"].append((share, f"{dso}: {symbol}"))
    if other:
        totals["other"] = other
    print(f"{'stage':60} share of worker CPU")
    for stage, share in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{stage:60} {share:6.1f}%")
        for s, symbol in sorted(tops[stage], reverse=True)[:3]:
            print(f"    {s:5.1f}%  {symbol[:100]}")


if __name__ == "__main__":
    main(sys.argv[1])
