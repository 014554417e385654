"""Generate one CUDA kernel per fused region of a Plan, and launch them with CuPy.

Each kernel is an ``extern "C" __global__`` function with a grid-stride loop.
It reads each region input once per element (a size-1 input once per thread),
keeps every intermediate in registers, and writes each region output once.
A trailing sum or mean accumulates a per-thread partial in the loop, then a
block reduction in shared memory, then one ``atomicAdd`` per block into an
output that the launcher zeroes first. The order of the atomic additions
varies between runs, so such sums are not bitwise reproducible.
"""

from __future__ import annotations

import numpy

from gpuflow.compile.passes import Region, _size
from gpuflow.compile.plan import Plan

BLOCK_SIZE = 256

_C_TYPES = {"float32": "float", "float64": "double", "bool": "bool", "int64": "long long",
            "int32": "int"}

_BINARY = {"add": "({0} + {1})", "subtract": "({0} - {1})", "multiply": "({0} * {1})",
           "divide": "({0} / {1})", "less": "({0} < {1})", "less_equal": "({0} <= {1})",
           "greater": "({0} > {1})", "greater_equal": "({0} >= {1})",
           "equal": "({0} == {1})", "not_equal": "({0} != {1})",
           "logical_and": "({0} && {1})", "logical_or": "({0} || {1})",
           "power": "pow({0}, {1})",
           "maximum": "(({0} != {0} || {0} > {1}) ? {0} : {1})",
           "minimum": "(({0} != {0} || {0} < {1}) ? {0} : {1})"}

_UNARY = {"negative": "(-{0})", "square": "({0} * {0})", "sqrt": "sqrt({0})",
          "exp": "exp({0})", "log": "log({0})", "log1p": "log1p({0})", "tanh": "tanh({0})",
          "sin": "sin({0})", "cos": "cos({0})", "abs": "gf_abs({0})",
          "logical_not": "(!{0})", "identity": "{0}", "broadcast_to": "{0}",
          "sigmoid": "gf_sigmoid({0})", "softplus": "gf_softplus({0})",
          "sigmoid_partial": "gf_sigmoid_partial({0})",
          "relu": "(({0} != {0} || {0} > ({T})0) ? {0} : ({T})0)",
          "sign": "({0} != {0} ? {0} : ({T})(({0} > ({T})0) - ({0} < ({T})0)))"}

# Steps whose operands keep their own C types: C compares and tests mixed types as
# NumPy does. Every other step converts its operands to its result type first, so
# that int64 / int64 divides as doubles and exp of an integer finds one overload.
_OWN_TYPES = frozenset("less less_equal greater greater_equal equal not_equal logical_and "
                       "logical_or logical_not astype".split())

_HELPERS = """template <typename T> __device__ __forceinline__ T gf_abs(T x) {
    return x < (T)0 ? -x : x;
}
template <> __device__ __forceinline__ float gf_abs<float>(float x) { return fabsf(x); }
template <> __device__ __forceinline__ double gf_abs<double>(double x) { return fabs(x); }
template <typename T> __device__ __forceinline__ T gf_sigmoid(T x) {
    const T e = exp(-fabs(x));
    const T r = (T)1 / ((T)1 + e);
    return x >= (T)0 ? r : e * r;
}
template <typename T> __device__ __forceinline__ T gf_sigmoid_partial(T x) {
    const T e = exp(-fabs(x));
    const T r = (T)1 / ((T)1 + e);
    return e * r * r;
}
template <typename T> __device__ __forceinline__ T gf_softplus(T x) {
    return (x > (T)0 ? x : (T)0) + log1p(exp(-fabs(x)));
}
"""


def _c_type(dtype) -> str:
    name = numpy.dtype(getattr(dtype, "name", dtype)).name
    try:
        return _C_TYPES[name]
    except KeyError:
        raise TypeError(
            f"CUDA code generation does not support dtype {name}; use float32 or float64"
        ) from None


