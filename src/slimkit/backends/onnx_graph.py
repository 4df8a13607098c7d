"""Clean-ups of an exported ONNX graph that change no output value and make the file smaller.

``torch.onnx`` writes what helps debugging: each node's source stack trace, module path and
class names, the exported program's signature, the shapes of intermediate values, a name for
every node and long names for every intermediate value. None of it is part of the model, and in a
quantized graph of many small QuantizeLinear/DequantizeLinear nodes it is a large share of the
bytes (over half of a QDQ digits CNN before this pass). :func:`compact` drops it, and removes
what a QDQ export contains that no runtime needs:

a re-quantization onto the grid the value is already on: ``DQ(q; s, z) -> Q(s, z) -> DQ(s, z)``
gives back exactly ``DQ(q; s, z)`` (quantize and dequantize are inverse on grid points), so the
second pair goes. It appears where a layer's output quantizer feeds the next layer's input
quantizer with the same (shared) scale.

It also drops attributes set to their spec default. Graph inputs and outputs keep their names
(callers feed and read them); every other value, initializers included, gets a short name.

A graph with control flow (early exits' ``If`` nodes) keeps its structure, and each weight that only
one branch reads moves into that branch (:func:`localize_subgraph_initializers`): ONNX Runtime's
NCHWc layout pass converts only convolutions whose weights are initializers of their own graph, so
with the exporter's outer-scope weights every convolution after the first exit ran the plain
``FusedConv`` kernel, about 3x slower (measured in ``benchmarks/dynamic.py --sections ort-paths``).
"""

from __future__ import annotations


def _constant(graph, name: str):
    """The numpy value of the initializer called ``name``, else None."""
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    return None


def _qparams(graph, node, cache: dict):
    """A Q/DQ node's (scale, zero point, axis) in a comparable form, or None where not constant."""
    key = tuple(node.input[1:3])
    if key not in cache:
        values = [_constant(graph, name) for name in key if name]
        cache[key] = None if any(v is None for v in values) else tuple(
            (v.dtype.str, v.shape, v.tobytes()) for v in values)
    if cache[key] is None:
        return None
    per_axis = len(cache[key][0][1]) > 0
    axis = next((a.i for a in node.attribute if a.name == "axis"), 1) if per_axis else None
    return cache[key], axis


def _remove_requantizations(graph) -> int:
    """Rewire consumers of ``Q -> DQ`` pairs that re-quantize a DQ's output on its own grid."""
    producer = {out: node for node in graph.node for out in node.output}
    outputs = {o.name for o in graph.output}
    cache: dict = {}
    removed = 0
    rename: dict[str, str] = {}
    for dq2 in graph.node:
        if dq2.op_type != "DequantizeLinear" or dq2.output[0] in outputs:
            continue
        q2 = producer.get(dq2.input[0])
        if q2 is None or q2.op_type != "QuantizeLinear":
            continue
        dq1 = producer.get(q2.input[0])
        if dq1 is None or dq1.op_type != "DequantizeLinear":
            continue
        params = [_qparams(graph, n, cache) for n in (dq1, q2, dq2)]
        if params[0] is None or params[0] != params[1] or params[1] != params[2]:
            continue
        rename[dq2.output[0]] = dq1.output[0]
        removed += 1
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name
    return removed


