"""What an exported model's graph may hold, checked before ONNX Runtime runs it.

An ``.onnx`` file handed to ``make plan`` is a program: a hostile or corrupt one could loop
without bound (``Loop``, ``Scan``), build a tensor of terabytes (a ``Resize`` by 10^4, a
convolution with 10^6 output channels) or call a custom operator. So before a session is created
the graph is read (never run) and refused, with one line naming the file and the problem, unless:

* every operator is one ``make export`` writes (``model_limits.ONNX_OPS``, default domain), at
  most ``MAX_GRAPH_NODES`` nodes, no weights in external files, no model-local functions or
  sparse initializers, no two tensors of one name (what ONNX Runtime would read differently);
* no node has two attributes of one name, and each attribute holds only the field its declared
  ``type`` names (FLOAT, INT, STRING, TENSOR, FLOATS or INTS): ONNX Runtime reads the first of
  two and the field of the type, so any other reading would check another graph than it runs;
* it has one float input ``(batch, 1, S, S)`` and the float outputs its JSON description names,
  ``(batch, C, S, S)``, ``S`` the description's ``input_size``;
* every tensor's shape at each batch from 1 to ``MAX_ONNX_BATCH`` (what ONNX Runtime may be
  given) follows from the graph (propagated here, node by node), has at most ``MAX_RANK``
  dimensions and holds at most ``MAX_TENSOR_ELEMENTS`` values per image; those alive at once
  for one image at most ``MAX_LIVE_ELEMENTS`` (and the predictor is told the largest batch
  within it); the convolutions, pooling and resizing need at most
  ``MAX_GRAPH_FLOP`` operations per image (a Resize output counts ``RESIZE_OPERATIONS``, cubic
  is refused); an ``Unsqueeze`` names each new axis once, a
  ``Squeeze`` only axes of size 1;
  a node computed from constants alone (folded and kept at load) outputs no more values than
  its largest input or ``MAX_FOLDED_ELEMENTS``.

Why not the ``onnx`` package's loader and shape inference: importing ``onnx`` (it loads
``ml_dtypes``) made a cold ``make plan`` with an exported model 1.3 s slower (2.9 vs 1.6 s,
measured), more than the check is worth. The file is parsed with a subset of ONNX's protobuf
schema (field numbers from onnx/onnx.proto; other fields are skipped), and shapes are propagated
only for the allowed operators, which is all this check needs. Where a shape depends on a
tensor's values (a ``Reshape`` target, ``Unsqueeze`` axes, ``Resize`` sizes), those values are
followed from constants and ``Shape`` through the arithmetic, but only for tensors of at most
``MAX_TRACKED_VALUES`` elements, a size checked before anything is computed: a larger one is
unknown here, and a shape that needs it refused (a checker that broadcast whatever it was given
held 3.2 GB for six dangling ``Mul`` nodes, and spent minutes on an ``Unsqueeze`` along 2^20
axes derived from ``Shape(image)``, eighth fuzz round).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from lightning_modules.model_limits import (
    MAX_FOLDED_ELEMENTS,
    MAX_GRAPH_FLOP,
    MAX_GRAPH_NODES,
    MAX_LIVE_ELEMENTS,
    MAX_ONNX_BATCH,
    MAX_TENSOR_ELEMENTS,
    MAX_TOTAL_ELEMENTS,
    ONNX_OPS,
    RESIZE_OPERATIONS,
)

# Values (shape vectors, scales, axes) are followed only for tensors this small (ours hold 4).
MAX_TRACKED_VALUES = 64
MAX_RANK = 8  # dimensions of any tensor (ours have 4; ONNX Runtime's kernels assume few)
FLOAT, INT64, EXTERNAL = 1, 7, 1  # TensorProto.FLOAT, TensorProto.INT64, DataLocation.EXTERNAL
_SCHEMA = {  # message -> [(field name, number, type, repeated, message type)]; from onnx.proto
    "Model": [("graph", 7, "msg", False, "Graph"), ("functions", 25, "bytes", True, None)],
    "Graph": [("node", 1, "msg", True, "Node"), ("initializer", 5, "msg", True, "Tensor"),
              ("input", 11, "msg", True, "ValueInfo"), ("output", 12, "msg", True, "ValueInfo"),
              ("sparse_initializer", 15, "bytes", True, None)],
    "Node": [("input", 1, "str", True, None), ("output", 2, "str", True, None),
             ("name", 3, "str", False, None), ("op_type", 4, "str", False, None),
             ("domain", 7, "str", False, None), ("attribute", 5, "msg", True, "Attribute")],
    # the value fields this check never reads (graphs, strings, ...) are kept as bytes only to
    # see that they are present: an attribute must hold the one field its ``type`` declares
    "Attribute": [("name", 1, "str", False, None), ("f", 2, "float", False, None),
                  ("i", 3, "int64", False, None), ("s", 4, "bytes", False, None),
                  ("t", 5, "msg", False, "Tensor"), ("g", 6, "bytes", False, None),
                  ("floats", 7, "float", True, None), ("ints", 8, "int64", True, None),
                  ("strings", 9, "bytes", True, None), ("tensors", 10, "bytes", True, None),
                  ("graphs", 11, "bytes", True, None), ("tp", 14, "bytes", False, None),
                  ("type_protos", 15, "bytes", True, None), ("type", 20, "int32", False, None),
                  ("ref_attr_name", 21, "str", False, None),
                  ("sparse_tensor", 22, "bytes", False, None),
                  ("sparse_tensors", 23, "bytes", True, None)],
    "Tensor": [("dims", 1, "int64", True, None), ("data_type", 2, "int32", False, None),
               ("float_data", 4, "float", True, None), ("int64_data", 7, "int64", True, None),
               ("name", 8, "str", False, None), ("raw_data", 9, "bytes", False, None),
               ("data_location", 14, "int32", False, None)],
    "ValueInfo": [("name", 1, "str", False, None), ("type", 2, "msg", False, "Type")],
    "Type": [("tensor_type", 1, "msg", False, "TensorType")],
    "TensorType": [("elem_type", 1, "int32", False, None), ("shape", 2, "msg", False, "Shape")],
    "Shape": [("dim", 1, "msg", True, "Dim")],
    "Dim": [("dim_value", 1, "int64", False, None), ("dim_param", 2, "str", False, None)],
}  # fmt: skip
_MODEL_CLASS: Any = None
# Attributes outside ``ONNX_OPS`` that are harmless when written at their ONNX default.
_DEFAULTS = {("Reshape", "allowzero"): 0, ("BatchNormalization", "training_mode"): 0,
             ("Resize", "keep_aspect_ratio_policy"): b"stretch", ("Resize", "antialias"): 0,
             ("Cast", "saturate"): 1, ("Conv", "auto_pad"): b"NOTSET",
             ("MaxPool", "auto_pad"): b"NOTSET"}  # fmt: skip
# AttributeProto.type -> the field that type reads (ONNX Runtime reads that field alone); the
# types make export writes. Other types (graphs, strings, sparse tensors) are refused.
_ATTR_FIELDS = {1: "f", 2: "i", 3: "s", 4: "t", 6: "floats", 7: "ints"}
_ATTR_TYPE_NAMES = {0: "UNDEFINED", 1: "FLOAT", 2: "INT", 3: "STRING", 4: "TENSOR", 5: "GRAPH",
                    6: "FLOATS", 7: "INTS", 8: "STRINGS", 9: "TENSORS", 10: "GRAPHS",
                    11: "SPARSE_TENSOR", 12: "SPARSE_TENSORS", 13: "TYPE_PROTO",
                    14: "TYPE_PROTOS"}  # fmt: skip
_SINGULAR_FIELDS = ("f", "i", "s", "t", "g", "tp", "sparse_tensor", "ref_attr_name")
_REPEATED_FIELDS = ("floats", "ints", "strings", "tensors", "graphs", "type_protos",
                    "sparse_tensors")


def _model_class() -> Any:
    """The protobuf class of the ONNX ``ModelProto`` subset above (built once, own package)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fdp = descriptor_pb2.FileDescriptorProto(name="kneeplan_onnx_subset.proto",
                                                 package="kneeplan_onnx_subset", syntax="proto2")
        kinds = {"msg": 11, "str": 9, "bytes": 12, "float": 2, "int64": 3, "int32": 5}
        for message, fields in _SCHEMA.items():
            m = fdp.message_type.add(name=message)
            for name, number, kind, repeated, ref in fields:
                f = m.field.add(name=name, number=number, type=kinds[kind], label=3 if repeated
                                else 1)  # fmt: skip
                if ref:
                    f.type_name = f".kneeplan_onnx_subset.{ref}"
        pool = descriptor_pool.DescriptorPool()
        pool.Add(fdp)
        _MODEL_CLASS = message_factory.GetMessageClass(
            pool.FindMessageTypeByName("kneeplan_onnx_subset.Model"))
    return _MODEL_CLASS


