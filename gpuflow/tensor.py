"""The eager Tensor and the function that applies an operation and records it in the graph."""

from __future__ import annotations

import contextlib
import threading

import numpy as _numpy

from gpuflow import backends
from gpuflow.graph import Node


class _State(threading.local):
    """Per-thread engine state: whether to record, and the backend of a first-order backward pass."""

    def __init__(self):
        self.recording = True
        # Set while a first-order backward pass runs: operations then take and
        # return plain backend arrays and record nothing, which keeps the
        # per-operation cost low for small arrays.
        self.raw_backend = None
        # A list that collects every recorded tensor in creation order while a
        # functional call (gpuflow.grad) evaluates its function, or None.
        self.tape = None
        # Anomaly mode (gpuflow.detect_anomaly) and the expression position that
        # the command's parser reports for the operations it runs.
        self.anomaly = False
        self.position = None
        # Set while gpuflow.compile traces a function: operations that record no
        # gradient node still get a Node, so that the plan can replay them.
        self.capture = False
        # Set while gpuflow.compile traces on placeholders (gpuflow.compile.placeholder):
        # operations then run through placeholder.forward.
        self.placeholders = False


state = _State()


@contextlib.contextmanager
def no_grad():
    """Stop recording operations inside the block; results do not require a gradient."""
    previous = state.recording
    state.recording = False
    try:
        yield
    finally:
        state.recording = previous


@contextlib.contextmanager
def enable_grad():
    """Record operations inside the block, also within ``no_grad``."""
    previous = state.recording
    state.recording = True
    try:
        yield
    finally:
        state.recording = previous


@contextlib.contextmanager
def raw_mode(backend):
    """Run operations on plain arrays of ``backend`` without recording them."""
    previous = state.raw_backend
    state.raw_backend = backend
    try:
        yield
    finally:
        state.raw_backend = previous


_floating_cache: dict = {}


def is_floating(backend, dtype) -> bool:
    """Return whether ``dtype`` is a real floating-point dtype of ``backend``."""
    key = (backend.name, dtype)
    result = _floating_cache.get(key)
    if result is None:
        result = _floating_cache[key] = bool(backend.isdtype(dtype, "real floating"))
    return result


def _scalar_dtype(backend, value, reference_dtype):
    """Pick the dtype a Python number takes beside an array of ``reference_dtype``.

    Python numbers are weak, as in NumPy 2 and the Array API standard: a float
    beside a float32 array becomes float32, and an int beside any numeric array
    takes that array's dtype. A float beside an integer array becomes float64.
    """
    if isinstance(value, bool):
        return reference_dtype if reference_dtype is not None else backend.bool
    if reference_dtype is None:
        if isinstance(value, int):
            return backend.int64
        return backend.float64
    if isinstance(value, int):
        return reference_dtype
    if isinstance(value, float) and is_floating(backend, reference_dtype):
        return reference_dtype
    if isinstance(value, complex):
        return backend.complex128
    return backend.float64


def scalar_to_array(backend, value, reference_dtype):
    """Convert a Python number to a 0-d array of the dtype it takes beside ``reference_dtype``."""
    return backend.asarray(value, dtype=_scalar_dtype(backend, value, reference_dtype))


