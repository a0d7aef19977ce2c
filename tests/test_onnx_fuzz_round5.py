"""Fifth fuzz round, exported models: a node with two attributes of one name, or an attribute
holding a field its declared type does not name, is refused before ONNX Runtime runs it (ONNX
Runtime reads the first of two and the declared type's field: a ``Constant`` with two ``value``
attributes ran a x64 ``Resize`` the check had propagated as x1, 5.6 GB); and an ONNX Runtime
failure while the network runs is the model's fault (one line naming the model file, status 2,
no log line of ONNX Runtime's own), not the image's (status 1)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_files import exported_tiny_model, phantom_images
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from planning import predict
from planning.onnx_graph import check_onnx_graph
from planning.predict import ModelOutputError, OnnxPredictor

SIZE = 32


def _graph(nodes, inits=(), channels: int = 4) -> onnx.ModelProto:
    """A one-input graph whose node writing ``seg`` is its output (batch, channels, S, S)."""
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])
    out = helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["batch", channels, SIZE, SIZE])
    g = helper.make_graph(nodes, "g", [inp], [out], initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _value(name: str, values: list[float]) -> AttributeProto:
    return helper.make_attribute(name, numpy_helper.from_array(np.array(values, np.float32)))


def _refused(tmp_path: Path, model: onnx.ModelProto) -> str:
    """The one-line refusal of ``model``, which names the file."""
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ValueError) as err:
        check_onnx_graph(path, SIZE, ["seg"])
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def _dup_resize_bomb(first: float, last: float) -> onnx.ModelProto:
    """Resize x``first`` (ONNX Runtime) / x``last`` (a reader keeping the last attribute), then
    back by the inverse: every shape such a reader propagates is unchanged."""
    up = helper.make_node("Constant", [], ["up_s"])
    up.attribute.extend([_value("value", [1, 1, first, first]),
                         _value("value", [1, 1, last, last])])
    down = helper.make_node("Constant", [], ["down_s"], name="down")
    down.attribute.extend([_value("value", [1, 1, 1 / first, 1 / first]),
                           _value("value", [1, 1, 1 / last, 1 / last])])
    w = numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "w")
    return _graph([up, down, helper.make_node("Conv", ["image", "w"], ["c"]),
                   helper.make_node("Resize", ["c", "", "up_s"], ["big"]),
                   helper.make_node("Resize", ["big", "", "down_s"], ["seg"])], [w])


def test_duplicate_attribute_resize_bomb_is_refused(tmp_path):
    msg = _refused(tmp_path, _dup_resize_bomb(64, 1))
    assert "Constant node writing 'up_s' has two attributes named 'value'" in msg, msg
    assert "ONNX Runtime reads the first" in msg, msg


def test_duplicate_attribute_on_a_named_node_is_refused(tmp_path):
    w = numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "w")
    conv = helper.make_node("Conv", ["image", "w"], ["seg"], name="stem", strides=[1, 1])
    conv.attribute.append(helper.make_attribute("strides", [2, 2]))
    msg = _refused(tmp_path, _graph([conv], [w]))
    assert "Conv node 'stem' has two attributes named 'strides'" in msg, msg


def _mistyped(kind: str) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "w")
    conv = helper.make_node("Conv", ["image", "w"], ["seg"], name="stem", strides=[1, 1])
    strides = conv.attribute[0]
    if kind == "int_with_ints":  # ONNX Runtime reads i (an INT), the old reader ints
        strides.type, strides.i = AttributeProto.INT, 1
        del strides.ints[:]
        strides.ints.extend([2, 2])
    elif kind == "ints_with_f":
        strides.f = 2.0
    elif kind == "no_type":
        strides.ClearField("type")
    elif kind == "graph_type":
        strides.type = AttributeProto.GRAPH
    elif kind == "concat_axis_with_f":  # ONNX Runtime concatenates along i = 1, the old reader 2
        axis = helper.make_attribute("axis", 1)
        axis.f = 2.0
        concat = helper.make_node("Concat", ["c", "c"], ["seg"], name="cat")
        concat.attribute.append(axis)
        conv = helper.make_node("Conv", ["image", "w"], ["c"], name="stem")
        w = numpy_helper.from_array(np.zeros((2, 1, 1, 1), np.float32), "w")
        return _graph([conv, concat], [w])
    return _graph([conv], [w])


@pytest.mark.parametrize(("kind", "words"), [
    ("int_with_ints", "Conv node 'stem': attribute 'strides' is declared INT but holds ints"),
    ("ints_with_f", "Conv node 'stem': attribute 'strides' is declared INTS but holds f"),
    ("no_type", "Conv node 'stem': attribute 'strides' of type UNDEFINED"),
    ("graph_type", "Conv node 'stem': attribute 'strides' of type GRAPH"),
    ("concat_axis_with_f", "Concat node 'cat': attribute 'axis' is declared INT but holds f"),
])  # fmt: skip
def test_attribute_holding_a_field_its_type_does_not_name_is_refused(tmp_path, kind, words):
    assert words in _refused(tmp_path, _mistyped(kind))


def test_well_typed_attributes_still_pass(tmp_path):
    path = tmp_path / "ok.onnx"
    path.write_bytes(_mistyped("none").SerializeToString())  # strides=[1, 1], type INTS
    check_onnx_graph(path, SIZE, ["seg"])
    model = _dup_resize_bomb(2, 2)  # one 'value' each: a x2 Resize and back is fine
    for node in model.graph.node:
        if node.op_type == "Constant":
            del node.attribute[1:]
    path.write_bytes(model.SerializeToString())
    check_onnx_graph(path, SIZE, ["seg"])


def _hostile_export(tmp_path_factory, tmp_path: Path, edit) -> Path:
    """The tiny exported model with ``edit(model)`` applied before its ``seg`` Sigmoid, and a
    description whose SHA-256 matches (an attacker writes both files)."""
    good = exported_tiny_model(tmp_path_factory)
    model = onnx.load(str(good))
    edit(model)
    path = tmp_path / "hostile.onnx"
    path.write_bytes(model.SerializeToString())
    meta = json.loads(good.with_suffix(".json").read_text())
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_suffix(".json").write_text(json.dumps(meta))
    return path


def _before_seg_sigmoid(model: onnx.ModelProto, nodes: list, out: str) -> None:
    """Insert ``nodes`` (the first reading the Sigmoid's input) before the seg Sigmoid, which
    then reads ``out``."""
    sig = next(n for n in model.graph.node if n.op_type == "Sigmoid" and n.output[0] == "seg")
    idx = list(model.graph.node).index(sig)
    nodes[0].input[0], sig.input[0] = sig.input[0], out  # (insert copies: edit before)
    for node in reversed(nodes):
        model.graph.node.insert(idx, node)


def _bomb(factor: float):
    """mk_onnx.py's ``dup_resize_bomb``: x``factor`` and back for ONNX Runtime, x1 for the old
    check, before the seg Sigmoid."""

    def edit(model: onnx.ModelProto) -> None:
        resize = next((n for n in model.graph.node if n.op_type == "Resize"), None)
        consts = []
        for out, first in (("bomb_up_s", factor), ("bomb_dn_s", 1 / factor)):
            c = helper.make_node("Constant", [], [out])
            c.attribute.extend([_value("value", [1, 1, first, first]),
                                _value("value", [1, 1, 1, 1])])
            consts.append(c)
        up = helper.make_node("Resize", ["?", "", "bomb_up_s"], ["bomb_up"])
        down = helper.make_node("Resize", ["bomb_up", "", "bomb_dn_s"], ["bomb_dn"])
        for r in (up, down):
            r.attribute.extend(copy.deepcopy(list(resize.attribute)) if resize else [])
        _before_seg_sigmoid(model, [up, down], "bomb_dn")
        for c in reversed(consts):
            model.graph.node.insert(0, c)

    return edit


def test_duplicate_attribute_bomb_through_make_plan_is_a_usage_error(tmp_path_factory, tmp_path,
                                                                     capfd):
    from planning.plan import main

    path = _hostile_export(tmp_path_factory, tmp_path, _bomb(16))  # x16: cheap on old code too
    image = phantom_images(tmp_path_factory)[0]
    capfd.readouterr()
    rc = main(["--image", str(image), "--ckpt", str(path), "--out", str(tmp_path / "o")])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert str(path) in err[0] and "'bomb_up_s'" in err[0] and "'value'" in err[0], err


def _batch_reshape(model: onnx.ModelProto) -> None:
    """A Reshape of the seg logits to a constant batch-1 shape: right at batch 1, an ONNX
    Runtime error at the TTA batch (a stand-in for any run failure, such as the bad_alloc of
    the fifth round). Since round 10 the check propagates every batch up to MAX_ONNX_BATCH and
    refuses it at load; the tests of the run-time path replace the check by one that passes
    it for batches of 4."""
    size = model.graph.input[0].type.tensor_type.shape.dim[2].dim_value
    target = numpy_helper.from_array(np.array([1, 4, size, size], np.int64), "batch1_shape")
    model.graph.initializer.append(target)
    _before_seg_sigmoid(model, [helper.make_node("Reshape", ["?", "batch1_shape"], ["batch1"],
                                                 name="batch1")], "batch1")


def test_a_graph_wrong_at_a_larger_batch_is_refused_at_load(tmp_path_factory, tmp_path):
    path = _hostile_export(tmp_path_factory, tmp_path, _batch_reshape)
    with pytest.raises(ValueError, match="Reshape that changes the number of values"):
        OnnxPredictor(path)


def test_onnx_runtime_failure_while_running_is_a_model_error(tmp_path_factory, tmp_path,
                                                             capfd, monkeypatch):
    path = _hostile_export(tmp_path_factory, tmp_path, _batch_reshape)
    monkeypatch.setattr(predict, "check_onnx_graph", lambda *a: 4)  # a check blind to it
    pred = OnnxPredictor(path)  # passes every check: right at batch 1
    s = pred.image_size
    assert pred.predict_maps(np.zeros((1, 1, s, s), np.float32))["seg"].shape == (1, 4, s, s)
    capfd.readouterr()
    with pytest.raises(ModelOutputError, match=r"ONNX Runtime failed running it .*Reshape"):
        pred.predict_maps(np.zeros((2, 1, s, s), np.float32))
    assert capfd.readouterr().err == ""  # ONNX Runtime's own coloured log line is not printed


def test_onnx_runtime_failure_in_make_plan_is_status_2_in_one_line(tmp_path_factory, tmp_path,
                                                                   capfd, monkeypatch):
    from planning.plan import main

    path = _hostile_export(tmp_path_factory, tmp_path, _batch_reshape)
    monkeypatch.setattr(predict, "check_onnx_graph", lambda *a: 4)  # a check blind to it
    images = phantom_images(tmp_path_factory)
    capfd.readouterr()
    rc = main(["--image", str(images[0]), "--ckpt", str(path), "--out", str(tmp_path / "o")])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, (rc, err)
    assert err[0].startswith(f"plan: error: unusable model {path}: ONNX Runtime failed"), err
    assert "\x1b" not in err[0] and "[E:onnxruntime" not in err[0], err
    rc = main(["--image", str(images[0].parent), "--ckpt", str(path), "--out",
               str(tmp_path / "batch"), "--workers", "1"])  # batch mode: the model's fault too
    err = capfd.readouterr().err
    assert rc == 2 and "[E:onnxruntime" not in err and f"unusable model {path}" in err, (rc, err)


def test_a_bad_image_is_still_status_1_with_an_onnx_model(tmp_path_factory, tmp_path, capfd):
    from planning.plan import main

    path = exported_tiny_model(tmp_path_factory)
    image = tmp_path / "noise.png"
    image.write_bytes(np.random.default_rng(0).bytes(2048))
    capfd.readouterr()
    rc = main(["--image", str(image), "--ckpt", str(path), "--out", str(tmp_path / "o")])
    err = capfd.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and str(image) in err[0], (rc, err)
