"""Lean ONNX graphs: onnxslim's optimizer first, then what it leaves to us: reshape targets fixed except the
batch axis, images in NHWC or NCHW with one layout change at most at each end, and ConvTranspose in a form
onnxruntime's CUDA provider runs. Every rewrite computes the same numbers; the exporter's parity check confirms it.
"""

import numpy as np
import onnx
from onnx import helper, numpy_helper

LAYOUTS = ("nhwc", "nchw")
DEFAULT_LAYOUT = "nhwc"
#: How a shape computed at run time shows in a graph; a lean graph has none of these.
DYNAMIC_SHAPE_OPS = ("Shape", "Gather", "Concat")
#: The two forms of a stride-2 "same" ConvTranspose. Both are exact; "slice" measured faster on the CPU (see
#: subpixel_conv_transpose) and keeps the Keras kernel as it is, so a release can map it bit for bit.
CONV_TRANSPOSE_FORMS = ("slice", "subpixel")
DEFAULT_CONV_TRANSPOSE = "slice"

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
    if conv_transpose == "subpixel":
        subpixel_conv_transpose(proto.graph)
    symmetric_conv_transpose(proto.graph)
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


def subpixel_conv_transpose(graph):
    """Rewrite each ConvTranspose whose output is exactly stride x its input (Keras' 'same') as a Conv to
    stride^2 x the channels and a DepthToSpace (the sub-pixel form): the same sums, in a different order.

    Measured on onnxruntime 1.32's CPU provider (conv_ae_fashion_mnist decoder, 2 threads), the sub-pixel
    form was slower than ConvTranspose + Slice, and it stores a rearranged kernel that a release cannot map
    back to the Keras weights; so it is an option (lean(conv_transpose="subpixel")), not the default.
    """
    nodes, changed = [], 0
    initializers = {t.name: t for t in graph.initializer}
    for node in graph.node:
        attrs = _attrs(node)
        weight = initializers.get(node.input[1]) if node.op_type == "ConvTranspose" and len(node.input) > 1 else None
        if weight is None or weight.dims.__len__() != 4 or attrs.get("group", 1) != 1 \
                or "output_shape" in attrs or any(attrs.get("output_padding", [0])) \
                or any(d != 1 for d in attrs.get("dilations", [1, 1])) or attrs.get("auto_pad", b"NOTSET") not in (
                    b"NOTSET", "NOTSET"):
            nodes.append(node)
            continue
        w = numpy_helper.to_array(weight)  # (in channels, out channels, kH, kW)
        c_in, c_out, k_h, k_w = w.shape
        strides = list(attrs.get("strides", [1, 1]))
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if len(set(strides)) != 1 or strides[0] < 2 or k_h - pads[0] - pads[2] != strides[0] \
                or k_w - pads[1] - pads[3] != strides[1]:
            nodes.append(node)
            continue
        s = strides[0]
        first_h, taps_h, map_h = _phase_taps(k_h, s, pads[0])
        first_w, taps_w, map_w = _phase_taps(k_w, s, pads[1])
        if first_h > 0 or first_w > 0 or taps_h - 1 + first_h < 0 or taps_w - 1 + first_w < 0:
            nodes.append(node)
            continue
        kernel = np.zeros((s * s * c_out, c_in, taps_h, taps_w), w.dtype)
        for py in range(s):
            for px in range(s):
                block = slice((py * s + px) * c_out, (py * s + px + 1) * c_out)  # DepthToSpace DCR order
                for th, kh in map_h[py].items():
                    for tw, kw in map_w[px].items():
                        kernel[block, :, th, tw] = w[:, :, kh, kw].T
        prefix = node.name + "__subpixel"
        inputs = [node.input[0], _add_initializer(graph, prefix + "_kernel", kernel)]
        if len(node.input) > 2 and node.input[2]:
            bias = numpy_helper.to_array(initializers[node.input[2]])
            inputs.append(_add_initializer(graph, prefix + "_bias", np.tile(bias, s * s)))
        phases = prefix + "_phases"
        nodes += [
            helper.make_node("Conv", inputs, [phases], name=prefix + "_conv", kernel_shape=[taps_h, taps_w],
                             pads=[-first_h, -first_w, taps_h - 1 + first_h, taps_w - 1 + first_w]),
            helper.make_node("DepthToSpace", [phases], [node.output[0]], name=prefix, blocksize=s, mode="DCR"),
        ]
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


def layout_transposes(proto):
    """{"input": n, "output": n, "inner": n}: Transposes that read a graph input, write a graph output, or neither."""
    graph = proto.graph
    inputs, outputs = {v.name for v in graph.input}, {v.name for v in graph.output}
    found = {"input": 0, "output": 0, "inner": 0}
    for node in graph.node:
        if node.op_type == "Transpose":
            where = "input" if node.input[0] in inputs else "output" if node.output[0] in outputs else "inner"
            found[where] += 1
    return found
