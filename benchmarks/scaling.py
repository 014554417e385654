"""Time the quadratic batch as one call, chunked, and through Dask with one and two workers.

Usage: python benchmarks/scaling.py [--rows 10000000] [--repeats 5]

Prints the median wall time of each way of evaluating the value and gradients of
sum(a*x**2 + b*x + c), for a float32 batch x and shared scalars a, b and c. Each
line also gives the overhead per chunk, which is the extra time over the one call
divided by the number of chunks. Dask runs on a LocalCluster of worker processes on 127.0.0.1, with
the batch sent from the client and the gradient of x gathered back, which is
included in its time. Needs gpuflow[dask].
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy

import gpuflow as gf


def quadratic_sum(x, a, b, c):
    return gf.sum(a * x**2 + b * x + c)


ARGNUMS = (0, 1, 2, 3)


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: imports, allocator, Dask worker start-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_dask(x, a, b, c, workers: int, chunk_rows: int, repeats: int) -> float:
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    from gpuflow import dask as gpuflow_dask

    differentiate = gpuflow_dask.value_and_grad(quadratic_sum, ARGNUMS)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        def run():
            value, grads = differentiate(da.from_array(x, chunks=chunk_rows), a, b, c)
            client.compute([value, *grads], sync=True)

        return median_seconds(run, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="batch rows")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per case")
    options = parser.parse_args()
    rows, repeats = options.rows, options.repeats

    x = numpy.random.default_rng(0).standard_normal(rows, dtype=numpy.float32)
    a, b, c = (numpy.asarray(value, dtype=numpy.float32) for value in (2.0, 1.0, 4.0))
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"numpy {numpy.__version__}")
    print(f"rows: {rows} float32, median of {repeats} runs")

    single = median_seconds(lambda: gf.value_and_grad(quadratic_sum, ARGNUMS)(x, a, b, c),
                            repeats)
    print(f"single call: {single * 1e3:.1f} ms")
    for chunk_rows in (rows // 10, rows // 1000):
        chunks = -(-rows // chunk_rows)
        differentiate = gf.value_and_grad(quadratic_sum, ARGNUMS, chunk_size=chunk_rows)
        seconds = median_seconds(lambda: differentiate(x, a, b, c), repeats)
        print(f"chunked, {chunks} chunks of {chunk_rows}: {seconds * 1e3:.1f} ms, "
              f"overhead per chunk {(seconds - single) / chunks * 1e6:.0f} us")
    for workers in (1, 2):
        for chunk_rows in (rows // 10, rows // 100):
            chunks = -(-rows // chunk_rows)
            seconds = time_dask(x, a, b, c, workers, chunk_rows, repeats)
            print(f"dask, {workers} worker(s), {chunks} chunks of {chunk_rows}: "
                  f"{seconds * 1e3:.1f} ms, overhead per chunk "
                  f"{(seconds - single) / chunks * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
