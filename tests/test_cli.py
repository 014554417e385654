"""End-to-end tests of ``gpuflow grad``, each running the command in a subprocess."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import gpuflow

HAS_CUPY = importlib.util.find_spec("cupy") is not None


def run_gpuflow(*arguments, cwd=None):
    environment = dict(os.environ)
    environment.pop("GPUFLOW_BACKEND", None)
    return subprocess.run(
        [sys.executable, "-m", "gpuflow.cli.main", *map(str, arguments)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=120,
    )


def run_json(*arguments, cwd=None):
    completed = run_gpuflow(*arguments, "--json", cwd=cwd)
    assert completed.returncode == 0, completed.stderr
    return json.loads(completed.stdout, parse_constant=reject_constant)


def reject_constant(name):
    raise AssertionError(f"the JSON output contains the non-standard constant {name}")


README = ["grad", "a*x**2 + b*x + c", "x=3", "a=2", "b=1", "c=4", "--backend", "numpy"]


# Results.


def test_readme_example_text():
    completed = run_gpuflow(*README)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines() == [
        "value: 25",
        "grad x: 13",
        "grad a: 9",
        "grad b: 3",
        "grad c: 1",
    ]
    assert completed.stderr == ""


def test_console_script_runs_readme_example():
    script = os.path.join(os.path.dirname(sys.executable), "gpuflow")
    if not os.path.exists(script):
        pytest.skip("the gpuflow console script is not installed next to this Python")
    completed = subprocess.run([script, *README], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[0] == "value: 25"


def test_readme_example_json():
    document = run_json(*README)
    assert set(document) == {"value", "grad", "backend", "dtype"}
    assert document["value"] == 25
    assert document["grad"] == {"x": 13, "a": 9, "b": 3, "c": 1}
    assert list(document["grad"]) == ["x", "a", "b", "c"]
    assert document["backend"] == "numpy"
    assert document["dtype"] == "float64"


def test_auto_backend_named_in_json():
    document = run_json("grad", "x * 2", "x=1")
    assert document["backend"] in ("numpy", "cupy")


def test_array_api_strict_backend():
    pytest.importorskip("array_api_strict")
    document = run_json("grad", "sum(x ** 2)", "x=1,2", "--backend", "array_api_strict")
    assert document["backend"] == "array_api_strict"
    assert document["grad"]["x"] == [2, 4]


def test_json_writes_nonfinite_as_strings():
    document = run_json("grad", "log(x)", "x=-1,0,1", "--backend", "numpy")
    assert document["value"] == ["nan", "-inf", 0]
    assert document["grad"]["x"] == [-1, "inf", 1]


def test_nonfinite_values_print_no_warning():
    completed = run_gpuflow("grad", "log(x)", "x=-1,0,1", "--backend", "numpy")
    assert completed.returncode == 0
    assert completed.stderr == ""


def test_list_value_is_array():
    document = run_json("grad", "x ** 2", "x=1,2,3", "--backend", "numpy")
    assert document["value"] == [1, 4, 9]
    assert document["grad"]["x"] == [2, 4, 6]


def test_trailing_comma_gives_1d():
    document = run_json("grad", "x * 2", "x=3,", "--backend", "numpy")
    assert document["value"] == [6]


def test_options_before_values():
    document = run_json("grad", "x * y", "--backend", "numpy", "--wrt", "y", "x=2", "y=3")
    assert document["grad"] == {"y": 2}


def test_output_writes_npz(tmp_path):
    output = tmp_path / "result.npz"
    completed = run_gpuflow(*README, "--output", output)
    assert completed.returncode == 0, completed.stderr
    with np.load(output) as saved:
        assert set(saved.files) == {"value", "grad_x", "grad_a", "grad_b", "grad_c"}
        assert saved["value"] == 25
        assert saved["grad_x"] == 13
        assert saved["grad_a"] == 9
        assert saved["grad_b"] == 3
        assert saved["grad_c"] == 1
    assert os.listdir(tmp_path) == ["result.npz"]


def test_output_replaces_old_npz(tmp_path):
    output = tmp_path / "result.npz"
    np.savez(output, value=np.array(7.0))
    completed = run_gpuflow("grad", "x * 2", "x=1", "--output", output)
    assert completed.returncode == 0, completed.stderr
    with np.load(output) as saved:
        assert saved["value"] == 2


def test_output_keeps_non_npz_file(tmp_path):
    output = tmp_path / "notes.npz"
    output.write_bytes(b"old contents")
    completed = run_gpuflow("grad", "x * 2", "x=1", "--output", output)
    assert completed.returncode == 2
    assert "is not an .npz archive" in completed.stderr
    assert output.read_bytes() == b"old contents"


def test_usage_error_is_one_line():
    completed = run_gpuflow("grad", "x", "x=1", "--seed", "abc")
    assert completed.returncode == 2
    assert completed.stderr.splitlines() == [
        "gpuflow grad: error: argument --seed: invalid int value: 'abc'; "
        "see gpuflow grad --help"
    ]


def test_value_too_large_for_float32():
    completed = run_gpuflow("grad", "x * 2", "x=1e39", "--dtype", "float32")
    assert completed.returncode == 2
    assert "too large for float32" in completed.stderr
    assert len(completed.stderr.splitlines()) == 1


def test_npz_member_that_is_not_npy(tmp_path):
    import zipfile

    path = tmp_path / "odd.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("y", b"garbage")
    completed = run_gpuflow("grad", "x * 2", "x=1", "--inputs", path)
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert len(completed.stderr.splitlines()) == 1


def test_inputs_npz_and_npy(tmp_path):
    np.savez(tmp_path / "batch.npz", x=np.array([1.0, 2.0]), y=np.array([3.0, 4.0]))
    np.save(tmp_path / "w.npy", np.array([0.5, 0.25]))
    document = run_json(
        "grad", "sum(x * y * w)", "--inputs", "batch.npz", "w.npy", cwd=tmp_path
    )
    assert document["value"] == pytest.approx(1.0 * 3.0 * 0.5 + 2.0 * 4.0 * 0.25)
    assert document["grad"]["x"] == pytest.approx([1.5, 1.0])
    assert document["grad"]["y"] == pytest.approx([0.5, 0.5])
    assert document["grad"]["w"] == pytest.approx([3.0, 8.0])


def test_repeated_inputs_option(tmp_path):
    np.save(tmp_path / "x.npy", np.array(2.0))
    np.save(tmp_path / "y.npy", np.array(5.0))
    document = run_json("grad", "x * y", "--inputs", "x.npy", "--inputs", "y.npy", cwd=tmp_path)
    assert document["grad"] == {"x": 5, "y": 2}


def test_boolean_mask_from_file(tmp_path):
    np.savez(tmp_path / "data.npz", x=np.array([1.0, 2.0, 3.0]), m=np.array([True, False, True]))
    document = run_json(
        "grad", "sum(where(m, x, 0.0) ** 2)", "--inputs", "data.npz", "--wrt", "x", cwd=tmp_path
    )
    assert document["value"] == 10
    assert document["grad"]["x"] == [2, 0, 6]


def test_integer_file_is_cast(tmp_path):
    np.save(tmp_path / "n.npy", np.arange(3))
    document = run_json("grad", "n * 2", "--inputs", "n.npy", cwd=tmp_path)
    assert document["grad"]["n"] == [2, 2, 2]


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("batch")
    x = np.random.default_rng(7).uniform(-2.0, 2.0, 1_000_000)
    np.savez(folder / "batch.npz", x=x)
    return folder / "batch.npz", x


def test_million_batch_json(batch_file):
    path, x = batch_file
    document = run_json("grad", "x**3 - 2*x", "--inputs", path, "--backend", "numpy")
    gradient = np.array(document["grad"]["x"])
    assert gradient.shape == (1_000_000,)
    np.testing.assert_allclose(gradient, 3 * x**2 - 2, rtol=1e-12)
    np.testing.assert_allclose(document["value"], x**3 - 2 * x, rtol=1e-12)


def test_million_batch_output(batch_file, tmp_path):
    path, x = batch_file
    output = tmp_path / "out.npz"
    completed = run_gpuflow("grad", "x**3 - 2*x", "--inputs", path, "--output", output)
    assert completed.returncode == 0, completed.stderr
    with np.load(output) as saved:
        assert saved["grad_x"].shape == (1_000_000,)
        np.testing.assert_allclose(saved["grad_x"], 3 * x**2 - 2, rtol=1e-12)


def test_million_batch_text_is_summary(batch_file):
    path, _ = batch_file
    completed = run_gpuflow("grad", "x**3 - 2*x", "--inputs", path)
    assert completed.returncode == 0, completed.stderr
    assert len(completed.stdout) < 1000
    assert "..." in completed.stdout
    assert "1000000 elements" in completed.stdout


def test_random_seed_reproducible():
    arguments = ("grad", "x ** 2", "--random", "x=5", "--seed", "3", "--backend", "numpy")
    first = run_json(*arguments)
    second = run_json(*arguments)
    assert first == second
    x = np.random.default_rng(3).standard_normal(5)
    np.testing.assert_allclose(first["grad"]["x"], 2 * x, rtol=1e-12)


def test_random_seed_changes_values():
    first = run_json("grad", "x * 1.0", "--random", "x=5", "--seed", "1")
    second = run_json("grad", "x * 1.0", "--random", "x=5", "--seed", "2")
    assert first["value"] != second["value"]


def test_random_matrix_shape():
    document = run_json("grad", "sum(X @ w)", "--random", "X=4x3", "w=3")
    assert np.shape(document["grad"]["X"]) == (4, 3)
    assert np.shape(document["grad"]["w"]) == (3,)


def test_wrt_subset():
    document = run_json("grad", "x * y + z", "x=2", "y=3", "z=1", "--wrt", "y")
    assert document["value"] == 7
    assert document["grad"] == {"y": 2}


def test_wrt_order_kept():
    document = run_json("grad", "x * y", "x=2", "y=3", "--wrt", "y,x")
    assert list(document["grad"]) == ["y", "x"]


def test_dtype_float32_json():
    document = run_json("grad", "x * 0.1", "x=1,2", "--dtype", "float32")
    assert document["dtype"] == "float32"
    assert document["value"][0] == pytest.approx(0.1, rel=1e-6)


def test_dtype_float32_npz(tmp_path):
    output = tmp_path / "out.npz"
    completed = run_gpuflow("grad", "x * 0.1", "x=1,2", "--dtype", "float32", "--output", output)
    assert completed.returncode == 0, completed.stderr
    with np.load(output) as saved:
        assert saved["value"].dtype == np.float32
        assert saved["grad_x"].dtype == np.float32


def test_pi_is_constant():
    document = run_json("grad", "x * pi", "x=2")
    assert document["value"] == pytest.approx(2 * np.pi)


def test_e_is_input_when_given():
    document = run_json("grad", "x * e", "x=2", "e=3")
    assert document["value"] == 6
    assert document["grad"] == {"x": 3, "e": 2}


def test_version_printed():
    completed = run_gpuflow("--version")
    assert completed.returncode == 0
    assert gpuflow.__version__ in completed.stdout


def test_no_subcommand_prints_help():
    completed = run_gpuflow()
    assert completed.returncode == 2
    assert "grad" in completed.stderr
    assert "usage" in completed.stderr


def test_grad_help_documents_json():
    completed = run_gpuflow("grad", "--help")
    assert completed.returncode == 0
    assert '"nan"' in completed.stdout
    assert '"-inf"' in completed.stdout


def test_argparse_error_status():
    completed = run_gpuflow("grad", "x", "x=1", "--backend", "tpu")
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr


# Errors: exit status 2 and one line on stderr.


def assert_one_line_error(completed, *words):
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert lines[0].startswith("gpuflow grad: error: ")
    for word in words:
        assert word in lines[0]
    assert completed.stdout == ""


@pytest.fixture
def bad_files(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([1, None], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "objects.npz", x=np.array([1, None], dtype=object))
    (tmp_path / "text.npz").write_text("not a zip archive")
    (tmp_path / "text.npy").write_text("not an array")
    np.save(tmp_path / "whole.npy", np.arange(100.0))
    whole = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(whole[:200])
    np.save(tmp_path / "words.npy", np.array(["a", "b"]))
    np.savez(tmp_path / "mask.npz", x=np.array([1.0, 2.0]), m=np.array([True, False]))
    (tmp_path / "x.txt").write_text("1 2 3")
    return tmp_path


ERRORS = [
    (["arcsin(x)", "x=1"], ["unknown function 'arcsin'", "abs, add"]),
    (["x + * 2", "x=1"], ["invalid syntax at column 5"]),
    (["x.T", "x=1"], ["attribute access"]),
    (["x * y", "x=1"], ["no value for y"]),
    (["x * y", "x=1", "yy=2"], ["no value for y", "yy"]),
    (["x", "x=1", "z=2"], ["input z", "not used"]),
    (["x * y", "x=1,2,3", "y=1,2,3,4"], ["multiply", "(3,)", "(4,)"]),
    (["M @ x", "--random", "M=2x3", "x=2"], ["matmul", "(2, 3)", "(2,)"]),
    (["x[5]", "x=1,2"], ["getitem", "index"]),
    (["x & x", "x=1"], ["boolean"]),
    (["x", "--inputs", "missing.npz"], ["not found", "missing.npz"]),
    (["x", "--inputs", "x=3"], ["not found", "NAME=VALUE"]),
    (["x", "--inputs", "text.npz"], ["text.npz", "not a valid .npz"]),
    (["x", "--inputs", "text.npy"], ["text.npy", "not a valid .npy"]),
    (["whole", "--inputs", "cut.npy"], ["malformed", "cut.npy"]),
    (["x", "--inputs", "x.txt"], ["x.txt", ".npz or .npy"]),
    (["objects", "--inputs", "objects.npy"], ["object array", "allow_pickle=False"]),
    (["x", "--inputs", "objects.npz"], ["object array", "objects.npz"]),
    (["words", "--inputs", "words.npy"], ["words", "dtype"]),
    (["x", "x=abc"], ["invalid value 'abc'"]),
    (["x", "x=1,,2"], ["invalid value ''"]),
    (["x", "x"], ["expected NAME=VALUE"]),
    (["x", "_x=1"], ["invalid input name"]),
    (["x", "x=1", "x=2"], ["given twice"]),
    (["x", "--random", "x=10y"], ["invalid shape '10y'"]),
    (["x", "--random", "x"], ["expected NAME=SHAPE"]),
    (["x", "--random", "x=2", "--seed", "-1"], ["--seed -1"]),
    (["x * y", "x=1", "y=2", "--wrt", "z"], ["--wrt name z", "x, y"]),
    (["x", "x=1", "--wrt", "x,,"], ["invalid --wrt"]),
    (["sum(where(m, x, 0.0))", "--inputs", "mask.npz"], ["differentiate", "m", "bool", "--wrt x"]),
    (["2 * pi"], ["no inputs"]),
    (["x", "x=1", "--output", "result.txt"], [".npz"]),
    (["x", "x=1", "--output", "missing/result.npz"], ["does not exist", "missing"]),
]


@pytest.mark.parametrize(
    "arguments, words", ERRORS, ids=[" ".join(arguments) for arguments, _ in ERRORS]
)
def test_error_is_one_line(arguments, words, bad_files):
    completed = run_gpuflow("grad", *arguments, cwd=bad_files)
    assert_one_line_error(completed, *words)


@pytest.mark.skipif(HAS_CUPY, reason="CuPy is installed, so the cupy backend may be available")
def test_missing_backend_gives_hint():
    completed = run_gpuflow("grad", "x", "x=1", "--backend", "cupy")
    assert_one_line_error(completed, "cupy", "pip install")


def test_rejected_expression_runs_nothing(tmp_path):
    completed = run_gpuflow(
        "grad", "__import__('os').system('touch created') + x", "x=1", cwd=tmp_path
    )
    assert_one_line_error(completed, "only known functions")
    assert not (tmp_path / "created").exists()


def test_deep_expression_is_error():
    # The leading space keeps argparse from reading the expression as an option.
    completed = run_gpuflow("grad", " " + "-" * 5000 + "x", "x=1")
    assert_one_line_error(completed, "too deeply nested")


def test_output_rejects_input_file(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.array([1.0, 2.0]))
    before = path.read_bytes()
    completed = run_gpuflow("grad", "x * 2", "--inputs", path, "--output", path)
    assert_one_line_error(completed, "data.npz", "does not overwrite")
    assert path.read_bytes() == before


def test_output_rejects_input_by_other_path(tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    path = folder / "x.npy"
    np.save(path, np.array([1.0, 2.0]))
    before = path.read_bytes()
    link = tmp_path / "link.npz"
    os.link(path, link)
    completed = run_gpuflow(
        "grad", "x * 2", "--inputs", "folder/../folder/x.npy", "--output", "link.npz", cwd=tmp_path
    )
    assert_one_line_error(completed, "does not overwrite")
    assert path.read_bytes() == before


def test_leading_minus_after_space():
    document = run_json("grad", " -x**2", "x=3")
    assert document["value"] == -9
    assert document["grad"] == {"x": -6}


# Anomaly mode.


def test_detect_anomaly_names_log_of_zero():
    completed = run_gpuflow(
        "grad", "sum(log(x) + sqrt(x))", "x=1,0,2", "--detect-anomaly", "--backend", "numpy"
    )
    assert completed.returncode == 1
    lines = completed.stderr.splitlines()
    assert len(lines) == 1
    assert "log produced -inf at index (1,)" in lines[0]
    assert "column 5 of the expression (log(x))" in lines[0]


def test_detect_anomaly_names_sqrt_of_negative():
    completed = run_gpuflow(
        "grad", "sum(sqrt(x - 3))", "x=4,1", "--detect-anomaly", "--backend", "numpy"
    )
    assert completed.returncode == 1
    assert "sqrt produced nan" in completed.stderr
    assert "(sqrt(x - 3))" in completed.stderr


def test_without_detect_anomaly_prints_non_finite():
    completed = run_gpuflow("grad", "sum(log(x))", "x=1,0", "--backend", "numpy", "--json")
    assert completed.returncode == 0
    assert json.loads(completed.stdout)["value"] == "-inf"