def _literal(array, c_type) -> str | None:
    # ``array`` is a one-element host copy of a plan constant.
    value = numpy.asarray(array).reshape(-1)[0]
    if c_type == "bool":
        return "true" if bool(value) else "false"
    if c_type in ("int", "long long"):
        return f"(({c_type}){int(value)})"
    value = float(value)
    if not numpy.isfinite(value):
        return None
    if c_type == "float":
        return format(float(numpy.float32(value)), ".9e") + "f"
    return format(value, ".17e")


def kernel_name(index: int) -> str:
    return f"gpuflow_region{index}"


def _expression(step, operands, c_type) -> str:
    name = step.name
    if name == "power" and "exponent" in step.params:
        exponent = step.params["exponent"]
        if exponent == 2:
            return f"({operands[0]} * {operands[0]})"
        return f"pow({operands[0]}, ({c_type}){float(exponent)!r})"
    if name == "where":
        return f"({operands[0]} ? {operands[1]} : {operands[2]})"
    if name == "astype":
        return f"(({c_type}){operands[0]})"
    if name in _BINARY:
        return _BINARY[name].format(*operands)
    return _UNARY[name].format(operands[0], T=c_type)


def _converted(name: str, dtype, c_type: str, step, position: int) -> str:
    """Return operand ``name`` converted to ``c_type`` where the step computes in that type."""
    if step.name in _OWN_TYPES or (step.name == "where" and position == 0):
        return name
    if _c_type(dtype) == c_type:
        return name
    return f"(({c_type}){name})"


def region_source(plan: Plan, region: Region, index: int) -> tuple[str, list]:
    """Return the kernel source of ``region`` and its parameters, in launch order.

    A parameter is ``("input", slot)``, ``("output", slot)``, ``("sum", slot)``
    or ``("count", None)``, the number of elements of the region's shape.
    """
    info = plan.all_info()
    names, lines, parameters, signature = {}, [], [], []
    for slot in region.inputs:
        shape, dtype = info[slot]
        c_type = _c_type(dtype)
        if slot in plan.constants and _size(shape) == 1:
            literal = _literal(plan.backend.to_numpy(plan.constants[slot]), c_type)
            if literal is not None:
                names[slot] = literal
                continue
        signature.append(f"const {c_type}* __restrict__ in{slot}")
        parameters.append(("input", slot))
        element = "i" if _size(shape) > 1 else "0"
        lines.append(f"        const {c_type} v{slot} = in{slot}[{element}];")
        names[slot] = f"v{slot}"
    reductions = []
    for step in region.steps:
        c_type = _c_type(step.dtype)
        if step.output in region.reductions:
            source = region.reductions[step.output]
            reductions.append((step, source, c_type))
            continue
        operands = [_converted(names[slot], info[slot][1], c_type, step, position)
                    for position, slot in enumerate(step.inputs)]
        lines.append(f"        const {c_type} v{step.output} = "
                     f"{_expression(step, operands, c_type)};")
        names[step.output] = f"v{step.output}"
    for slot in region.outputs:
        if slot in region.reductions:
            continue
        shape, dtype = info[slot]
        signature.append(f"{_c_type(dtype)}* __restrict__ out{slot}")
        parameters.append(("output", slot))
        if _size(shape) > 1:
            lines.append(f"        out{slot}[i] = v{slot};")
        else:
            lines.append(f"        if (i == 0) {{ out{slot}[0] = v{slot}; }}")
    for step, source, c_type in reductions:
        signature.append(f"{c_type}* __restrict__ sum{step.output}")
        parameters.append(("sum", step.output))
        lines.append(f"        partial{step.output} += v{source};")
    signature.append("long long count")
    parameters.append(("count", None))
    body = [f'extern "C" __global__ void {kernel_name(index)}(']
    body.append("    " + ",\n    ".join(signature) + ") {")
    for step, _, c_type in reductions:
        body.append(f"    {c_type} partial{step.output} = ({c_type})0;")
    body.append("    const long long stride = (long long)blockDim.x * gridDim.x;")
    body.append("    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;")
    body.append("         i < count; i += stride) {")
    body.extend(lines)
    body.append("    }")
    for step, source, c_type in reductions:
        body.extend(_block_reduction(step, c_type, info[source][0]))
    body.append("}")
    return "\n".join(body) + "\n", parameters


