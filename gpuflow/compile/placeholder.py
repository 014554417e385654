"""Placeholders: the values ``gpuflow.compile`` traces with on NumPy, which have no data to read.

A plan depends on the shapes and dtypes of its inputs, not on their values,
so tracing on the real arrays would only repeat the whole computation once
more. On NumPy the trace runs on placeholders instead: arrays of the real
shapes whose elements all share one memory location (zero strides). While
tracing, ``apply`` hands each operation to ``forward`` below. An elementwise
operation whose inputs each have one value runs on those values and
broadcasts the result, so the trace of a batch costs about as much as the
trace of a single element. Other operations run on the zero-stride arrays.

Every traced result that depends on an argument is a ``Placeholder`` too.
Its values are not the function's values, so NumPy functions, conversions,
operators and indexing on it raise a TypeError that explains this. Code that
reads an argument's data outside gpuflow operations would otherwise leave
placeholder values in the plan.
"""

from __future__ import annotations

import numpy

from gpuflow.tensor import state

# The value of every element of a floating-point placeholder argument. Any
# value works, and 0.5 is inside the domain of log, sqrt, arcsin and arccos.
_FLOAT_FILL = 0.5


class PlaceholderReadError(TypeError):
    """Raised when code reads the values of a traced array during ``gpuflow.compile``."""


def _reject(usage: str):
    raise PlaceholderReadError(
        f"compile: {usage} needs the values of a traced array, but gpuflow.compile traces "
        "f on placeholders that hold no values; compute with gpuflow operations (gf.exp, "
        "gf.sum, ...) on the Tensors f receives, or use gpuflow.value_and_grad for code "
        "that needs the values"
    )


class Placeholder:
    """A traced array during ``gpuflow.compile``: a shape and a dtype, and no readable values.

    It wraps a NumPy array of one value with zero strides, which only
    ``forward`` reads. It is not an ndarray, so that ``numpy.asarray`` and
    every other way of reading it reach a method below that raises.
    """

    __slots__ = ("array", "known")
    is_placeholder = True

    def __init__(self, array, known: bool = False):
        self.array = array
        # True for the backward pass's seed of ones, whose values are real.
        self.known = known

    @property
    def shape(self):
        return self.array.shape

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def ndim(self):
        return self.array.ndim

    @property
    def size(self):
        return self.array.size

    def __len__(self):
        return len(self.array)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _reject(f"numpy.{ufunc.__name__}")

    def __array_function__(self, func, types, args, kwargs):
        if func in (numpy.shape, numpy.ndim, numpy.size):
            return func(self.array, *args[1:], **kwargs)
        _reject(f"numpy.{func.__name__}")

    def __array__(self, dtype=None, copy=None):
        _reject("converting to a NumPy array")

    def __dlpack__(self, *args, **kwargs):
        _reject("converting through DLPack")

    def __getitem__(self, key):
        _reject("indexing the array itself")

    def __setitem__(self, key, value):
        _reject("writing to the array")

    def __float__(self):
        _reject("float()")

    def __int__(self):
        _reject("int()")

    def __index__(self):
        _reject("use as an index")

    def __bool__(self):
        _reject("bool() or an if statement")

    def __complex__(self):
        _reject("complex()")

    def __iter__(self):
        _reject("iterating over the array")

    def __eq__(self, other):
        _reject("the operator ==")

    def __ne__(self, other):
        _reject("the operator !=")

    __hash__ = object.__hash__

    def __getattr__(self, name):
        if name in _ARRAY_METHODS:
            _reject(f"the array method {name}()")
        raise AttributeError(f"placeholder arrays have no attribute {name!r}")

    def __repr__(self):
        return f"<placeholder {self.dtype}{list(self.shape)}>"

    __str__ = __repr__


# Methods of NumPy arrays that read the values; other names raise AttributeError.
_ARRAY_METHODS = frozenset(
    "all any argmax argmin argsort astype clip copy cumprod cumsum dot flat flatten imag item "
    "max mean min nonzero prod ravel real repeat reshape round sort std sum T take tobytes "
    "tofile tolist trace transpose var view".split()
)


def _reject_operator(name):
    def method(self, *args):
        _reject(f"the operator {name}")

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or",
              "xor", "lshift", "rshift"):
    setattr(Placeholder, f"__{_name}__", _reject_operator(_name))
    setattr(Placeholder, f"__r{_name}__", _reject_operator(_name))
for _name in ("neg", "pos", "abs", "invert", "lt", "le", "gt", "ge"):
    setattr(Placeholder, f"__{_name}__", _reject_operator(_name))