def _drop_dead_nodes(graph) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(n for n in node.input if n)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    used = {n for node in graph.node for n in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


# Attribute values the ONNX operator specs define as the default (an absent attribute means the
# same); ``None`` = every entry 1 (strides, dilations)
_DEFAULTS = {
    "Conv": {"group": 1, "auto_pad": b"NOTSET", "strides": None, "dilations": None},
    "MaxPool": {"auto_pad": b"NOTSET", "ceil_mode": 0, "storage_order": 0, "strides": None, "dilations": None},
    "AveragePool": {"auto_pad": b"NOTSET", "ceil_mode": 0, "count_include_pad": 0, "strides": None},
    "Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0},
    "QuantizeLinear": {"saturate": 1, "block_size": 0},
    "DequantizeLinear": {"block_size": 0},
}


def _drop_default_attributes(graph) -> None:
    """Remove attributes set to their spec default, and ``axis`` of per-tensor Q/DQ (unused)."""
    from onnx import helper

    for node in graph.node:
        defaults = _DEFAULTS.get(node.op_type, {})
        per_tensor = node.op_type in ("QuantizeLinear", "DequantizeLinear") and _is_scalar(graph, node.input[1])
        keep = []
        for attr in node.attribute:
            value = helper.get_attribute_value(attr)
            if attr.name in defaults:
                default = defaults[attr.name]
                if (default is None and isinstance(value, list) and all(v == 1 for v in value)) or value == default:
                    continue
            if per_tensor and attr.name == "axis":
                continue
            keep.append(attr)
        del node.attribute[:]
        node.attribute.extend(keep)


def _is_scalar(graph, name: str) -> bool:
    value = _constant(graph, name)
    return value is not None and value.ndim == 0


def _short_names(graph) -> None:
    """Name every value but the graph's inputs and outputs by a short counter (initializers
    ``c0, c1, ...``, intermediates ``v0, v1, ...``) and clear node names: the exporter's names
    (``val_12``, ``dequantize_per_channel_3``, module paths) are a large share of a small
    quantized graph's bytes and are not part of the model."""
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    new: dict[str, str] = {}
    for init in graph.initializer:
        if init.name not in keep:
            short = f"c{len(new)}"
            new[init.name] = short
            init.name = short
    count = 0
    for node in graph.node:
        node.ClearField("name")
        for i, name in enumerate(node.output):
            if name and name not in keep:
                new[name] = node.output[i] = f"v{count}"
                count += 1
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = new.get(name, name)


def unshare_zero_points(model) -> int:
    """Give every DequantizeLinear of a constant its own zero-point initializer; returns how many
    copies it made. For OpenVINO: the exporter stores equal zero points once, and where two
    weight DequantizeLinear nodes share one, ``openvino.convert_model`` leaves a runtime
    subtraction in front of both layers, which then run in float (digits-cnn int8 at batch 256 was
    1.5x slower than NNCF's model on OpenVINO before this, 1.01x after: benchmarks/quantization.py;
    tests/techniques/test_quantization_static.py checks the runtime precisions)."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3 or node.input[2] not in inits \
                or node.input[0] not in inits:
            continue
        name = node.input[2]
        if name in seen:
            copy = type(inits[name])()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}_{copies}"
            while copy.name in inits:
                copy.name += "_"
            graph.initializer.append(copy)
            inits[copy.name] = copy
            node.input[2] = copy.name
            copies += 1
        seen.add(node.input[2])
    return copies


def compact(model) -> int:
    """Apply every clean-up to an ``onnx.ModelProto`` in place; returns how many re-quantizations
    it removed. Subgraph-free graphs only (what torch.onnx writes for our models); a
    graph with control flow keeps its structure, loses debug metadata, and has each weight that
    only one branch reads moved into that branch (:func:`localize_subgraph_initializers`)."""
    graphs = [model.graph] + list(model.functions)
    for graph in graphs:
        for node in graph.node:
            del node.metadata_props[:]
            node.ClearField("doc_string")
    del model.graph.value_info[:]
    del model.graph.metadata_props[:]  # torch.export's graph signature and range constraints
    for value in [*model.graph.input, *model.graph.output]:
        del value.metadata_props[:]
    if any(a.g.node or a.graphs for node in model.graph.node for a in node.attribute):
        localize_subgraph_initializers(model.graph)
        return 0
    removed = _remove_requantizations(model.graph)
    _drop_dead_nodes(model.graph)
    _drop_default_attributes(model.graph)
    _short_names(model.graph)
    return removed


def _subgraphs(graph) -> list:
    return [g for node in graph.node for a in node.attribute for g in ([a.g] if a.HasField("g") else list(a.graphs))]


def _names_read(graph) -> set[str]:
    """Every value name ``graph``'s nodes (and their subgraphs, at any depth) read or return."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
    for sub in _subgraphs(graph):
        names |= _names_read(sub)
    return names


def localize_subgraph_initializers(graph) -> int:
    """Move each initializer of ``graph`` that its own nodes do not read and exactly one of its
    subgraphs does into that subgraph, recursively; returns how many moved. Values are unchanged
    (a subgraph sees outer-scope names and its own initializers alike), and ONNX Runtime then treats
    the weight as a constant of the branch: its layout passes (NCHWc convolutions) reach into it."""
    subs = _subgraphs(graph)
    if not subs:
        return 0
    own = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    readers = [_names_read(sub) for sub in subs]
    moved = 0
    for init in list(graph.initializer):
        if init.name in own:
            continue
        users = [sub for sub, names in zip(subs, readers) if init.name in names]
        if len(users) == 1:
            users[0].initializer.append(init)
            graph.initializer.remove(init)
            moved += 1
    return moved + sum(localize_subgraph_initializers(sub) for sub in subs)