class Tensor:
    """An array of some backend that records the operations applied to it.

    Create leaves with ``Tensor(data, requires_grad=True)``; the Tensor keeps
    its own copy of ``data``, so later writes to the original array cannot
    change a gradient. Operators and ``gpuflow`` functions on Tensors build the
    graph as they run, and ``backward()`` fills ``.grad`` on the leaves that
    require a gradient. Tensors are immutable: there are no in-place
    operations.
    """

    __slots__ = (
        "data", "backend", "requires_grad", "node", "grad", "name", "consumers", "__weakref__"
    )

    def __init__(self, data, requires_grad: bool = False, backend=None, name: str | None = None):
        if isinstance(data, Tensor):
            data = data.data
        if getattr(data, "is_placeholder", False):
            from gpuflow.compile.placeholder import _reject

            _reject("gpuflow.Tensor(...) of a traced value")
        chosen = backends.get_backend(backend) if backend is not None else backends.backend_of(data)
        if chosen is None:
            chosen = backends.default_backend()
        if backends.backend_of(data) is chosen:
            array = chosen.copy(data)
        else:
            array = chosen.from_numpy(data)
        if isinstance(array, _numpy.ndarray):
            # The Tensor owns this copy; making it read-only keeps `t.data[0] = v`
            # from changing values that cached gradients depend on.
            array.flags.writeable = False
        self.data = array
        self.backend = chosen
        self.node = None
        self.grad = None
        self.name = name
        self.consumers = 0
        self.requires_grad = False
        if requires_grad:
            self.requires_grad_()

    @classmethod
    def _wrap(cls, data, backend, requires_grad=False, node=None):
        """Make a Tensor around ``data`` without copying it or checking it."""
        tensor = cls.__new__(cls)
        tensor.data = data
        tensor.backend = backend
        tensor.requires_grad = requires_grad
        tensor.node = node
        tensor.grad = None
        tensor.name = None
        # How many recorded nodes take this tensor as an input; the fusion pass reads it.
        tensor.consumers = 0
        return tensor

    def requires_grad_(self, flag: bool = True) -> Tensor:
        """Mark this leaf as differentiable; the dtype must be floating point."""
        if flag and not is_floating(self.backend, self.dtype):
            label = self.name or "tensor"
            raise TypeError(
                f"cannot differentiate with respect to {label} of dtype {_dtype_text(self.dtype)}: "
                "only floating-point arrays have gradients; "
                f"cast it first, for example {label}.astype('float32')"
            )
        self.requires_grad = flag
        return self

    # Array attributes.

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    @property
    def size(self) -> int:
        count = 1
        for extent in self.data.shape:
            count *= extent
        return count

    @property
    def T(self) -> Tensor:
        return _ops.transpose(self)

    @property
    def mT(self) -> Tensor:
        return _ops.matrix_transpose(self)

    def __iter__(self):
        if not self.data.shape:
            raise TypeError("iteration over a 0-d Tensor")
        for index in range(self.data.shape[0]):
            yield self[index]

    def __len__(self) -> int:
        if not self.data.shape:
            raise TypeError("len() of a 0-d Tensor")
        return self.data.shape[0]

    def __repr__(self) -> str:
        flags = ", requires_grad=True" if self.requires_grad else ""
        data = self.data
        printed = data if getattr(data, "is_placeholder", False) else self.backend.to_numpy(data)
        return f"Tensor({printed!r}{flags}, backend={self.backend.name!r})"

    def __hash__(self) -> int:
        return id(self)

    def __bool__(self) -> bool:
        return bool(self.data)

    def _leave_graph(self, conversion: str) -> None:
        # A value taken out of the graph carries no gradient, so code that goes on
        # computing with it would get a silently wrong or zero gradient.
        if self.requires_grad:
            raise TypeError(
                f"{conversion} of a Tensor that requires a gradient would drop it from the "
                "graph, and gradients through the result would be lost; keep the computation "
                "in gpuflow functions, or call .detach() first if no gradient is wanted"
            )

    def __float__(self) -> float:
        self._leave_graph("float()")
        return float(self.data)

    def __int__(self) -> int:
        self._leave_graph("int()")
        return int(self.data)

    def item(self):
        """Return the value of a one-element Tensor as a Python number."""
        self._leave_graph("item()")
        return self.backend.to_numpy(self.data).item()

    def numpy(self):
        """Return the value as a NumPy array on the host (a copy for device backends)."""
        self._leave_graph("numpy()")
        return self.backend.to_numpy(self.data)

    def __array__(self, dtype=None, copy=None):
        self._leave_graph("Conversion to a NumPy array")
        array = self.backend.to_numpy(self.data)
        return array.astype(dtype) if dtype is not None else array

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # NumPy ufuncs applied to Tensors, such as ndarray * Tensor or numpy.exp(t),
        # run the gpuflow operation of the same name so that they are recorded.
        name = _UFUNC_NAMES.get(ufunc.__name__, ufunc.__name__)
        function = getattr(_ops, name, None)
        if method != "__call__" or kwargs or function is None or name not in _ops.__all__:
            raise TypeError(
                f"numpy.{ufunc.__name__} (method {method!r}) does not take gpuflow Tensors; "
                "use the gpuflow function of the same name, for example gpuflow.exp, so that "
                "the operation is recorded"
            )
        return function(*inputs)

    def __array_function__(self, func, types, args, kwargs):
        # numpy.sum(t), numpy.reshape(t, ...) and friends run the gpuflow function.
        name = _ARRAY_FUNCTION_NAMES.get(func.__name__, func.__name__)
        function = getattr(_ops, name, None)
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
        if function is None or name not in _ops.__all__ or set(kwargs) - {"axis", "keepdims"}:
            raise TypeError(
                f"numpy.{func.__name__} does not take gpuflow Tensors with these arguments; "
                f"use gpuflow.{name} if it exists, or build the operation with "
                "gpuflow.define_op"
            )
        return function(*args, **kwargs)

    def detach(self) -> Tensor:
        """Return a Tensor with the same data that is not connected to the graph."""
        if state.capture:
            return _elementwise.detach_op(self)
        return Tensor._wrap(self.data, self.backend)

    def backward(self, gradient=None, retain_graph: bool = False, create_graph: bool = False):
        """Accumulate the gradient of this Tensor into ``.grad`` of every leaf it depends on.

        ``gradient`` is the seed (ones of this Tensor's shape by default, which
        gives the gradient of the sum). Cached values are freed afterwards
        unless ``retain_graph`` is true; ``create_graph`` records the backward
        pass itself, so the gradients can be differentiated again.
        """
        from gpuflow import engine

        engine.backward_into_leaves(self, gradient, retain_graph, create_graph)

    # In-place writes would change values the backward pass depends on.

    def __setitem__(self, key, value):
        raise TypeError(
            "Tensor does not support item assignment: gradients depend on the values the "
            "forward pass saw; build a new Tensor instead, for example with gpuflow.where"
        )

    # Operators, each a recorded operation.

    # The arithmetic operators apply their operations directly, which saves two
    # Python calls per operation in small graphs.

    def __add__(self, other):
        return apply(_elementwise._add, (self, other), {})

    def __radd__(self, other):
        return apply(_elementwise._add, (other, self), {})

    def __sub__(self, other):
        return apply(_elementwise._subtract, (self, other), {})

    def __rsub__(self, other):
        return apply(_elementwise._subtract, (other, self), {})

    def __mul__(self, other):
        return apply(_elementwise._multiply, (self, other), {})

    def __rmul__(self, other):
        return apply(_elementwise._multiply, (other, self), {})

    def __truediv__(self, other):
        return apply(_elementwise._divide, (self, other), {})

    def __rtruediv__(self, other):
        return apply(_elementwise._divide, (other, self), {})

    def __pow__(self, other):
        return _ops.power(self, other)

    def __rpow__(self, other):
        return _ops.power(other, self)

    def __matmul__(self, other):
        return _ops.matmul(self, other)

    def __rmatmul__(self, other):
        return _ops.matmul(other, self)

    def __neg__(self):
        return _ops.negative(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _ops.abs(self)

    def __getitem__(self, key):
        return _ops.getitem(self, key)

    # Comparisons give boolean Tensors that carry no gradient.

    def __lt__(self, other):
        return _ops.less(self, other)

    def __le__(self, other):
        return _ops.less_equal(self, other)

    def __gt__(self, other):
        return _ops.greater(self, other)

    def __ge__(self, other):
        return _ops.greater_equal(self, other)

    def __eq__(self, other):
        return _ops.equal(self, other)

    def __ne__(self, other):
        return _ops.not_equal(self, other)

    def __and__(self, other):
        return _ops.logical_and(self, other)

    def __or__(self, other):
        return _ops.logical_or(self, other)

    def __invert__(self):
        return _ops.logical_not(self)

    # Methods with NumPy's names.

    def astype(self, dtype):
        return _ops.astype(self, dtype)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops.transpose(self, axes or None)

    def sum(self, axis=None, keepdims=False):
        return _ops.sum(self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops.mean(self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops.max(self, axis=axis, keepdims=keepdims)


# NumPy names that differ from gpuflow's.
_UFUNC_NAMES = {"absolute": "abs", "true_divide": "divide"}
_ARRAY_FUNCTION_NAMES = {"amax": "max", "amin": "min", "concat": "concatenate"}


def _dtype_text(dtype) -> str:
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) else str(dtype).rsplit(".", 1)[-1]


# Python numbers, including NumPy's float64 and int64 scalars, which subclass them.
_NUMBER_TYPES = (int, float, complex)


def _reference_dtype(backend, values):
    # The first non-boolean array dtype, so that where(mask, x, 0.0) keeps x's dtype.
    found = None
    for value in values:
        if isinstance(value, _NUMBER_TYPES):
            continue
        dtype = getattr(value, "dtype", None)
        if dtype is None:
            continue
        if dtype != backend.bool:
            return dtype
        found = dtype
    return found


def _mixed_backends(first, second):
    return TypeError(
        f"cannot combine arrays of the {first.name} and {second.name} backends in one "
        "operation; move them to one backend first, for example with "
        f"gpuflow.Tensor(x, backend={first.name!r})"
    )


class Ones:
    """A gradient of all ones, kept symbolic during a first-order backward pass.

    The default seed is ones, and most batch gradients start with a sum, so
    the first rules often multiply by ones. ``Ones * b`` returns ``b`` without
    touching memory, and reshapes and broadcasts keep the symbol; every other
    use turns it into a read-only broadcast array first.
    """

    __slots__ = ("shape", "dtype", "backend")
    __array_ufunc__ = None  # NumPy defers ``ndarray * Ones`` to Ones.__rmul__.

    def __init__(self, shape, dtype, backend):
        self.shape = tuple(shape)
        self.dtype = dtype
        self.backend = backend

    def materialize(self):
        """Return the ones as a broadcast array of this shape and dtype."""
        xp = self.backend
        return xp.broadcast_to(xp.ones((), dtype=self.dtype), self.shape)

    def _times(self, other):
        if isinstance(other, Ones):
            return self if other.shape == self.shape else self.materialize() * other.materialize()
        shape = getattr(other, "shape", None)
        if shape is None or getattr(other, "dtype", None) != self.dtype:
            return self.materialize() * other
        if tuple(shape) == self.shape:
            return other
        return self.materialize() * other

    __mul__ = _times
    __rmul__ = _times

    def __neg__(self):
        return -self.materialize()

    def __add__(self, other):
        return self.materialize() + _plain(other)

    def __radd__(self, other):
        return _plain(other) + self.materialize()

    def __sub__(self, other):
        return self.materialize() - _plain(other)

    def __rsub__(self, other):
        return _plain(other) - self.materialize()

    def __truediv__(self, other):
        return self.materialize() / _plain(other)

    def __rtruediv__(self, other):
        return _plain(other) / self.materialize()


def _plain(value):
    return value.materialize() if isinstance(value, Ones) else value


def _apply_raw(backend, op, inputs, params):
    for value in inputs:
        if isinstance(value, Ones):
            if op.keeps_ones and len(inputs) == 1 and -1 not in params["shape"]:
                return Ones(params["shape"], value.dtype, backend)
            inputs = [_plain(v) for v in inputs]
            break
    for value in inputs:
        if isinstance(value, _NUMBER_TYPES):
            reference = _reference_dtype(backend, inputs)
            inputs = [
                scalar_to_array(backend, v, reference) if isinstance(v, _NUMBER_TYPES) else v
                for v in inputs
            ]
            break
    return op.forward(backend, *inputs, **params)


def apply(op, inputs, params):
    """Run ``op`` on ``inputs`` and record a node when a gradient may be needed.

    ``inputs`` may mix Tensors, arrays of the same backend and Python numbers.
    Arrays become constants (copied, so a later write to them cannot change a
    gradient) and numbers become 0-d arrays of the dtype they take beside the
    other inputs. During a first-order backward pass the inputs are plain
    arrays, and the result is a plain array.
    """
    raw = state.raw_backend
    if raw is not None:
        return _apply_raw(raw, op, inputs, params)

    backend = None
    record = False
    arrays = []
    tensors = inputs
    for value in inputs:
        if type(value) is not Tensor:
            # Arrays and numbers among the inputs become constant Tensors first.
            tensors = _convert_inputs(op, inputs, backend)
            backend = tensors[0].backend
            record = any(tensor.requires_grad for tensor in tensors)
            arrays = [tensor.data for tensor in tensors]
            break
        if backend is None:
            backend = value.backend
        elif value.backend is not backend:
            raise _mixed_backends(backend, value.backend)
        if value.requires_grad:
            record = True
        arrays.append(value.data)

    if op.elementwise and len(arrays) > 1:
        # Inputs of one shape and dtype, the common case, need neither check.
        first = arrays[0]
        for array in arrays:
            if array.shape != first.shape or array.dtype != first.dtype:
                if op.promotes is not None:
                    tensors = _promote(backend, tensors, op.promotes)
                    arrays = [tensor.data for tensor in tensors]
                if op.check is not None:
                    op.check(op.name, arrays, params)
                break
    elif op.check is not None:
        op.check(op.name, arrays, params)
    record = record and state.recording and op.differentiable
    if state.placeholders:
        from gpuflow.compile import placeholder

        out, cache = placeholder.forward(op, backend, arrays, params), None
    elif record and op.forward_cached is not None:
        out, cache = op.forward_cached(backend, *arrays, **params)
    else:
        out, cache = op.forward(backend, *arrays, **params), None
    if not op.symbolic_ones and not backend.is_array(out) and not (
        state.placeholders and getattr(out, "is_placeholder", False)
    ):
        raise TypeError(
            f"the forward function of operation {op.name!r} returned "
            f"{type(out).__name__}, not an array of the {backend.name} backend; return "
            "one array, built with the xp namespace it receives"
        )
    location = None
    if state.anomaly:
        from gpuflow import anomaly

        location = anomaly.current_location()
        anomaly.check_forward(op, backend, arrays, out, location)
    if not record:
        if state.capture:
            return Tensor._wrap(out, backend, False, Node(op, tuple(tensors), params))
        return Tensor._wrap(out, backend)
    for tensor in tensors:
        tensor.consumers += 1
    node = Node(op, tuple(tensors), params, cache)
    if location is not None:
        node.location = location
    result = Tensor._wrap(out, backend, True, node)
    tape = state.tape
    if tape is not None:
        tape.append(result)
    return result


def _promote(backend, tensors, positions):
    """Cast the inputs at ``positions`` to their common dtype by NumPy's promotion rules.

    The casts are recorded operations, so gradients flow back through them. This
    gives every backend NumPy's results for mixed dtypes (float32 with int64
    gives float64), also where the Array API standard leaves them undefined.
    """
    chosen = list(range(len(tensors))) if positions is True else list(positions)
    first = tensors[chosen[0]].dtype
    if all(tensors[i].dtype == first for i in chosen):
        return tensors
    import numpy

    common = numpy.result_type(*[_dtype_text(tensors[i].dtype) for i in chosen]).name
    target = getattr(backend, common)
    promoted = list(tensors)
    for i in chosen:
        if tensors[i].dtype != target:
            promoted[i] = _ops.astype(tensors[i], target)
    return promoted


def _reject_complex(op, value):
    raise TypeError(
        f"{op.name}: complex input {value!r:.60} is not supported; gpuflow differentiates "
        "real-valued functions, so split complex values into real and imaginary parts"
    )


def _convert_inputs(op, inputs, backend):
    """Turn the arrays and numbers among ``inputs`` into constant Tensors of one backend."""
    for value in inputs:
        if isinstance(value, complex) or (
            getattr(value, "dtype", None) is not None
            and getattr(value.dtype, "kind", None) == "c"
        ):
            _reject_complex(op, value)
        if value is None or isinstance(value, _NUMBER_TYPES):
            continue
        owner = value.backend if isinstance(value, Tensor) else backends.backend_of(value)
        if owner is None and getattr(value, "is_placeholder", False):
            from gpuflow.compile.placeholder import _reject

            _reject(f"{op.name} on the .data of a traced Tensor")
        if owner is None:
            raise TypeError(
                f"{op.name}: unsupported input of type {type(value).__name__}; pass a Tensor, "
                "an array or a number"
            )
        if backend is None:
            backend = owner
        elif owner is not backend:
            raise _mixed_backends(backend, owner)
    if backend is None:
        backend = backends.default_backend()

    tensors = [
        value if isinstance(value, Tensor) or value is None
        or isinstance(value, _NUMBER_TYPES) else Tensor(value, backend=backend)
        for value in inputs
    ]
    reference = _reference_dtype(backend, tensors)
    for position, value in enumerate(tensors):
        if value is None:
            raise TypeError(f"{op.name}: input {position} is None; pass an array or a number")
        if isinstance(value, _NUMBER_TYPES):
            tensors[position] = Tensor._wrap(scalar_to_array(backend, value, reference), backend)
    return tensors


# Imported last because the operations import this module; Tensor's operators use them.
from gpuflow import ops as _ops  # noqa: E402
from gpuflow.ops import elementwise as _elementwise  # noqa: E402
