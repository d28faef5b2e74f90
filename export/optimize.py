"""Lean ONNX graphs: onnxslim's optimizer first, then what it leaves to us: reshape targets fixed except the
batch axis, images in NHWC or NCHW with one layout change at most at each end, transposed convolutions as
Convs onnxruntime runs at its Conv speed (or as ConvTranspose in a form its CUDA provider runs), and an image-
making head split so that it is not padded to 16 channels. Every rewrite computes the same numbers; the
exporter's parity check confirms it.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from export.layout import CONV_TRANSPOSE_FORMS

LAYOUTS = ("nhwc", "nchw")
DEFAULT_LAYOUT = "nhwc"
#: The forms of a stride-2 "same" ConvTranspose (CONV_TRANSPOSE_FORMS, from export.layout, which the command line
#: reads without onnx), both exact: "phases" (phase_conv_transpose) measured faster on the CPU in float32 and int8;
#: "slice" (symmetric_conv_transpose) keeps the ConvTranspose. Which is faster on a GPU is not measured yet.
DEFAULT_CONV_TRANSPOSE = CONV_TRANSPOSE_FORMS[0]
#: What the names of the nodes phase_conv_transpose writes hold.
PHASE_MARK = "__phase"

_INT64_MAX = np.iinfo(np.int64).max
_TO_NHWC, _TO_NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


class OptimizeError(ValueError):
    """A graph cannot be made lean: an option is unknown or the optimizer failed."""


def lean(proto, layout=DEFAULT_LAYOUT, conv_transpose=DEFAULT_CONV_TRANSPOSE):
    """The lean form of a tf2onnx graph whose image inputs and outputs are NHWC; returns a new ModelProto.

    layout="nchw" makes every 4-D graph input and output NCHW (the same names), so a caller with NCHW
    images needs no Transpose: the one tf2onnx put after the input cancels against ours.
    """
    if layout not in LAYOUTS:
        raise OptimizeError("Unknown layout {!r}; choose {}.".format(layout, " or ".join(LAYOUTS)))
    if conv_transpose not in CONV_TRANSPOSE_FORMS:
        raise OptimizeError("Unknown ConvTranspose form {!r}; choose {}.".format(
            conv_transpose, " or ".join(CONV_TRANSPOSE_FORMS)))
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    if layout == "nchw":
        _images_nchw(proto.graph)
    proto = slim(proto)
    static_reshapes(proto)
    if conv_transpose == "phases":
        phase_conv_transpose(proto)
    symmetric_conv_transpose(proto.graph)  # the ConvTransposes left, if any
    split_head_conv(proto.graph)
    prune(proto.graph)
    return _infer_shapes(proto)


def slim(proto):
    """onnxslim's constant folding, dead-code removal and pattern eliminations (Transpose pairs, Reshape
    chains, shape arithmetic on static dims)."""
    import onnxslim

    doc, props = proto.doc_string, list(proto.metadata_props)
    try:
        slimmed = onnxslim.slim(proto)
    except Exception as exc:  # onnxslim raises whatever its passes raise
        raise OptimizeError("onnxslim {} failed: {}: {}".format(
            onnxslim.__version__, type(exc).__name__, exc)) from None
    if not isinstance(slimmed, onnx.ModelProto):
        raise OptimizeError("onnxslim {} returned no model.".format(onnxslim.__version__))
    slimmed.doc_string = doc
    del slimmed.metadata_props[:]
    slimmed.metadata_props.extend(props)
    return slimmed


# --- helpers ---------------------------------------------------------------------------------------


def _consumers(graph, name):
    return [n for n in graph.node if name in n.input]


def _producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


def _constant(graph, name):
    """The value of an initializer or Constant node output, or None."""
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    node = _producer(graph, name)
    if node is not None and node.op_type == "Constant":
        for attr in node.attribute:
            if attr.name == "value":
                return numpy_helper.to_array(attr.t)
    return None


def _unique(graph, base):
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output} | \
            {v.name for v in graph.input} | {n.name for n in graph.node}
    name, i = base, 1
    while name in taken:
        name, i = "{}_{}".format(base, i), i + 1
    return name


def _add_initializer(graph, base, array):
    name = _unique(graph, base)
    graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return name


def _attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _dims(value):
    return [d.dim_param if d.HasField("dim_param") or not d.HasField("dim_value") else d.dim_value
            for d in value.type.tensor_type.shape.dim]


def _infer_shapes(proto):
    """Shapes of every tensor, fresh (rewrites leave stale value_info behind), the batch axis called by its
    name throughout: onnx's inference gives a Reshape to [-1, ...] a new unknown first axis, so where the
    Reshape keeps each item's size, its output is pinned to its input's batch axis and inference runs again."""
    del proto.graph.value_info[:]
    pinned = []
    for _ in range(len(proto.graph.node) + 1):
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        graph = inferred.graph
        known = {v.name: v for v in list(graph.value_info) + list(graph.input) + list(graph.output)}
        fix = None
        for node in graph.node:
            if node.op_type != "Reshape" or node.output[0] not in known or node.input[0] not in known:
                continue
            out, src = _dims(known[node.output[0]]), _dims(known[node.input[0]])
            if (not out or not src or isinstance(out[0], int) or isinstance(src[0], int) or out[0] == src[0]
                    or not all(isinstance(d, int) for d in out[1:] + src[1:])
                    or int(np.prod(out[1:])) != int(np.prod(src[1:]))):
                continue
            fix = onnx.ValueInfoProto.FromString(known[node.output[0]].SerializeToString())
            fix.type.tensor_type.shape.dim[0].Clear()
            fix.type.tensor_type.shape.dim[0].dim_param = src[0]
            break
        if fix is None:
            return inferred
        pinned.append(fix)
        del proto.graph.value_info[:]
        proto.graph.value_info.extend(pinned)
    return inferred


def _shapes(proto):
    inferred = _infer_shapes(onnx.ModelProto.FromString(proto.SerializeToString())).graph
    return {v.name: _dims(v) for v in list(inferred.value_info) + list(inferred.input) + list(inferred.output)}


# --- passes -----------------------------------------------------------------------------------------


def prune(graph):
    """Drop nodes whose outputs nobody reads and initializers no node reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        keep = [n for n in graph.node if any(o in read for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    read = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def topological_sort(graph):
    """Order the nodes so each comes after the producers of its inputs (the ONNX checker requires it; onnxruntime's
    float16 converter appends its input Casts at the end), keeping the given order where it is free."""
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise OptimizeError("The graph has a cycle or reads undefined tensors: {}".format(
                sorted({i for n in pending for i in n.input if i not in available})[:5]))
        for node in ready:
            available.update(node.output)
        ordered += ready
        pending = [n for n in pending if n not in ready]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


#: Elementwise ops of one input whose order with a Reshape does not change what the graph computes.
UNARY_ELEMENTWISE_OPS = ("Sigmoid", "Relu", "Tanh")


def reshape_last(graph):
    """Where a graph output is a Reshape of an elementwise activation read by nothing else, Reshape first: the
    activation then writes the output buffer itself, and onnxruntime runs a Reshape of an inner tensor as an
    alias, where a Reshape that makes a graph output copies every value (17% of the int8 ae decoder's time at
    batch 1024). Not for float32 graphs: there onnxruntime fuses the activation into the Gemm before it
    (FusedGemm), which beats a separate pass; in int8 the QGemm has no such fusion. Returns how many moved."""
    outputs = {o.name for o in graph.output}
    moved = 0
    for reshape in [n for n in graph.node if n.op_type == "Reshape" and n.output[0] in outputs]:
        act = _producer(graph, reshape.input[0])
        if (act is None or act.op_type not in UNARY_ELEMENTWISE_OPS or act.output[0] in outputs
                or len(_consumers(graph, act.output[0])) != 1):
            continue
        inner = _unique(graph, act.input[0] + "__reshaped")
        reshape.input[0], reshape.output[0], act.input[0], act.output[0] = \
            act.input[0], inner, inner, reshape.output[0]
        moved += 1
    if moved:
        topological_sort(graph)
    return moved


def static_reshapes(proto):
    """Give every Reshape whose target is computed at run time (tf2onnx's Shape, Gather, Cast, Concat chain
    for Flatten) the constant target [-1, d1, ...] from the inferred output shape, then drop the chain.

    Reshapes whose output has more than one unknown dimension are left alone."""
    graph = proto.graph
    dynamic = [n for n in graph.node if n.op_type == "Reshape" and _constant(graph, n.input[1]) is None]
    if not dynamic:
        return 0
    shapes = _shapes(proto)
    changed = 0
    for node in dynamic:
        dims = shapes.get(node.output[0])
        if dims is None or sum(not isinstance(d, int) or d <= 0 for d in dims) > 1:
            continue
        target = [d if isinstance(d, int) and d > 0 else -1 for d in dims]
        node.input[1] = _add_initializer(graph, node.name + "_static_shape", np.array(target, np.int64))
        changed += 1
    prune(graph)
    return changed


def _images_nchw(graph):
    """Make the 4-D graph inputs and outputs NCHW: a Transpose to NHWC after each input and one back before each
    output, for slim to cancel against tf2onnx's own."""
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        inner = _unique(graph, value.name + "__nhwc")
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        graph.node.insert(0, helper.make_node("Transpose", [value.name], [inner], perm=_TO_NHWC,
                                              name=_unique(graph, "layout_" + value.name)))
        _permute_dims(dims, _TO_NCHW)
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4:
            continue
        inner = _unique(graph, value.name + "__nhwc")
        for node in graph.node:
            for i, name in enumerate(node.output):
                if name == value.name:
                    node.output[i] = inner
            for i, name in enumerate(node.input):
                if name == value.name:
                    node.input[i] = inner
        graph.node.append(helper.make_node("Transpose", [inner], [value.name], perm=_TO_NCHW,
                                           name=_unique(graph, "layout_" + value.name)))
        _permute_dims(dims, _TO_NCHW)


def _permute_dims(dims, perm):
    copies = [onnx.TensorShapeProto.Dimension.FromString(d.SerializeToString()) for d in dims]
    for i, p in enumerate(perm):
        dims[i].CopyFrom(copies[p])


def symmetric_conv_transpose(graph):
    """Rewrite ConvTranspose nodes with asymmetric pads as an unpadded ConvTranspose and a Slice.

    Keras' stride-2 'same' transposed convolutions become ConvTranspose with pads [0, 0, 1, 1];
    onnxruntime's CUDA provider cannot run those and silently moves them to the CPU, with copies
    around them (the conv decoders ran at ~1% of the GPU's speed). Cropping after an unpadded
    ConvTranspose computes the same numbers; the parity check confirms it.
    """
    nodes, changed = [], 0
    for node in graph.node:
        attrs = {a.name: a for a in node.attribute}
        pads = attrs.get("pads")
        if node.op_type != "ConvTranspose" or pads is None or "output_shape" in attrs:
            nodes.append(node)
            continue
        half = len(pads.ints) // 2
        begins, ends = list(pads.ints[:half]), list(pads.ints[half:])
        if begins == ends:
            nodes.append(node)
            continue
        del pads.ints[:]
        pads.ints.extend([0] * (2 * half))
        cropped, node.output[0] = node.output[0], node.output[0] + "__uncropped"
        prefix = node.name + "__crop"
        starts = _add_initializer(graph, prefix + "_starts", np.array(begins, np.int64))
        stops = _add_initializer(graph, prefix + "_ends", np.array([-e if e else _INT64_MAX for e in ends], np.int64))
        axes = _add_initializer(graph, prefix + "_axes", np.arange(2, 2 + half, dtype=np.int64))
        nodes += [node, helper.make_node("Slice", [node.output[0], starts, stops, axes], [cropped], name=prefix)]
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return changed


def _phase_taps(kernel, stride, pad_begin):
    """For one spatial axis of a ConvTranspose whose output is `stride` times its input: the offsets of the
    input each output phase reads. Returns (first offset, number of taps, {phase: {tap: kernel index}})."""
    taps = {}
    for phase in range(stride):
        q = phase + pad_begin
        # y[s*m + phase] = sum over kernel index k = q - s*d of x[m + d] * w[k]
        taps[phase] = {(q - k) // stride: k for k in range(kernel) if (q - k) % stride == 0}
    offsets = [d for t in taps.values() for d in t]
    first = min(offsets)
    return first, max(offsets) - first + 1, {p: {d - first: k for d, k in t.items()} for p, t in taps.items()}


def _phase_form(node, initializers, shapes):
    """(kernel, bias or None, stride, taps along H, taps along W, input H, input W) of a ConvTranspose whose
    output is exactly stride x its input (Keras' 'same'), with static spatial input dims; else None."""
    attrs = _attrs(node)
    weight = initializers.get(node.input[1]) if node.op_type == "ConvTranspose" and len(node.input) > 1 else None
    if weight is None or len(weight.dims) != 4 or attrs.get("group", 1) != 1 or "output_shape" in attrs \
            or any(attrs.get("output_padding", [0])) or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
            or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    bias = None
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in initializers:
            return None
        bias = numpy_helper.to_array(initializers[node.input[2]])
    w = numpy_helper.to_array(weight)  # (in channels, out channels, kH, kW)
    strides, pads = list(attrs.get("strides", [1, 1])), list(attrs.get("pads", [0, 0, 0, 0]))
    dims = shapes.get(node.input[0]) or []
    if len(set(strides)) != 1 or strides[0] < 2 or min(pads) < 0 or w.shape[2] - pads[0] - pads[2] != strides[0] \
            or w.shape[3] - pads[1] - pads[3] != strides[1] or len(dims) != 4 \
            or not all(isinstance(d, int) and d > 0 for d in dims[2:]):
        return None
    return w, bias, strides[0], _phase_taps(w.shape[2], strides[0], pads[0]), \
        _phase_taps(w.shape[3], strides[0], pads[1]), dims[2], dims[3]


def phase_conv_transpose(proto):
    """Rewrite each ConvTranspose whose output is exactly stride x its input (Keras' 'same') as one Conv per
    output phase (stride^2 of them, each with only the kernel taps that reach its phase: no zeros, no extra
    multiply-adds) whose outputs are interleaved in NHWC by two Concats and a Reshape, between one Transpose
    to NHWC per phase and one back: the same sums, in a different order. A Relu that alone reads the
    ConvTranspose moves onto the phase convolutions, where onnxruntime fuses it.

    Why: onnxruntime's CPU provider runs ConvTranspose as a GEMM and a col2im at about a third of its Conv speed
    (conv_ae_fashion_mnist's decoder, 2 threads) and has no integer kernel for it, so int8 files left it float.
    The phase Convs run in its blocked-channel (NCHWc) and int8 (NHWC QLinearConv) kernels, and its layout
    optimizer cancels the Transposes against its own; a DepthToSpace there (NCHW only) cost more than the
    convolutions. conv_ae_fashion_mnist's decoder on a 2-core AMD EPYC (Zen 4), against the "slice" form
    (benchmarks/results/conv_transpose_forms/): int8 1.6-3.7x at batch >= 8, float32 0.95-1.54x; at batch 1,
    timed alternately in one process, int8 1.79x and float32 1.08x. int8's sq. error +1.44% of float32 (slice
    +1.2%).
    Returns the number of ConvTransposes rewritten."""
    graph = proto.graph
    if not any(n.op_type == "ConvTranspose" for n in graph.node):
        return 0
    try:
        shapes = _shapes(proto)
    except Exception:  # onnx's shape inference failed: leave the ConvTransposes to symmetric_conv_transpose
        return 0
    initializers, outputs = {t.name: t for t in graph.initializer}, {o.name for o in graph.output}
    nodes, dropped, changed = [], set(), 0
    for node in graph.node:
        form = _phase_form(node, initializers, shapes)
        if form is None:
            nodes.append(node)
            continue
        w, bias, s, (first_h, _, map_h), (first_w, _, map_w), height, width = form
        c_out = w.shape[1]
        base = (node.name or node.output[0]) + PHASE_MARK  # output names are unique; node names may be empty
        # Each phase's kernel rows run down by s from its first to a row below s, so every Slice ends past row 0.
        axes, steps, ends = (_add_initializer(graph, base + suffix, np.array(value, np.int64)) for suffix, value in (
            ("_axes", [2, 3]), ("_steps", [-s, -s]), ("_ends", [-_INT64_MAX, -_INT64_MAX])))
        readers = _consumers(graph, node.output[0])
        relu = readers[0] if len(readers) == 1 and readers[0].op_type == "Relu" \
            and node.output[0] not in outputs else None
        rows = []
        for py in range(s):
            row = []
            for px in range(s):
                taps_h, taps_w = sorted(map_h[py]), sorted(map_w[px])
                # Phase (py, px) reads input rows first_h + taps_h and columns first_w + taps_w, with kernel rows
                # map_h[py][taps_h[0]], that - s, ... (and columns likewise): a Slice of the kernel with step -s,
                # then (in, out) -> (out, in). The file keeps the layer's own kernel (a release maps it to Keras);
                # onnxruntime folds the Slice and Transpose into the phase kernel once, when the session starts.
                starts = [map_h[py][taps_h[0]], map_w[px][taps_w[0]]]
                top, left = first_h + taps_h[0], first_w + taps_w[0]
                bottom, right = first_h + taps_h[-1], first_w + taps_w[-1]
                name = _unique(graph, "{}{}{}".format(base, py, px))
                nodes += [
                    helper.make_node("Slice", [node.input[1], _add_initializer(graph, name + "_starts", np.array(
                        starts, np.int64)), ends, axes, steps], [name + "_taps"], name=name + "_taps"),
                    helper.make_node("Transpose", [name + "_taps"], [name + "_kernel"], perm=[1, 0, 2, 3],
                                     name=name + "_kernel")]
                inputs = [node.input[0], name + "_kernel"] + ([node.input[2]] if bias is not None else [])
                conv = name
                nodes.append(helper.make_node("Conv", inputs, [conv], name=conv, pads=[-top, -left, bottom, right],
                                              kernel_shape=[len(taps_h), len(taps_w)]))
                if relu is not None:
                    nodes.append(helper.make_node("Relu", [conv], [conv + "_relu"], name=conv + "_relu"))
                    conv += "_relu"
                nodes.append(helper.make_node("Transpose", [conv], [conv + "_nhwc"], perm=_TO_NHWC,
                                              name=conv + "_nhwc"))
                row.append(conv + "_nhwc")
            rows.append(_unique(graph, "{}_row{}".format(base, py)))
            # [N, H, W, s*C]: the row's phases side by side, which is [N, H, s*W, C] in memory.
            nodes.append(helper.make_node("Concat", row, [rows[-1]], axis=3, name=rows[-1]))
        joined = _unique(graph, base + "_rows")
        # [N, H, s*W, s*C] in memory is [N, s*H, s*W, C]: output row s*h + py follows row s*h + py - 1.
        nodes.append(helper.make_node("Concat", rows, [joined], axis=2, name=joined))
        shape = _add_initializer(graph, base + "_shape", np.array([-1, s * height, s * width, c_out], np.int64))
        nodes.append(helper.make_node("Reshape", [joined, shape], [joined + "_nhwc"], name=joined + "_reshape"))
        out = relu.output[0] if relu is not None else node.output[0]
        nodes.append(helper.make_node("Transpose", [joined + "_nhwc"], [out], perm=_TO_NCHW, name=base + "_nchw"))
        if relu is not None:
            dropped.add(id(relu))
        changed += 1
    nodes = [n for n in nodes if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    prune(graph)
    return changed


#: The name suffix of the fixed one-hot Conv that split_head_conv adds: it sums taps and learns nothing, so an
#: int8 file keeps it float with the layer it follows (export.precision).
TAP_SUM_SUFFIX = "__tap_sum"
#: Output channels up to which split_head_conv rewrites a Conv: a gray image's, the one case measured. (The one-hot
#: sum of an RGB head would cost 3 x 27 x 9 multiply-adds a pixel, mostly zeros; not measured.)
HEAD_MAX_CHANNELS = 1


def _heads(graph):
    """First outputs of the Convs that write a graph output through layers without weights only (a decoder's
    image); outputs, not node names, which may be empty."""
    producer = {o: n for n in graph.node for o in n.output}
    heads, seen, stack = set(), set(), [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "Conv":
            heads.add(node.output[0])
        elif node.op_type not in ("ConvTranspose", "Gemm", "MatMul"):
            stack.extend(node.input)
    return heads


def split_head_conv(graph):
    """Rewrite each k x k Conv (k > 1) to at most HEAD_MAX_CHANNELS output channels that makes a graph output
    through layers without weights (a decoder's image: _heads) as a 1 x 1 Conv to k*k*channels taps and a fixed
    one-hot k x k Conv that sums each output's taps with the original padding (and adds the bias): the same sums,
    in a different order.

    Why: onnxruntime's CPU provider computes a Conv in blocks of 16 output channels (NCHWc) and pads one output
    channel to 16: conv_ae_fashion_mnist's reconstruction layer, 0.4% of the decoder's multiply-adds, took 8.6%
    of its time (and 26% of the int8 decoder's, where it stays float). On a 2-core AMD EPYC (Zen 4), batch 256,
    after phase_conv_transpose, in one development session: float32 decoder 1,775 -> 1,878 images/s, int8
    4,804 -> 6,194.
    Returns the number of Convs rewritten."""
    initializers = {t.name: t for t in graph.initializer}
    heads = _heads(graph)
    nodes, changed = [], 0
    for node in graph.node:
        attrs = _attrs(node)
        weight = initializers.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if weight is None or node.output[0] not in heads or TAP_SUM_SUFFIX in node.name or len(weight.dims) != 4 \
                or attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])) \
                or any(d != 1 for d in attrs.get("strides", [1, 1])) \
                or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)  # (out channels, in channels, kH, kW)
        c_out, c_in, k_h, k_w = w.shape
        if c_out > HEAD_MAX_CHANNELS or k_h * k_w == 1:
            nodes.append(node)
            continue
        taps = k_h * k_w
        one_hot = np.zeros((c_out, c_out * taps, k_h, k_w), w.dtype)
        for o in range(c_out):
            for i in range(k_h):
                for j in range(k_w):
                    one_hot[o, o * taps + i * k_w + j, i, j] = 1
        base = node.name or node.output[0]
        name = _unique(graph, base + "__taps")
        # Tap (o, i, j): channel o * taps + i * k_w + j of the 1 x 1 Conv, whose kernel is the layer's own, moved
        # (onnxruntime folds the Transpose and Reshape once, when the session starts; a release maps the kernel).
        shape = _add_initializer(graph, name + "_shape", np.array([c_out * taps, c_in, 1, 1], np.int64))
        nodes += [helper.make_node("Transpose", [node.input[1]], [name + "_moved"], perm=[0, 2, 3, 1],
                                   name=name + "_moved"),
                  helper.make_node("Reshape", [name + "_moved", shape], [name + "_kernel"], name=name + "_kernel"),
                  helper.make_node("Conv", [node.input[0], name + "_kernel"], [name], name=name, kernel_shape=[1, 1])]
        sums = [name, _add_initializer(graph, base + TAP_SUM_SUFFIX + "_kernel", one_hot)] + list(node.input[2:])
        nodes.append(helper.make_node("Conv", sums, list(node.output), name=_unique(graph, base + TAP_SUM_SUFFIX),
                                      kernel_shape=[k_h, k_w], pads=list(attrs.get("pads", [0, 0, 0, 0]))))
        changed += 1
    del graph.node[:]
    graph.node.extend(nodes)
    if changed:
        prune(graph)
    return changed


# --- feeding graphs of either layout -----------------------------------------------------------------


def to_layout(images, layout):
    """NHWC images as the ONNX files of `layout` take them."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)) if layout == "nchw" else images


def from_layout(images, layout):
    """Images an ONNX file of `layout` gave, as NHWC."""
    return images.transpose(0, 2, 3, 1) if layout == "nchw" else images


# --- what a lean graph looks like ----------------------------------------------------------------------


def op_counts(proto):
    """{op type: number of nodes}."""
    counts = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def weight_values(graph):
    """Names of the initializers and of the tensors computed from them alone (onnxruntime folds those once,
    when a session starts): everything in the graph that does not depend on its inputs."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:  # in topological order
        if node.op_type == "Constant" or node.input and all(i in constant for i in node.input if i):
            constant.update(node.output)
    return constant


def layout_transposes(proto):
    """{"input": n, "output": n, "inner": n, "interleave": n, "weights": n}: Transposes that read a graph input,
    write a graph output, change the layout inside, interleave the phases of a transposed convolution
    (phase_conv_transpose: its NHWC form of DepthToSpace, which onnxruntime cancels against its own layout
    changes), or move weights (computed once, when a session starts)."""
    graph = proto.graph
    inputs, outputs = {v.name for v in graph.input}, {v.name for v in graph.output}
    constant = weight_values(graph)
    found = {"input": 0, "output": 0, "inner": 0, "interleave": 0, "weights": 0}
    for node in graph.node:
        if node.op_type == "Transpose":
            where = "weights" if node.input[0] in constant else "input" if node.input[0] in inputs \
                else "output" if node.output[0] in outputs else "interleave" if PHASE_MARK in node.name else "inner"
            found[where] += 1
    return found
