"""Operation definitions: a forward function and its local partials, in one place.

Built-in operations and user operations are defined the same way::

    def cube_forward(xp, x):
        return x * x * x

    def cube_vjp(g, out, x):
        return (3 * x * x * g,)

    cube = gpuflow.define_op("cube", cube_forward, cube_vjp)
    y = cube(gpuflow.Tensor(np.arange(3.0), requires_grad=True))

``forward(xp, *arrays, **params)`` receives the backend (which works as the
array namespace: ``xp.exp``, ``xp.where``, ...) and plain arrays, and returns
the output array.

``vjp(g, out, *inputs, **params)`` returns one gradient per input (or None
for an input without one): the vector-Jacobian product of the upstream
gradient ``g`` with the local partial derivatives. Write it with Python
operators and ``gpuflow`` functions only. In a first-order backward pass the
arguments are plain arrays and those functions run directly on them. With
``create_graph=True`` they are Tensors, and the same rule is recorded, which is
where second derivatives come from. The rule returns gradients of the
output's (broadcast) shape: the engine sums each one back to its input's
shape and casts it to the input's dtype, and it adds the gradients that meet
at a value used more than once.

An operation may also cache its local partials during the forward pass:
``forward_cached`` returns ``(out, cache)`` and ``vjp_cached(g, cache,
**params)`` uses the cache in first-order backward passes. ``vjp`` stays the
differentiable fallback for higher-order derivatives.
"""

from __future__ import annotations

from gpuflow.tensor import apply


class Operation:
    """A named primitive: its forward function, its gradient rule and optional checks."""

    def __init__(
        self,
        name: str,
        forward,
        vjp=None,
        *,
        forward_cached=None,
        vjp_cached=None,
        check=None,
        differentiable: bool = True,
        elementwise: bool = False,
        keeps_ones: bool = False,
        promotes=None,
        symbolic_ones: bool = False,
        builtin: bool = False,
    ):
        if not name or not isinstance(name, str):
            raise ValueError(f"an operation needs a non-empty string name, got {name!r}")
        if not callable(forward):
            raise TypeError(f"operation {name!r}: forward must be callable, got {forward!r}")
        for label, function in (("vjp", vjp), ("forward_cached", forward_cached),
                                ("vjp_cached", vjp_cached)):
            if function is not None and not callable(function):
                raise TypeError(
                    f"operation {name!r}: {label} must be callable or None, got {function!r}"
                )
        if (forward_cached is None) != (vjp_cached is None):
            raise TypeError(
                f"operation {name!r}: pass forward_cached and vjp_cached together, or neither"
            )
        self.name = name
        self.forward = forward
        self.vjp = vjp if vjp is not None else self._missing_vjp
        self.forward_cached = forward_cached
        self.vjp_cached = vjp_cached
        self.check = check
        self.differentiable = differentiable and vjp is not None
        self.elementwise = elementwise
        # Set for reshapes and broadcasts with a ``shape`` parameter: ones in, ones out.
        self.keeps_ones = keeps_ones
        # Whether the rules accept the symbolic Ones gradient (gpuflow.tensor.Ones).
        # Built-in rules do; user rules get a real array.
        self.symbolic_ones = symbolic_ones
        # gpuflow's own operations; passes and executors match these by name only.
        self.builtin = builtin
        # Input positions cast to a common dtype first: True for all, None for none.
        if promotes is None and elementwise:
            promotes = True
        self.promotes = promotes

    def _missing_vjp(self, g, out, *inputs, **params):
        raise TypeError(
            f"operation {self.name!r} has no gradient rule; define it with a vjp function "
            "to differentiate through it"
        )

    def __call__(self, *inputs, **params):
        return apply(self, inputs, params)

    def __repr__(self) -> str:
        return f"<gpuflow operation {self.name}>"


def define_op(name, forward, vjp=None, **options) -> Operation:
    """Define a differentiable operation from a forward function and its gradient rule.

    See this module's documentation for the two functions' signatures. The
    returned Operation is called like a function on Tensors, arrays and
    numbers, positional arguments being the inputs and keyword arguments the
    parameters passed unchanged to both functions. Without ``vjp`` the
    operation records nothing and its result carries no gradient.
    """
    return Operation(name, forward, vjp, **options)


def builtin_op(name, forward, vjp=None, **options) -> Operation:
    """Define a built-in operation, whose rules accept the symbolic Ones gradient."""
    return Operation(name, forward, vjp, symbolic_ones=True, builtin=True, **options)


def broadcast_shapes(name: str, shapes) -> tuple:
    """Return the broadcast shape of ``shapes``, or raise a ValueError that names the operation."""
    result = ()
    for shape in shapes:
        if shape == result:
            continue
        length = max(len(result), len(shape))
        left = (1,) * (length - len(result)) + tuple(result)
        right = (1,) * (length - len(shape)) + tuple(shape)
        merged = []
        for a, b in zip(left, right):
            if a == b or b == 1:
                merged.append(a)
            elif a == 1:
                merged.append(b)
            else:
                listed = " and ".join(str(tuple(s)) for s in shapes)
                raise ValueError(
                    f"{name}: shapes {listed} cannot be broadcast together "
                    f"(axis sizes {a} and {b} differ and neither is 1); "
                    "reshape or slice the inputs so that each axis matches or is 1"
                )
        result = tuple(merged)
    return result


def check_broadcast(name, arrays, params) -> None:
    """Check that elementwise inputs broadcast, so the error names the operation and shapes."""
    first = arrays[0].shape
    for array in arrays[1:]:
        if array.shape != first:
            broadcast_shapes(name, [array.shape for array in arrays])
            return
