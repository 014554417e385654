"""Tests of ``gpuflow bench`` and gpuflow.bench on tiny sizes, so that they stay fast."""

import importlib.util
import json
import statistics
import subprocess
import sys

import numpy as np
import pytest

import gpuflow as gf
from gpuflow import bench
from gpuflow.cli import main as cli_main

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
TINY = ["bench", "--size", "1000", "--repeat", "2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_gpuflow(*arguments, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def table_rows(stdout: str) -> list[list[str]]:
    """Return the cells of each table row, between the header and the blank line."""
    lines = stdout.splitlines()
    return [line.split() for line in lines[1:lines.index("")]]


# The command.


def test_command_prints_table():
    completed = run_gpuflow(*TINY)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    lines = completed.stdout.splitlines()
    assert lines[0].split() == [
        "backend", "workload", "implementation", "size", "median", "ms", "GB/s", "of", "copy",
        "vs", "baseline",
    ]
    rows = table_rows(completed.stdout)
    assert [row[:4] for row in rows] == [
        ["numpy", "copy", "copy", "1000"],
        ["numpy", "sigmoid", "baseline", "1000"],
        ["numpy", "sigmoid", "eager", "1000"],
        ["numpy", "quadratic", "baseline", "1000"],
        ["numpy", "quadratic", "eager", "1000"],
    ]
    for row in rows:
        assert float(row[4]) > 0
    assert [row[7] for row in rows] == ["-", "1.00", rows[2][7], "1.00", rows[4][7]]
    assert "median of 2 runs after 1 warm-up call, float32 arrays" in lines


def test_command_writes_json_and_png(tmp_path):
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib is not installed (the plot extra)")
    completed = run_gpuflow(
        *TINY, "--workload", "sigmoid", "--json", "bench.json", "--plot", "bench.png", cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "bench.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bench.json", "bench.png"]


def test_command_json_contents(tmp_path):
    output = tmp_path / "bench.json"
    completed = run_gpuflow(*TINY, "--size", "2000", "--json", output)
    assert completed.returncode == 0, completed.stderr

    document = json.loads(output.read_text(encoding="utf-8"))
    assert set(document) == {"date", "machine", "devices", "versions", "settings", "results"}
    assert set(document["machine"]) == {"platform", "machine", "cpu", "cpu_count"}
    assert set(document["versions"]) == {"python", "numpy", "cupy", "gpuflow"}
    assert document["versions"]["gpuflow"] == gf.__version__
    assert document["versions"]["numpy"] == np.__version__
    assert document["devices"]["numpy"]["kind"] == "cpu"

    settings = document["settings"]
    assert settings["sizes"] == [1000, 2000]
    assert settings["repeat"] == 2
    assert settings["timers"] == {"numpy": "time.perf_counter"}

    results = document["results"]
    assert len(results) == 2 * 5
    for result in results:
        assert len(result["times_s"]) == 2
        assert result["median_s"] == pytest.approx(statistics.median(result["times_s"]))
        assert result["bandwidth_bytes_per_s"] == pytest.approx(
            result["moved_bytes"] / result["median_s"]
        )

    by_key = {(r["workload"], r["implementation"], r["size"]): r for r in results}
    assert by_key[("copy", "copy", 1000)]["moved_bytes"] == 2 * 1000 * 4
    assert by_key[("sigmoid", "eager", 1000)]["moved_bytes"] == 2 * 1000 * 4 + 4
    assert by_key[("quadratic", "eager", 2000)]["moved_bytes"] == 8 * 2000 * 4 + 4
    assert by_key[("quadratic", "baseline", 2000)]["ratio_to_baseline"] == 1.0
    assert by_key[("sigmoid", "eager", 2000)]["fraction_of_copy"] == pytest.approx(
        by_key[("sigmoid", "eager", 2000)]["bandwidth_bytes_per_s"]
        / by_key[("copy", "copy", 2000)]["bandwidth_bytes_per_s"]
    )


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--workload", "softmax"], "unknown workload 'softmax' in --workload softmax; choose "
                                    "from sigmoid, quadratic"),
        (["--backend", "tpu"], "unknown backend 'tpu' in --backend tpu; choose from auto, "),
        (["--backend", "numpy,"], "invalid --backend 'numpy,': empty name"),
        (["--size", "ten"], "invalid --size 'ten'"),
        (["--size", "0"], "invalid --size '0'"),
        (["--repeat", "0"], "invalid --repeat 0"),
        (["--plot", "bench.svg"], "--plot bench.svg must name a .png file"),
    ],
)
def test_command_rejects_invalid_input(arguments, message, capsys):
    assert cli_main.main(["bench", *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("gpuflow bench: error: ")
    assert message in lines[0]


def test_command_unknown_workload_subprocess():
    completed = run_gpuflow("bench", "--workload", "sigmoid,softmax")
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert len(completed.stderr.splitlines()) == 1
    assert "unknown workload 'softmax'" in completed.stderr


def test_command_missing_matplotlib(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = cli_main.main([*TINY, "--plot", str(tmp_path / "bench.png")])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert "pip install 'gpuflow[plot]'" in captured.err
    assert len(captured.err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_parse_size_forms():
    assert bench_cli().parse_size("100000") == 100000
    assert bench_cli().parse_size("1e6") == 10**6
    assert bench_cli().parse_size("10_000") == 10000


def bench_cli():
    from gpuflow.cli import bench as command

    return command


# The library.


def test_baselines_match_gpuflow():
    backend = gf.get_backend("numpy")
    x, a, b, c = (np.random.default_rng(1).standard_normal(50) for _ in range(4))
    value, gradient = bench.sigmoid_baseline(backend, x)
    expected_value, expected_gradient = gf.value_and_grad(lambda t: gf.sum(gf.sigmoid(t)))(x)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12)
    value, gradients = bench.quadratic_baseline(backend, x, a, b, c)
    expected_value, expected_gradients = gf.value_and_grad(
        lambda x, a, b, c: gf.sum(a * x**2 + b * x + c), (0, 1, 2, 3)
    )(x, a, b, c)
    np.testing.assert_allclose(value, expected_value, rtol=1e-12)
    for found, expected in zip(gradients, expected_gradients):
        np.testing.assert_allclose(found, expected, rtol=1e-12)


def test_added_implementation_is_timed(monkeypatch):
    implementations = dict(bench.IMPLEMENTATIONS["sigmoid"])
    implementations["compiled"] = implementations["eager"]
    monkeypatch.setitem(bench.IMPLEMENTATIONS, "sigmoid", implementations)
    report = bench.run_benchmarks(["numpy"], ["sigmoid"], [100], repeat=1)
    names = [item.implementation for item in report.measurements]
    assert names == ["copy", "baseline", "eager", "compiled"]


def test_wrong_implementation_raises(monkeypatch):
    def wrong(backend):
        return lambda x: (backend.sum(x), x)

    implementations = dict(bench.IMPLEMENTATIONS["sigmoid"], wrong=wrong)
    monkeypatch.setitem(bench.IMPLEMENTATIONS, "sigmoid", implementations)
    with pytest.raises(bench.BenchmarkError, match="numpy sigmoid wrong at size 100: the value"):
        bench.run_benchmarks(["numpy"], ["sigmoid"], [100], repeat=1)


def test_auto_and_numpy_run_once():
    report = bench.run_benchmarks(["auto", "numpy"], ["sigmoid"], [100], repeat=1)
    if report.settings["backends"] == ["numpy"]:
        assert len(report.measurements) == 3
    else:
        assert report.settings["backends"] == ["cupy", "numpy"]


def test_array_api_strict_backend():
    pytest.importorskip("array_api_strict")
    report = bench.run_benchmarks(["array_api_strict"], ["quadratic"], [64], repeat=1,
                                  dtype="float64")
    assert [item.backend for item in report.measurements] == ["array_api_strict"] * 3
    assert report.measurements[1].moved_bytes == 8 * 64 * 8 + 8


def test_table_has_row_per_measurement():
    report = bench.run_benchmarks(["numpy"], ["sigmoid", "quadratic"], [100, 200], repeat=1)
    rows = table_rows(bench.format_table(report))
    assert len(rows) == len(report.measurements) == 10
    assert [row[3] for row in rows] == ["100"] * 5 + ["200"] * 5


def test_plot_png():
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib is not installed (the plot extra)")
    report = bench.run_benchmarks(["numpy"], ["sigmoid"], [100, 1000], repeat=1)
    assert bench.plot(report).startswith(PNG_MAGIC)


def test_bench_rejects_same_json_and_plot(tmp_path):
    path = tmp_path / "b.png"
    completed = subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", "bench", "--size", "10", "--json", str(path),
         "--plot", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert completed.returncode == 2
    assert "--json and --plot both name" in completed.stderr


def test_bench_rejects_size_beyond_memory(monkeypatch):
    from gpuflow.cli import CommandError
    from gpuflow.cli import bench as bench_command

    # Pretend the machine has 1 GiB free: 4096 pages of 256 KiB.
    pages = {"SC_AVPHYS_PAGES": 4096, "SC_PAGE_SIZE": 256 * 1024}
    monkeypatch.setattr(bench_command.os, "sysconf", lambda name: pages[name])
    bench_command.check_memory([1000], "float32")
    with pytest.raises(CommandError, match=r"needs about 6\.0 GiB, more than the 1\.0 GiB"):
        bench_command.check_memory([10**8], "float32")