def _dims(value_info: Any) -> list[int | None]:
    """A graph input's or output's dimensions: ints where fixed, None where symbolic."""
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]  # fmt: skip


def _tensor_values(t: Any) -> np.ndarray | None:
    """Values of a small int64 or float tensor (shapes, scales); None for other tensors."""
    n = math.prod(t.dims)
    if n > MAX_TRACKED_VALUES or t.data_type not in (FLOAT, INT64):
        return None
    dtype = np.float32 if t.data_type == FLOAT else np.int64
    if t.raw_data:
        vals = np.frombuffer(t.raw_data, dtype=dtype)
    else:
        vals = np.array(t.float_data if t.data_type == FLOAT else t.int64_data, dtype=dtype)
    return vals.reshape(list(t.dims)) if vals.size == n else None


def _node_label(node: Any) -> str:
    """How an error names a node: its operator and its name (or, unnamed, its first output)."""
    if node.name:
        return f"{node.op_type:.40} node {node.name!r:.60}"
    return f"{node.op_type:.40} node writing {(node.output or [''])[0]!r:.60}"


def _attrs(node: Any) -> dict[str, Any]:
    """A node's attributes by name (ints/floats lists, int, float, bytes or tensor), each read
    from the field its declared ``type`` names, as ONNX Runtime reads it.

    ValueError for two attributes of one name (ONNX Runtime uses the first, a reader keeping the
    last would check another graph: a x1 Resize here ran x64 there, fifth fuzz round), for a
    type this check does not read, or for an attribute holding a field its type does not name.
    """
    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.name in out:
            raise ValueError(f"{_node_label(node)} has two attributes named {a.name!r:.40} "
                             "(ONNX Runtime reads the first, other readers the last)")
        kind = _ATTR_TYPE_NAMES.get(a.type, str(a.type))
        field = _ATTR_FIELDS.get(a.type)
        if field is None:
            raise ValueError(f"{_node_label(node)}: attribute {a.name!r:.40} of type {kind} (make "
                             "export writes FLOAT, INT, STRING, TENSOR, FLOATS or INTS only)")
        extra = [f for f in _SINGULAR_FIELDS if f != field and a.HasField(f)] + [
            f for f in _REPEATED_FIELDS if f != field and len(getattr(a, f))]
        if extra:
            raise ValueError(f"{_node_label(node)}: attribute {a.name!r:.40} is declared {kind} "
                             f"but holds {', '.join(extra)} (ONNX Runtime reads only the field "
                             "of the declared type)")
        value = getattr(a, field)
        out[a.name] = list(value) if field in ("floats", "ints") else value
    return out


