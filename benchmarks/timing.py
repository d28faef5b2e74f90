"""How every benchmark here times a call, in every process alike: warm-up, then repeated calls timed one by one,
latency percentiles per call, images/s from the median; and the inputs each process makes identically."""

import time

import numpy as np

# A point is timed for at most `max_seconds`, but never fewer than MIN_RUNS times (unless `repeats` is lower).
DEFAULT_REPEATS = 200
DEFAULT_MAX_SECONDS = 1.0
DEFAULT_WARMUP_SECONDS = 0.2
MIN_RUNS = 5
MIN_WARMUP_RUNS = 1
MAX_WARMUP_RUNS = 100

DESCRIPTION = ("time.perf_counter_ns around each call, after a warm-up; latency percentiles per call; "
               "images_per_s = batch_size / median latency")


def time_calls(fn, repeats=DEFAULT_REPEATS, max_seconds=DEFAULT_MAX_SECONDS, warmup_seconds=DEFAULT_WARMUP_SECONDS,
               min_runs=MIN_RUNS):
    """Warm up, then time up to `repeats` calls (at least `min_runs`, else about `max_seconds` in all); ns each."""
    clock = time.perf_counter_ns
    start, n = clock(), 0
    while True:
        t0 = clock()
        fn()
        last = clock() - t0
        n += 1
        if n >= MIN_WARMUP_RUNS and (clock() - start >= warmup_seconds * 1e9 or n >= MAX_WARMUP_RUNS):
            break
    runs = int(min(repeats, max(min_runs, max_seconds * 1e9 // max(last, 1))))
    times = np.empty(max(runs, 1), dtype=np.int64)
    for i in range(len(times)):
        t0 = clock()
        fn()
        times[i] = clock() - t0
    return times


def latency_stats(times_ns, batch_size, prefix="latency_us"):
    """{runs, <prefix>_p50/_p90/_p99/_mean/_min (microseconds), images_per_s} of per-call times in ns."""
    us = np.asarray(times_ns, dtype=np.float64) / 1e3
    p50, p90, p99 = np.percentile(us, [50, 90, 99])
    return {"runs": int(len(us)), prefix + "_p50": float(p50), prefix + "_p90": float(p90),
            prefix + "_p99": float(p99), prefix + "_mean": float(us.mean()), prefix + "_min": float(us.min()),
            "images_per_s": float(batch_size / (p50 / 1e6))}


def prefixed(stats, name):
    """latency_stats(...) renamed for one way of running: {name_latency_us_p50, ..., name_images_per_s, name_runs}."""
    return {"{}_{}".format(name, k): v for k, v in stats.items()}


def make_input(name, item_shape, batch_size, seed=0):
    """The benchmark's inputs, identical in every process: images uniform in [0, 1), codes standard normal."""
    rng = np.random.default_rng([int(seed), int(batch_size)])
    shape = (int(batch_size),) + tuple(int(d) for d in item_shape)
    if name == "latent" or len(item_shape) == 1:
        return rng.standard_normal(shape, dtype=np.float32)
    return rng.random(shape, dtype=np.float32)