def _block_reduction(step, c_type, shape) -> list:
    slot = step.output
    scale = ""
    if step.name == "mean":
        scale = f" * (({c_type})1 / ({c_type}){_size(shape)})"
    return [
        "    {",
        f"        __shared__ {c_type} shared{slot}[{BLOCK_SIZE}];",
        f"        shared{slot}[threadIdx.x] = partial{slot};",
        "        __syncthreads();",
        f"        for (unsigned int half = {BLOCK_SIZE // 2}; half > 0; half >>= 1) {{",
        "            if (threadIdx.x < half) {",
        f"                shared{slot}[threadIdx.x] += shared{slot}[threadIdx.x + half];",
        "            }",
        "            __syncthreads();",
        "        }",
        "        if (threadIdx.x == 0) {",
        f"            atomicAdd(sum{slot}, shared{slot}[0]{scale});",
        "        }",
        "    }",
    ]


def generated_cuda_source(plan: Plan) -> str:
    """Return the CUDA source of every fused region of ``plan``, one kernel per region.

    The kernels assume blocks of ``BLOCK_SIZE`` threads. Regions that are not
    fused (a matmul, a partial sum) have no kernel and run the operation's own
    forward function.
    """
    if plan.regions is None:
        raise ValueError("the plan has no regions; run gpuflow.compile.passes.partition first")
    parts = [_HELPERS]
    for index, region in enumerate(plan.regions):
        if region.fused:
            try:
                parts.append(region_source(plan, region, index)[0])
            except TypeError as error:
                parts.append(f"// region {index} runs step by step: {error}\n")
    return "\n".join(parts)


class CupyProgram:
    """A partitioned Plan with one cupy.RawKernel per fused region.

    NOTE: this launcher has not run on a device in this repository's tests;
    the generated source is compiled with NVRTC in tests/test_compile.py.
    """

    def __init__(self, plan: Plan, cupy):
        self.plan = plan
        self.cupy = cupy
        self.info = plan.all_info()
        self.kernels = {}
        self.parameters = {}
        for index, region in enumerate(plan.regions):
            if not region.fused:
                continue
            try:
                source, parameters = region_source(plan, region, index)
            except TypeError:
                continue  # a dtype without a C type here (float16, int8): run step by step
            self.kernels[index] = cupy.RawKernel(_HELPERS + "\n" + source, kernel_name(index),
                                                 options=("--std=c++14",))
            self.parameters[index] = parameters

    def __call__(self, arrays):
        cupy = self.cupy
        plan = self.plan
        values = dict(plan.constants)
        for plan_input, array in zip(plan.inputs, arrays):
            values[plan_input.slot] = array
        for index, region in enumerate(plan.regions):
            if index not in self.kernels:
                for step in region.steps:
                    inputs = [values[slot] for slot in step.inputs]
                    values[step.output] = step.op.forward(plan.backend, *inputs, **step.params)
                continue
            count = _size(region.shape)
            arguments = []
            for kind, slot in self.parameters[index]:
                if kind == "input":
                    arguments.append(cupy.ascontiguousarray(values[slot]))
                elif kind == "count":
                    arguments.append(numpy.int64(count))
                else:
                    shape, dtype = self.info[slot]
                    make = cupy.zeros if kind == "sum" else cupy.empty
                    values[slot] = make(shape, dtype=dtype)
                    arguments.append(values[slot])
            blocks = max(1, min((count + BLOCK_SIZE - 1) // BLOCK_SIZE, 4096))
            self.kernels[index]((blocks,), (BLOCK_SIZE,), tuple(arguments))
        results, handed = [], set()
        for slot in plan.outputs:
            array = values[slot]
            if slot in handed or slot in plan.constants or slot in {i.slot for i in plan.inputs}:
                array = cupy.array(array, copy=True)
            handed.add(slot)
            results.append(array)
        return results