def _window_out(size: int, k: int, stride: int, pad: int, dil: int, ceil: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis."""
    span = size + pad - dil * (k - 1) - 1
    return (-(-span // stride) if ceil else span // stride) + 1


def _infer(node: Any, shapes: dict[str, list[int]], values: dict[str, np.ndarray],
           batch: int = 1, attrs: dict[str, Any] | None = None) -> None:
    """Add the output shape (and small values) of one allowed node (the image's batch:
    ``batch``; its attributes ``attrs`` when already read); ValueError if unknowable or beyond
    the bounds at that batch."""
    op, a = node.op_type, _attrs(node) if attrs is None else attrs
    unknown = {k for k in set(a) - ONNX_OPS.get(op, frozenset())
               if _DEFAULTS.get((op, k), ...) != a[k]}  # written at its default: harmless
    if unknown:
        raise ValueError(f"{op} with attribute(s) {sorted(unknown)!r:.80} that this check does "
                         "not model")
    if len([o for o in node.output if o]) != 1:
        raise ValueError(f"{op} with {len(node.output)} outputs (one expected)")
    ins = [shapes.get(i) if i else None for i in node.input]
    x = ins[0] if ins else None

    def val(i: int) -> np.ndarray | None:
        return values.get(node.input[i]) if len(node.input) > i and node.input[i] else None

    if op == "Constant":
        if not hasattr(a.get("value"), "dims"):
            raise ValueError("a Constant without a tensor value")
        shape = list(a["value"].dims)
        v = _tensor_values(a["value"]) if len(shape) <= MAX_RANK else None
    elif x is None:
        raise ValueError(f"{op} reads a tensor the graph never defines")
    elif op in ("Identity", "Relu", "Sigmoid", "Cast", "InstanceNormalization",
                "BatchNormalization"):  # fmt: skip
        shape, v = x, val(0) if op == "Identity" else None
    elif op == "Shape":
        shape, v = [len(x)], np.array(x, dtype=np.int64)
    elif op in ("Add", "Sub", "Mul", "Div"):
        if len(ins) != 2 or ins[1] is None:
            raise ValueError(f"{op} needs two defined inputs")
        shape = list(np.broadcast_shapes(tuple(x), tuple(ins[1])))
        v0, v1 = val(0), val(1)
        v = None  # computed only when small: the broadcast is sized before it is made
        if v0 is not None and v1 is not None and op != "Div" and math.prod(
                shape) <= MAX_TRACKED_VALUES:
            v = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](v0, v1)
    elif op in ("Conv", "MaxPool"):
        if len(x) != 4:  # (auto_pad other than NOTSET is refused with the attributes)
            raise ValueError(f"{op} on a {len(x)}-d tensor")
        if op == "Conv":
            if len(ins) < 2 or ins[1] is None or len(ins[1]) != 4:
                raise ValueError("Conv without a 4-d weight")
            k, channels = ins[1][2:], ins[1][0]
            if ins[1][1] * int(a.get("group", 1)) != x[1] or a.get("kernel_shape", k) != k:
                raise ValueError(f"Conv weight {ins[1]} does not fit its input {x}")
        else:
            k, channels = a.get("kernel_shape", [1, 1]), x[1]
            if len(k) != 2 or math.prod(k) > 9:  # ORT pools at ~5e9 comparisons/s: keep it small
                raise ValueError(f"MaxPool with kernel {k} (at most 3 x 3 allowed)")
        strides, dil = a.get("strides", [1, 1]), a.get("dilations", [1, 1])
        pads = a.get("pads", [0, 0, 0, 0])
        ceil = bool(a.get("ceil_mode", 0))
        shape = [x[0], channels] + [
            _window_out(x[2 + i], k[i], max(strides[i], 1), pads[i] + pads[i + 2], dil[i], ceil)
            for i in range(2)
        ]
        v = None
    elif op == "Resize":
        if a.get("mode", b"nearest") not in (b"nearest", b"linear"):  # cubic: 6 M outputs/s,
            mode = a["mode"]
            mode = mode[:20].decode("ascii", "replace") if isinstance(mode, bytes) else mode
            raise ValueError(f"Resize mode {mode!r:.30} (make export writes nearest and "
                             "linear only)")  # 40x slower than linear: 80 pairs took 41 s
        scales, sizes = val(2), val(3)
        if sizes is not None and sizes.size == len(x):
            shape = [int(s) for s in sizes]
        elif scales is not None and scales.size == len(x):
            if not np.all(np.isfinite(scales)) or np.any(scales <= 0) or np.any(scales > 64):
                raise ValueError(f"Resize by {scales.tolist()} (factors in (0, 64] allowed)")
            shape = [int(math.floor(d * float(s))) for d, s in zip(x, scales, strict=True)]
        else:
            raise ValueError("Resize whose scales or sizes are not constants")
        v = None
    elif op == "Reshape":
        target = val(1)
        if target is None:
            raise ValueError("Reshape to a shape that is not known before running it")
        shape = [x[i] if int(t) == 0 else int(t) for i, t in enumerate(target.ravel())]
        if shape.count(-1) == 1:
            rest = math.prod(s for s in shape if s != -1)
            shape[shape.index(-1)] = math.prod(x) // rest if rest else 0
        if math.prod(shape) != math.prod(x):
            raise ValueError("Reshape that changes the number of values")
        v0 = val(0)
        v = v0.reshape(shape) if v0 is not None else None
    elif op == "Concat":
        axis = int(a.get("axis", 0)) % len(x)
        if any(s is None or len(s) != len(x) for s in ins):
            raise ValueError("Concat of undefined or mismatched tensors")
        shape = list(x)
        shape[axis] = sum(s[axis] for s in ins)  # type: ignore[index]
        parts = [val(i) for i in range(len(ins))]
        known = math.prod(shape) <= MAX_TRACKED_VALUES and all(p is not None for p in parts)
        v = np.concatenate(parts, axis=axis) if known else None
    elif op in ("Unsqueeze", "Squeeze"):
        n_axes = math.prod(ins[1]) if len(ins) > 1 and ins[1] is not None else len(
            a.get("axes", []))  # sized before any axis is read: 2^20 inserts took minutes
        if op == "Unsqueeze" and len(x) + n_axes > MAX_RANK:
            raise ValueError(f"Unsqueeze along {n_axes:,} axes of a {len(x)}-d tensor (at most "
                             f"{MAX_RANK} dimensions allowed)")
        if len(node.input) > 1 and node.input[1] and val(1) is None:
            raise ValueError(f"{op} along axes that are not known before running it")
        axes = val(1) if val(1) is not None else np.array(a.get("axes", []), dtype=np.int64)
        v0 = val(0)
        if op == "Unsqueeze":
            rank = len(x) + axes.size
            if any(not -rank <= int(i) < rank for i in axes.ravel()):
                raise ValueError(f"Unsqueeze along axes {axes.ravel().tolist()} outside "
                                 f"[-{rank}, {rank})")
            where = sorted(int(i) % rank for i in axes.ravel())
            if len(set(where)) != len(where):
                raise ValueError(f"Unsqueeze along axes {axes.ravel().tolist()} naming one axis "
                                 "twice")
            shape = list(x)
            for ax in where:
                shape.insert(ax, 1)
        else:  # Squeeze: as ONNX Runtime reads it, or refused (it would fail at run time)
            rank = len(x)
            if any(not -rank <= int(i) < rank for i in axes.ravel()):
                raise ValueError(f"Squeeze along axes {axes.ravel().tolist()} outside "
                                 f"[-{rank}, {rank})")
            where = {int(i) % rank for i in axes.ravel()}  # (ONNX Runtime: [1, -3] drops 1)
            if any(x[i] != 1 for i in where):
                raise ValueError(f"Squeeze along axes {axes.ravel().tolist()} of a {x} tensor "
                                 "(each must be of size 1)")
            drop = where or {i for i, d in enumerate(x) if d == 1}
            shape = [d for i, d in enumerate(x) if i not in drop]
        v = v0.reshape(shape) if v0 is not None else None
    else:  # pragma: no cover - ONNX_OPS and this function list the same operators
        raise ValueError(f"no shape rule for {op}")
    if len(shape) > MAX_RANK:
        raise ValueError(f"{op} output of {len(shape):,} dimensions (at most {MAX_RANK} allowed)")
    if any(not isinstance(d, int | np.integer) or d < 0 for d in shape):
        raise ValueError(f"{op} output of shape {shape} cannot be known before running it")
    if math.prod(shape) > MAX_TENSOR_ELEMENTS * batch:
        raise ValueError(f"{op} output would hold {math.prod(shape):,} values at batch {batch}, "
                         f"more than the {MAX_TENSOR_ELEMENTS:,} per image allowed")
    for name in node.output[:1]:
        shapes[name] = [int(d) for d in shape]
        if v is not None and v.size <= MAX_TRACKED_VALUES:  # (all rules keep it so: a guard)
            values[name] = v


def check_onnx_graph(path: str | Path, input_size: int, outputs: list[str],
                     data: bytes | None = None) -> int:
    """ValueError ``"<path>: <problem>"`` unless the graph passes every check of this module;
    else the largest batch (1 to ``MAX_ONNX_BATCH``) ONNX Runtime may be given at once.

    ``data``: the file's bytes when the caller already read them (the caller then hands the
    same bytes to ONNX Runtime, so the file cannot change between check and use).
    """
    try:
        model = read_model(path, data)
        graph = model.graph
        if model.functions or graph.sparse_initializer:  # counted, never parsed: not ours
            raise ValueError("model-local functions or sparse initializers are not accepted "
                             "(make export writes none; they could stand beside the checked "
                             "graph's own weights)")
        if not len(graph.node) or len(graph.node) > MAX_GRAPH_NODES:
            raise ValueError(f"{len(graph.node):,} nodes (1 to {MAX_GRAPH_NODES:,} allowed)")
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in ONNX_OPS:
                op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
                raise ValueError(f"operator {op!r:.60} is not one kneeplan exports (allowed: "
                                 f"{', '.join(sorted(ONNX_OPS))})")
            _attrs(node)  # one attribute per name, each of its declared type (before any is read)
        constants = [a.t for n in graph.node for a in n.attribute if a.HasField("t")]
        if any(t.data_location == EXTERNAL for t in (*graph.initializer, *constants)):
            raise ValueError("weights stored in external files are not accepted")
        try:
            return _check_graph(graph, int(input_size), list(outputs))
        except (IndexError, KeyError, TypeError, ZeroDivisionError, OverflowError) as err:
            raise ValueError(f"malformed graph ({type(err).__name__}: {str(err)[:80]})"
                             ) from None
    except ValueError as err:
        raise ValueError(f"{path}: {' '.join(str(err).split())}") from None


def read_model(path: str | Path, data: bytes | None = None) -> Any:
    """The ``ModelProto`` subset of an ONNX file or its bytes (ValueError when not one)."""
    model = _model_class()()
    try:
        model.ParseFromString(Path(path).read_bytes() if data is None else data)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ValueError(f"not an ONNX model ({type(err).__name__})") from None
    return model


def read_graph(path: str | Path, data: bytes | None = None) -> Any:
    """The ``GraphProto`` subset of an ONNX file or its bytes (ValueError when not one)."""
    return read_model(path, data).graph


def graph_shapes(graph: Any, size: int, batch: int = 1,
                 attrs: list[dict[str, Any]] | None = None) -> tuple[dict[str, list[int]], int]:
    """Every tensor's shape for a ``(batch, 1, size, size)`` input, and the operations of the
    convolutions, pooling and resizing; ValueError beyond the bounds (per image x ``batch``).
    ``attrs``: each node's attributes when already read (``_attrs``; read here otherwise)."""
    attrs = [_attrs(n) for n in graph.node] if attrs is None else attrs
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    if len(shapes) != len(graph.initializer):  # which copy a runtime uses is its choice
        raise ValueError("two initializers share a name")
    if any(len(d) > MAX_RANK for d in shapes.values()):
        raise ValueError(f"an initializer has more than {MAX_RANK} dimensions")
    values = {t.name: v for t in graph.initializer if (v := _tensor_values(t)) is not None}
    inputs = [i for i in graph.input if i.name not in shapes]
    if len(inputs) != 1:
        raise ValueError(f"the graph has {len(inputs)} inputs, expected one image")
    dims = _dims(inputs[0])
    if inputs[0].type.tensor_type.elem_type != FLOAT or len(dims) != 4 or dims[1:] != [1, size,
                                                                                        size]:
        raise ValueError(f"the graph's input is {dims}, expected float (batch, 1, {size}, "
                         f"{size}) as its description says")
    shapes[inputs[0].name] = [batch, 1, size, size]
    flop, total = 0, 0
    constant = {t.name for t in graph.initializer}  # tensors that do not depend on the image
    for node, node_attrs in zip(graph.node, attrs, strict=True):  # in topological order
        if node.output and node.output[0] in shapes:
            raise ValueError(f"{node.op_type} redefines tensor {node.output[0]!r:.60}")
        _infer(node, shapes, values, batch, node_attrs)
        out = math.prod(shapes[node.output[0]])
        total += out
        if node.op_type == "Constant" or all(i in constant for i in node.input if i):
            _check_folding(node, shapes, out)
            constant.add(node.output[0])
        if node.op_type == "Conv":
            flop += 2 * out * math.prod(shapes[node.input[1]][1:])
        elif node.op_type == "MaxPool":  # one comparison per window element
            flop += out * math.prod(node_attrs.get("kernel_shape", [1]))
        elif node.op_type == "Resize":  # 80 cubic up-and-down pairs of the image took 41 s
            flop += out * RESIZE_OPERATIONS
        if total > MAX_TOTAL_ELEMENTS * batch:
            raise ValueError(f"its tensors hold more than {MAX_TOTAL_ELEMENTS:,} values per "
                             "image in all")
    return shapes, flop


