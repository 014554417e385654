"""The --chunk-size and --scheduler options of ``gpuflow grad``: chunked and Dask evaluation."""

from __future__ import annotations

import sys

import numpy

from gpuflow import chunked
from gpuflow.cli import CommandError


def add_arguments(grad) -> None:
    """Add --chunk-size and --scheduler to the ``grad`` parser."""
    grad.add_argument(
        "--chunk-size",
        metavar="ROWS",
        type=int,
        help="evaluate the batch (the inputs with the largest leading dimension) this many "
        "rows at a time, and read .npy inputs memory-mapped; with --scheduler, the rows "
        "per Dask chunk",
    )
    grad.add_argument(
        "--scheduler",
        metavar="threads|processes|ADDRESS",
        help="evaluate through Dask with its threads or processes scheduler, or on the "
        "dask.distributed scheduler at ADDRESS (tcp://host:port); needs gpuflow[dask]",
    )


def is_requested(args) -> bool:
    """Return whether the options of this module change how ``grad`` evaluates."""
    return args.chunk_size is not None or args.scheduler is not None


def mmap_mode(args) -> str | None:
    """Return the numpy.load mmap_mode for .npy inputs: "r" with --chunk-size, else None."""
    return "r" if args.chunk_size is not None else None


def check_expression(expression_text: str, args) -> None:
    """Raise CommandError when EXPR takes a mean, which chunks cannot add up."""
    if not is_requested(args):
        return
    import ast

    for node in ast.walk(ast.parse(expression_text.strip(), mode="eval")):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "mean":
            raise CommandError(
                "--chunk-size evaluates EXPR chunk by chunk and adds the results, which is "
                "wrong for mean; write the sum and divide by the batch length, for example "
                "sum(f(x)) / 1000000"
            )


def check_arguments(args) -> None:
    """Raise CommandError for an invalid --chunk-size or --scheduler."""
    if args.chunk_size is not None and args.chunk_size < 1:
        raise CommandError(
            f"invalid --chunk-size {args.chunk_size}: it must be a positive number of rows; "
            "pass for example --chunk-size 100000"
        )
    if args.scheduler is not None:
        if args.chunk_size is None:
            raise CommandError(
                "--scheduler needs --chunk-size, the number of rows per Dask chunk; pass "
                "for example --chunk-size 100000"
            )
        scheduler = args.scheduler
        if scheduler not in ("threads", "processes") and "://" not in scheduler:
            raise CommandError(
                f"invalid --scheduler {scheduler!r}: expected threads, processes or a "
                "scheduler address such as tcp://127.0.0.1:8786"
            )


class _ProgressBar:
    """A one-line text progress bar on stderr, redrawn in place with a carriage return."""

    width = 30

    def __init__(self, stream):
        self.stream = stream

    def __call__(self, done: int, total: int) -> None:
        fraction = done / total if total else 1.0
        filled = int(round(fraction * self.width))
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\rgpuflow grad: [{bar}] {done}/{total} rows")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _progress():
    return _ProgressBar(sys.stderr) if sys.stderr.isatty() else None


class _ExpressionFunction:
    """The function of a parsed EXPR that pickles as its text, for Dask's worker processes.

    The function built by the parser refers to gpuflow's recording state, which cannot be
    pickled, so each process parses the expression again on its first call.
    """

    def __init__(self, text: str, names: list[str]):
        self.text = text
        self.names = list(names)
        self._function = None

    def __getstate__(self):
        return {"text": self.text, "names": self.names}

    def __setstate__(self, state):
        self.__init__(state["text"], state["names"])

    def __call__(self, *arrays):
        if self._function is None:
            from gpuflow.cli.parser import parse_expression

            self._function = parse_expression(self.text).function(self.names)
        return self._function(*arrays)


def compute(expression, inputs, wrt, backend, args):
    """Evaluate chunked, or through Dask with --scheduler; return NumPy arrays.

    The result is the value and a dict from each name of ``wrt`` to its gradient,
    as from ``gpuflow.cli.main.compute``.
    """
    names = [item.name for item in inputs]
    function = expression.function(names)
    if args.scheduler is not None:
        function = _ExpressionFunction(args.expression, names)
    argnums = tuple(names.index(name) for name in wrt)
    arrays = [item.array for item in inputs]
    try:
        with backend.errstate():
            if args.scheduler is None:
                differentiate = chunked.value_and_grad(
                    function, argnums, chunk_size=args.chunk_size, backend=backend,
                    progress=_progress(),
                )
                value, grads = differentiate(*arrays)
            else:
                value, grads = _compute_dask(function, argnums, arrays, backend, args)
    except (ValueError, TypeError, IndexError, OverflowError, ZeroDivisionError) as error:
        text = " ".join(str(error).split())
        raise CommandError(text if ";" in text else f"{text}; check the inputs' shapes") from None
    except MemoryError:
        raise CommandError(
            "out of memory while evaluating the expression; use a smaller --chunk-size"
        ) from None
    value = numpy.asarray(backend.to_numpy(value))
    gradients = {
        name: numpy.asarray(backend.to_numpy(gradient)) for name, gradient in zip(wrt, grads)
    }
    return value, gradients


def _compute_dask(function, argnums, arrays, backend, args):
    try:
        import dask
        import dask.array as da

        from gpuflow import dask as gpuflow_dask
    except ImportError as error:
        raise CommandError(
            f"--scheduler needs Dask, which is not installed ({error}); "
            "pip install 'gpuflow[dask]'"
        ) from None
    shapes = [chunked.array_shape(array) for array in arrays]
    length, batched = chunked.find_batch(shapes)
    lazy_arrays = [
        da.from_array(array, chunks=(args.chunk_size, *array.shape[1:]))
        if position in batched else array
        for position, array in enumerate(arrays)
    ]
    # NOTE: the processes and distributed schedulers receive the batched inputs inside the
    # task graph, so a memory-mapped file is read whole on the client for them.
    value, grads = gpuflow_dask.value_and_grad(function, argnums, backend=backend.name)(
        *lazy_arrays
    )
    if args.scheduler in ("threads", "processes"):
        if sys.stderr.isatty():
            from dask.diagnostics import ProgressBar

            with ProgressBar(out=sys.stderr):
                return dask.compute(value, grads, scheduler=args.scheduler)
        return dask.compute(value, grads, scheduler=args.scheduler)
    from dask.distributed import Client

    try:
        client = Client(args.scheduler, timeout=30)
    except (OSError, TimeoutError) as error:
        raise CommandError(
            f"cannot connect to the Dask scheduler at {args.scheduler}: {error}; check the "
            "address and that the scheduler is running"
        ) from None
    with client:
        results = client.compute([value, *grads], sync=True)
    return results[0], results[1:]