def placeholder_like(array) -> Placeholder:
    """Return a placeholder of ``array``'s shape and dtype, every element one value."""
    dtype = numpy.dtype(array.dtype)
    if dtype.kind == "f":
        fill = _FLOAT_FILL
    elif dtype.kind == "b":
        fill = True
    else:
        fill = 1
    element = numpy.asarray(fill, dtype=dtype)
    return Placeholder(numpy.broadcast_to(element, array.shape))


def _single_value(array) -> bool:
    """Return whether every element of a NumPy array is the one at a single memory location."""
    if not isinstance(array, numpy.ndarray) or array.size == 0:
        return False
    return array.size == 1 or not any(array.strides)


def _matmul_placeholder(a, b):
    """Return a zero-stride array with the shape and dtype of ``a @ b``, which apply checked."""
    left = a.shape if a.ndim > 1 else (1,) + a.shape
    right = b.shape if b.ndim > 1 else b.shape + (1,)
    shape = numpy.broadcast_shapes(left[:-2], right[:-2]) + (left[-2], right[-1])
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    element = numpy.zeros((), dtype=numpy.result_type(a.dtype, b.dtype))
    return numpy.broadcast_to(element, shape)


# Operations whose result has their input's shape and depends on it elementwise.
_LIKE = frozenset({"zeros_like", "ones_like"})

# Reductions, whose parameter ``axis`` is a tuple of the reduced axes.
_REDUCTIONS = frozenset({"sum", "mean", "max", "min", "logsumexp", "norm"})


def _shrink_reduced_axes(array, axes):
    """Return a one-value ``array`` with each reduced axis cut to one element.

    The reduction then has the same result shape, while visiting only as many
    elements as it returns.
    """
    index = tuple(slice(0, 1) if axis in axes and extent > 1 else slice(None)
                  for axis, extent in enumerate(array.shape))
    return array[index]


def _first_element(array):
    """Return the first element of a NumPy array as a 0-d array (a view)."""
    return array[(0,) * array.ndim + (Ellipsis,)]


def _one_value(array):
    """Return a zero-stride array of ``array``'s shape and dtype, holding its first element."""
    if array.size <= 1 or not any(array.strides):
        return array
    return numpy.broadcast_to(_first_element(array).copy(), array.shape)


def _not_elementwise(op, got, expected):
    raise ValueError(
        f"{op.name}: the operation is defined as elementwise, but its forward returned "
        f"shape {got} where its inputs give {expected}; define it without elementwise=True"
    )


def forward(op, backend, arrays, params):
    """Run ``op`` during a placeholder trace; return a Placeholder of the result's shape."""
    traced = any(type(array) is Placeholder for array in arrays)
    plain = [array.array if type(array) is Placeholder else array for array in arrays]
    if state.placeholders == "values":
        # Placeholders around the real arrays: compute as usual, and keep the values.
        out = op.forward(backend, *plain, **params)
        if op.elementwise and isinstance(out, (numpy.ndarray, numpy.generic)):
            shape = numpy.broadcast_shapes(*[numpy.shape(array) for array in plain])
            if numpy.shape(out) != shape:
                _not_elementwise(op, numpy.shape(out), shape)
        if traced and isinstance(out, numpy.generic):
            out = numpy.asarray(out)
        return Placeholder(out) if traced and isinstance(out, numpy.ndarray) else out
    single = all(_single_value(array) for array in plain)
    if op.builtin and op.name in _LIKE and single:
        out = numpy.broadcast_to(op.forward(backend, _first_element(plain[0]), **params),
                                 plain[0].shape)
    elif op.builtin and op.name in _REDUCTIONS and traced and single and plain[0].ndim:
        shrunk = _shrink_reduced_axes(plain[0], set(params.get("axis") or ()))
        out = op.forward(backend, shrunk, *plain[1:], **params)
    elif op.elementwise and single:
        shape = numpy.broadcast_shapes(*[array.shape for array in plain])
        elements = [_first_element(array) for array in plain]
        out = op.forward(backend, *elements, **params)
        if not isinstance(out, (numpy.ndarray, numpy.generic)):
            return out  # apply reports a forward that returns no array
        try:
            out = numpy.broadcast_to(out, shape)
        except ValueError:
            _not_elementwise(op, numpy.shape(out), "one element")
    elif op.builtin and op.name == "matmul" and traced:
        # Without real strides NumPy multiplies in a slow loop, and only the shape matters.
        out = _matmul_placeholder(*plain)
    else:
        out = op.forward(backend, *plain, **params)
    if traced and isinstance(out, numpy.generic):
        out = numpy.asarray(out)  # full reductions return NumPy scalars
    if traced and isinstance(out, numpy.ndarray):
        # Only the shape and dtype matter, and one value keeps later steps cheap.
        out = Placeholder(_one_value(out))
    return out