def peak_live_elements(graph: Any, shapes: dict[str, list[int]], constant: set[str]) -> int:
    """The most values that the image-dependent tensors hold at once while the nodes run in
    order, each kept from its node until its last reader (a graph output: to the end)."""
    last = {name: len(graph.node) for name in (o.name for o in graph.output)}
    for i, node in enumerate(graph.node):
        for name in node.input:
            if name and name not in constant:
                last[name] = max(last.get(name, i), i)
    ends: dict[int, int] = {}
    alive = peak = 0
    for i, node in enumerate(graph.node):
        name = node.output[0]
        if name not in constant:
            n, end = math.prod(shapes[name]), last.get(name, i)  # (never read: freed at once)
            alive += n
            ends[end] = ends.get(end, 0) + n
        peak = max(peak, alive)
        alive -= ends.pop(i, 0)
    return peak


def _check_folding(node: Any, shapes: dict[str, list[int]], out: int) -> None:
    """ValueError when a node computed from constants alone outputs more values than its
    largest input (or ``MAX_FOLDED_ELEMENTS``): ONNX Runtime computes such nodes once at load
    and keeps the result, so 14 Resizes of 64 x 64 constants held 3.6 GB (fourth fuzz round)."""
    largest = max((math.prod(shapes[i]) for i in node.input if i), default=0)
    if node.op_type != "Constant" and out > max(largest, MAX_FOLDED_ELEMENTS):
        raise ValueError(f"{node.op_type} computes {out:,} values from constants alone (more "
                         f"than its inputs hold and than {MAX_FOLDED_ELEMENTS:,}): kept in "
                         "memory by ONNX Runtime's constant folding")


