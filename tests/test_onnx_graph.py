"""Exported graphs are read before ONNX Runtime runs them: the shapes propagated by
``planning.onnx_graph`` equal the ``onnx`` package's own shape inference (an independent
implementation) for every norm and stack count, the FLOP count equals torch's flop counter, and
hostile graphs (loops, custom operators, giant tensors, unknowable shapes, external weights,
signatures that disagree with the description) are refused with one line naming the file."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from model_files import exported_tiny_model, phantom_images
from onnx import TensorProto, helper, numpy_helper

from lightning_modules.model_limits import RESIZE_OPERATIONS
from lightning_modules.shgn import MultiTaskSHGN
from planning.export import _ExportNet
from planning.onnx_graph import check_onnx_graph, graph_shapes, read_graph
from planning.predict import load_predictor

SIZE = 32


def _export(net: torch.nn.Module, path, size: int) -> list[str]:
    names = ["seg", "lm", "roi", "lm_prev"][: 4 if net.num_stacks > 1 else 3]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_ExportNet(net.eval()), (torch.zeros(2, 1, size, size),), str(path),
                          input_names=["image"], output_names=names,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                          opset_version=18, dynamo=False)  # fmt: skip
    return names


def _tiny(norm: str, stacks: int) -> MultiTaskSHGN:
    torch.manual_seed(0)
    return MultiTaskSHGN(stem_channels=8, stem_residual_channels=16, hourglass_channels=32,
                         num_stacks=stacks, depth=1, norm=norm)  # fmt: skip


@pytest.mark.parametrize("norm", ["instance", "batch", "group", "none"])
@pytest.mark.parametrize("stacks", [1, 2])
def test_shapes_equal_onnx_shape_inference(tmp_path, norm, stacks):
    path = tmp_path / "m.onnx"
    names = _export(_tiny(norm, stacks), path, SIZE)
    check_onnx_graph(path, SIZE, names)  # our own exports pass
    ours, _ = graph_shapes(read_graph(path), SIZE)
    model = onnx.load(str(path))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    theirs = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output)}  # fmt: skip
    outputs = [o for n in model.graph.node for o in n.output]
    assert outputs and all(ours[o] == theirs[o] for o in outputs), [
        (o, ours.get(o), theirs.get(o)) for o in outputs if ours.get(o) != theirs.get(o)]


def test_flop_count_equals_torch_flop_counter(tmp_path):
    from torch.utils.flop_counter import FlopCounterMode

    net = _tiny("instance", 1)  # one stack: every convolution feeds an exported output
    path = tmp_path / "m.onnx"
    _export(net, path, 64)
    graph = read_graph(path)
    shapes, flop = graph_shapes(graph, 64)
    pooling = sum(int(np.prod(shapes[n.output[0]])) * 4 for n in graph.node
                  if n.op_type == "MaxPool")  # 2 x 2 windows: one comparison per element
    resizing = sum(int(np.prod(shapes[n.output[0]])) * RESIZE_OPERATIONS for n in graph.node
                   if n.op_type == "Resize")
    assert pooling > 0 and resizing > 0
    flop -= pooling + resizing  # torch's counter counts convolutions and matrix products only
    with FlopCounterMode(display=False) as fc:  # autograd on: the ops of training
        net(torch.zeros(1, 1, 64, 64))
    counts = fc.get_flop_counts()["Global"]
    # the full-resolution 1x1 layers run as (b)addbmm in torch (pointwise_conv.py), Conv in ONNX
    conv = sum(v for k, v in counts.items() if "convolution" in str(k) or "bmm" in str(k))
    assert conv > 0 and flop == conv


def _graph(nodes, inits=(), size=SIZE, out_shape=None, outputs=("seg",), opset=18,
           domains=()):  # fmt: skip
    """A one-input graph whose node outputs named in ``outputs`` are the graph outputs."""
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, size, size])
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, out_shape or ["batch", 4, size,
                                                                              size])
            for o in outputs]  # fmt: skip
    g = helper.make_graph(nodes, "g", [inp], outs, initializer=list(inits))
    ops = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(g, opset_imports=ops)


def _conv_graph(channels: int = 4):
    w = numpy_helper.from_array(np.zeros((channels, 1, 1, 1), np.float32), "w")
    return _graph([helper.make_node("Conv", ["image", "w"], ["seg"])], [w])


def _hostile(kind: str):
    if kind == "loop":
        body = helper.make_graph([helper.make_node("Identity", ["cond"], ["cond_out"])], "body",
                                 [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                  helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                                 [helper.make_tensor_value_info("cond_out", TensorProto.BOOL,
                                                                [])])  # fmt: skip
        trip = numpy_helper.from_array(np.array(10**15, np.int64), "trip")
        return _graph([helper.make_node("Loop", ["trip", ""], [], body=body),
                       helper.make_node("Relu", ["image"], ["seg"])], [trip])
    if kind == "custom":
        return _graph([helper.make_node("Evil", ["image"], ["seg"], domain="com.evil")],
                      domains=["com.evil"])
    if kind == "resize":
        scales = numpy_helper.from_array(np.array([1, 4, 1000, 1000], np.float32), "scales")
        return _graph([helper.make_node("Resize", ["image", "", "scales"], ["seg"])], [scales])
    if kind == "resize_sizes":
        sizes = numpy_helper.from_array(np.array([1, 4, 32000, 32000], np.int64), "sizes")
        return _graph([helper.make_node("Resize", ["image", "", "", "sizes"], ["seg"])], [sizes])
    if kind == "runtime_axes":  # axes computed at run time: its real output could be N x N
        one = numpy_helper.from_array(np.array([1.0], np.float32), "one")
        return _graph([helper.make_node("Cast", ["one"], ["ax"], to=TensorProto.INT64),
                       helper.make_node("Unsqueeze", ["image", "ax"], ["seg"])], [one])
    if kind == "shape_start":
        return _graph([helper.make_node("Shape", ["image"], ["s"], start=2),
                       helper.make_node("Reshape", ["image", "s"], ["seg"])])
    if kind == "resize_policy":
        sizes = numpy_helper.from_array(np.array([1, 1, 32, 256], np.int64), "sizes")
        return _graph([helper.make_node("Resize", ["image", "", "", "sizes"], ["seg"],
                                        keep_aspect_ratio_policy="not_smaller")], [sizes])
    if kind == "pool_kernel":
        return _graph([helper.make_node("MaxPool", ["image"], ["seg"], kernel_shape=[64, 64],
                                        pads=[32, 32, 31, 31])])  # fmt: skip
    if kind == "many_copies":  # each tensor allowed alone, together 10 GB if all kept alive
        scales = numpy_helper.from_array(np.array([1, 8, 32, 32], np.float32), "scales")
        nodes = [helper.make_node("Resize", ["image", "", "scales"], ["big"])]
        nodes += [helper.make_node("Relu", ["big"], [f"r{i}"]) for i in range(300)]
        nodes += [helper.make_node("Relu", ["image"], ["seg"])]
        return _graph(nodes, [scales])
    if kind == "constant_external":
        t = numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "w")
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value="secret.bin")
        return _graph([helper.make_node("Constant", [], ["w"], value=t),
                       helper.make_node("Conv", ["image", "w"], ["seg"])])
    if kind == "short_pads":
        w = numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "w")
        return _graph([helper.make_node("Conv", ["image", "w"], ["seg"], pads=[0, 0])], [w])
    if kind == "wide_conv":
        return _conv_graph(channels=10**6)  # 4 MB of weights, 10^9 output values at 32 px
    if kind == "runtime_reshape":
        return _graph([helper.make_node("Shape", ["image"], ["s"]),
                       helper.make_node("Div", ["s", "s"], ["s2"]),  # values not propagated
                       helper.make_node("Reshape", ["image", "s2"], ["seg"])])
    if kind == "external":
        model = _conv_graph()
        w = model.graph.initializer[0]
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        w.external_data.add(key="location", value="../../etc/passwd")
        return model
    if kind == "wrong_size":
        return _graph([helper.make_node("Relu", ["image"], ["seg"])], size=64)
    if kind == "missing_output":
        return _graph([helper.make_node("Relu", ["image"], ["other"])], outputs=("other",))
    if kind == "unnamed_output":  # an lm_prev the description leaves out: its check is skipped
        return _graph([helper.make_node("Relu", ["image"], ["seg"]),
                       helper.make_node("Relu", ["image"], ["lm_prev"])],
                      outputs=("seg", "lm_prev"))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, words", [
    ("loop", "operator 'Loop' is not one kneeplan exports"),
    ("custom", "operator 'com.evil::Evil'"),
    ("resize", "Resize by [1.0, 4.0, 1000.0, 1000.0] (factors in (0, 64] allowed)"),
    ("resize_sizes", "Resize output would hold 4,096,000,000 values"),
    ("runtime_axes", "Unsqueeze along axes that are not known before running it"),
    ("shape_start", "Shape with attribute(s) ['start'] that this check does not model"),
    ("resize_policy", "attribute(s) ['keep_aspect_ratio_policy']"),
    ("pool_kernel", "MaxPool with kernel [64, 64] (at most 3 x 3 allowed)"),
    ("many_copies", "its tensors hold more than 2,147,483,648 values per image in all"),
    ("constant_external", "weights stored in external files"),
    ("short_pads", "malformed graph (IndexError"),
    ("wide_conv", "Conv output would hold 1,024,000,000 values"),
    ("runtime_reshape", "Reshape to a shape that is not known"),
    ("external", "weights stored in external files"),
    ("wrong_size", "expected float (batch, 1, 32, 32)"),
    ("missing_output", "no output 'seg'"),
    ("unnamed_output", "its description omits the graph's output(s) 'lm_prev'"),
])  # fmt: skip
def test_hostile_graphs_are_refused(tmp_path, kind, words):
    path = tmp_path / "hostile.onnx"
    path.write_bytes(_hostile(kind).SerializeToString())
    with pytest.raises(ValueError) as err:
        check_onnx_graph(path, SIZE, ["seg"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and words in msg, msg


def test_a_plain_graph_of_allowed_operators_passes(tmp_path):
    path = tmp_path / "ok.onnx"
    path.write_bytes(_conv_graph().SerializeToString())
    check_onnx_graph(path, SIZE, ["seg"])  # the positive control of the cases above


def test_not_an_onnx_file_is_refused(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ValueError, match=r"noise.onnx: (not an ONNX model|0 nodes)"):
        check_onnx_graph(path, SIZE, ["seg"])


def test_hostile_graph_through_make_plan_is_a_usage_error(tmp_path_factory, tmp_path, capsys):
    from planning.plan import main

    good = exported_tiny_model(tmp_path_factory)
    meta = json.loads(good.with_suffix(".json").read_text())
    size = int(meta["input_size"])
    model = _graph([helper.make_node("Loop", ["image", ""], [])]
                   + [helper.make_node("Relu", ["image"], [n]) for n in meta["outputs"]],
                   size=size, out_shape=["batch", 2, size, size], outputs=meta["outputs"])
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    hashed = {**meta, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # as an
    path.with_suffix(".json").write_text(json.dumps(hashed))  # attacker would write it
    with pytest.raises(ValueError, match="Loop"):
        load_predictor(path)
    image = phantom_images(tmp_path_factory)[0]
    assert main(["--image", str(image), "--ckpt", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Loop" in err[0] and str(path) in err[0], err
