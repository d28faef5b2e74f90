"""Floating-point operations per image, counted from an ONNX graph (numpy and onnx only, no TensorFlow).

What is counted, per node of the main graph, with every shape taken at batch 1:
- MatMul: 2*M*K*N (times any leading batch dimensions of the output).
- Gemm: 2*M*K*N, plus M*N for the bias C when present (alpha and beta scaling are not counted).
- Conv: 2*Cout*Hout*Wout*(Cin/groups)*Kh*Kw (any number of spatial dimensions), plus Cout*Hout*Wout for a bias.
- ConvTranspose: 2*Cin*Hin*Win*(Cout/groups)*Kh*Kw, i.e. every input pixel times every kernel tap, counted on
  the input side: on the output side a stride-s layer only has Kh*Kw/s^2 taps per pixel on average, so the
  output-side formula would overcount by s^2. Plus Cout*Hout*Wout for a bias.
- Elementwise arithmetic and activations (ELEMENTWISE below): 1 per output element, whatever the function
  costs in instructions (Sigmoid and Exp count 1 like Add); variadic Sum/Max/Min/Mean count (inputs-1).
- Data movement and shape ops (MOVEMENT below): 0.
Any other op is not counted and is listed in `FlopCount.uncounted`, so a new op shows up instead of
silently counting 0. tf2onnx writes MatMul+Add for a Dense layer where other exporters write Gemm; both
count the same, 2*M*K*N + M*N.
"""

import dataclasses
import math

import numpy as np
import onnx
from onnx import shape_inference

from export.optimize import TAP_SUM_SUFFIX

ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Neg", "Abs", "Reciprocal", "Sqrt", "Exp", "Log", "Erf",
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Mish", "Clip", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos",
    "Sum", "Max", "Min", "Mean", "Where",
})
MOVEMENT = frozenset({
    "Reshape", "Flatten", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "Shape", "Size", "Cast", "CastLike", "Constant", "ConstantOfShape", "Expand", "Pad", "Tile", "Dropout",
    "DepthToSpace", "SpaceToDepth",
})
VARIADIC = frozenset({"Sum", "Max", "Min", "Mean"})
COUNTED = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose"}) | ELEMENTWISE | MOVEMENT


class FlopCountError(ValueError):
    """The graph's shapes cannot be determined, so its operations cannot be counted."""


@dataclasses.dataclass
class FlopCount:
    """Operations of one forward pass at `batch` images: total, by op type, and ops left uncounted."""

    total: int
    by_op: dict
    uncounted: dict  # op type -> number of nodes whose work is not counted
    batch: int = 1

    def to_dict(self):
        return {"flops": self.total, "batch": self.batch, "by_op": dict(self.by_op),
                "uncounted_ops": dict(self.uncounted)}


def _load(model):
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model))


def _static_batch(model, batch):
    """A copy with every symbolic input dimension fixed: the first to `batch`, others must not exist."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value > 0:
                continue
            if axis != 0:
                raise FlopCountError("input {!r} has a symbolic dimension {} at axis {}; only the batch axis (0) may "
                                     "be dynamic.".format(value.name, dim.dim_param or "?", axis))
            dim.Clear()
            dim.dim_value = batch
    return model


def _shapes_from(values):
    shapes = {}
    for value in values:
        t = value.type.tensor_type
        if not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if all(d is not None for d in dims):
            shapes[value.name] = tuple(dims)
    return shapes


def _inferred_shapes(model):
    try:
        inferred = shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except Exception:  # onnx raises several types; the onnxruntime fallback below still has a go
        inferred = model
    g = inferred.graph
    shapes = _shapes_from(list(g.input) + list(g.value_info) + list(g.output))
    shapes.update({i.name: tuple(i.dims) for i in g.initializer})
    return shapes


def _runtime_shapes(model, names):
    """Shapes of `names` by running the graph once on zeros with onnxruntime, for what inference missed."""
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {}
    for arg in session.get_inputs():
        dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
                 "tensor(int32)": np.int32, "tensor(float16)": np.float16}.get(arg.type, np.float32)
        feeds[arg.name] = np.zeros(arg.shape, dtype=dtype)
    wanted = [o.name for o in session.get_outputs()]
    return {name: tuple(value.shape) for name, value in zip(wanted, session.run(wanted, feeds))}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _node_flops(node, shape):
    """Operations of one node, or None when its op type is not counted."""
    op = node.op_type
    if op in MOVEMENT:
        return 0
    out = shape(node.output[0])
    if op == "MatMul":
        a = shape(node.input[0])
        return 2 * math.prod(out) * a[-1]
    if op == "Gemm":
        a = shape(node.input[0])
        k = a[0] if _attr(node, "transA", 0) else a[1]
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] and _attr(node, "beta", 1.0) != 0 else 0
        return 2 * math.prod(out) * k + bias
    if op in ("Conv", "ConvTranspose"):
        w = shape(node.input[1])
        bias = math.prod(out) if len(node.input) > 2 and node.input[2] else 0
        if TAP_SUM_SUFFIX in node.name:
            # export.optimize.split_head_conv's fixed one-hot sum: the additions it does are the ones the layer's
            # own Conv counted in its 2 x multiply-adds, which the taps Conv before it now counts; only its bias.
            return bias
        taps = math.prod(w[2:])
        if op == "Conv":
            # W is (Cout, Cin/groups, k...): each output element sums Cin/groups * taps products.
            return 2 * math.prod(out) * w[1] * taps + bias
        # W is (Cin, Cout/groups, k...): each input element is scattered to Cout/groups * taps outputs.
        return 2 * math.prod(shape(node.input[0])) * w[1] * taps + bias
    if op in ELEMENTWISE:
        inputs = len([i for i in node.input if i]) if op in VARIADIC else 2
        return math.prod(out) * max(1, inputs - 1)
    return None


def count_flops(model, batch=1):
    """Count the operations of `model` (a path or ModelProto) for `batch` images; see the module docstring."""
    model = _static_batch(_load(model), batch)
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type not in MOVEMENT]
    shapes = _inferred_shapes(model)
    needed = {name for n in nodes if n.op_type in COUNTED for name in (list(n.input[:2]) + [n.output[0]]) if name}
    missing = sorted(needed - set(shapes))
    if missing:
        shapes.update(_runtime_shapes(model, missing))

    def shape(name):
        try:
            return shapes[name]
        except KeyError:
            raise FlopCountError("no static shape for tensor {!r} at batch {}".format(name, batch)) from None

    by_op, uncounted = {}, {}
    for node in nodes:
        flops = _node_flops(node, shape)
        if flops is None:
            uncounted[node.op_type] = uncounted.get(node.op_type, 0) + 1
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + int(flops)
    return FlopCount(total=int(sum(by_op.values())), by_op=dict(sorted(by_op.items())), uncounted=uncounted,
                     batch=batch)


def flops_per_image(model):
    """Operations per image: the count at batch 1."""
    return count_flops(model, batch=1).total