def _check_graph(graph: Any, size: int, outputs: list[str]) -> int:
    """Signature against the description, then shapes and operations node by node at every
    batch ONNX Runtime may be given (shapes may depend on it); returns the largest batch, up to
    ``MAX_ONNX_BATCH``, whose tensors alive at once hold at most ``MAX_LIVE_ELEMENTS``."""
    declared = {o.name: o for o in graph.output}
    channels: dict[str, int] = {}
    attrs = [_attrs(n) for n in graph.node]  # read once for every batch
    constant = {t.name for t in graph.initializer}
    largest = 0
    for batch in range(1, MAX_ONNX_BATCH + 1):
        shapes, flop = graph_shapes(graph, size, batch, attrs)
        live = peak_live_elements(graph, shapes, constant)
        if live > MAX_LIVE_ELEMENTS:
            if batch == 1:
                raise ValueError(f"its tensors alive at once hold {live:,} values for one "
                                 f"image, more than the {MAX_LIVE_ELEMENTS:,} allowed")
            break  # larger batches are never run: the predictor splits them
        if flop > MAX_GRAPH_FLOP * batch:
            raise ValueError(f"its convolutions, pooling and resizing need {flop:.2e} operations "
                             f"at batch {batch}, more than the {MAX_GRAPH_FLOP:.0e} per image "
                             "allowed")
        for name in outputs:
            got = shapes.get(name)
            if name not in declared or got is None:
                raise ValueError(f"the graph has no output {name!r:.40} (its description lists "
                                 "it)")
            if declared[name].type.tensor_type.elem_type != FLOAT or len(got) != 4 or got[
                    0] != batch or got[2:] != [size, size] or channels.setdefault(
                    name, got[1]) != got[1]:  # fmt: skip
                raise ValueError(f"output {name!r:.40} has shape {got} at batch {batch}, "
                                 f"expected float ({batch}, C, {size}, {size})")
        largest = batch
    if unnamed := sorted(set(declared) - set(outputs)):  # e.g. lm_prev dropped from the JSON:
        raise ValueError(f"its description omits the graph's output(s) "  # its check would be
                         f"{', '.join(repr(n[:40]) for n in unnamed[:4])}")  # skipped silently
    return largest
