#!/usr/bin/env python3
"""Writes the hand-made seeds of the fuzzers' corpora.

For: (re)creating alloc/fuzz/corpus/<fuzzer>/hand_NN, a few inputs per
fuzzer that reach each operation of its decoder (see the *_fuzzer.cc files:
two or three configuration bytes, then one operation byte and its
arguments per step). Deterministic: the same files every run. Not for: the
seeds a fuzzing run found (fuzz_NN, kept after `-merge=1`), which this
script leaves alone.

Usage: python3 alloc/fuzz/make_seeds.py  (from the repository root)
"""
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))


def write(fuzzer, index, data):
    folder = os.path.join(HERE, "corpus", fuzzer)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "hand_%02d" % index), "wb") as f:
        f.write(bytes(data))


def arena_seeds():
    seeds = []
    # Every operation once on each arena, with small then larger sizes.
    steps = []
    for op in range(16):
        for arena in (0, 1):
            steps += [arena, op, 0x40, 3, 4, 0x21, 0x01, 0x00]
    seeds.append([0x15, 0x02] + steps)
    # Marks and scopes nested, rewound, then a reset with marks open.
    seeds.append([0x00, 0x00,
                  0, 7, 0, 0, 0, 1, 200, 4, 3,
                  0, 7, 1, 0, 0, 6, 0, 0, 1, 90, 9, 5,
                  0, 7, 0, 0, 10, 0, 8, 1, 0, 8, 0, 0, 11, 0])
    # A fault window, a dry source, and the end of the fault.
    seeds.append([0x05, 0x01,
                  0, 12, 2, 0, 0, 255, 12, 4, 0, 3, 255, 12, 4,
                  0, 12, 7, 0, 0, 50, 2, 0, 13, 80, 2, 0, 15])
    # Invalid requests of every kind and overflowing arrays.
    seeds.append([0x00, 0x00] + sum(([0, 4, k] for k in range(6)), []) +
                 [0, 5, 0, 1, 5, 3, 0, 15])
    rng = random.Random(1)
    for _ in range(4):
        seeds.append([rng.randrange(256) for _ in range(rng.randrange(64, 512))])
    return seeds


def smart_seeds():
    seeds = []
    steps = []
    for op in range(20):
        steps += [op, 0x30, 3, 4, 0x11, 0x02, 0x01, 0x00, 0x00]
    # Every operation, 1, 2 and 3 frames in flight, with and without debug.
    for config in ([0x00, 0x00, 0x00], [0x01, 0x45, 0x43], [0x42, 0x80, 0xC2]):
        seeds.append(config + steps)
    # Cross-thread pool traffic over several frames.
    seeds.append([0x01, 0x10, 0x02] +
                 [4, 0, 64, 0, 4, 0, 8, 0, 8, 7, 1, 0, 2, 0, 9, 7, 0, 0, 32,
                  0, 3, 12, 0, 8, 4, 0, 0, 0, 0, 0, 18, 13, 1, 18] * 6)
    # A global budget near its limit, faults, scoped arenas and marks.
    seeds.append([0x40, 0x00, 0x00,
                  0, 255, 8, 3, 0, 255, 8, 3, 2, 255, 8, 3, 18,
                  16, 3, 0, 40, 4, 0, 16, 0x80, 18,
                  14, 0, 14, 1, 0, 90, 6, 3, 14, 3, 0,
                  15, 1, 1, 1, 30, 2, 2, 15, 0, 12, 0, 18])
    rng = random.Random(2)
    for _ in range(3):
        seeds.append([rng.randrange(256) for _ in range(rng.randrange(64, 512))])
    return seeds


def pool_seeds():
    seeds = []
    steps = []
    for op in range(16):
        steps += [op, 3, 5, 0x22, 0x01, 1, 0, 0]
    # Three configuration bytes: page size, batch and chunk cache; cache
    # bytes and transfer batches; limit growth and thread budget.
    for config in ([0x00, 0x00, 0x00], [0x05, 0x0B, 0x01], [0x86, 0x21, 0x44]):
        seeds.append(config + steps)
    # Bursts across the threads with tiny caches and transfer caches.
    seeds.append([0x00, 0x08, 0x19] +
                 [7, 2, 150, 1, 7, 5, 100, 0, 7, 9, 199, 1, 11, 10, 0, 15] * 4)
    # Faults while refilling, then recovery.
    seeds.append([0x04, 0x00, 0x02, 12, 2, 0, 1, 3, 3, 10, 12, 7, 0, 4, 3, 40,
                  12, 0x80, 4, 15, 8, 9, 10, 0, 15])
    rng = random.Random(3)
    for _ in range(3):
        seeds.append([rng.randrange(256) for _ in range(rng.randrange(64, 512))])
    return seeds


def main():
    for name, seeds in (("frame_arena", arena_seeds()),
                        ("smart_alloc", smart_seeds()),
                        ("pool_manager", pool_seeds())):
        for i, data in enumerate(seeds):
            write(name, i, data)
        print("%s: %d hand-made seeds" % (name, len(seeds)))


if __name__ == "__main__":
    main()
