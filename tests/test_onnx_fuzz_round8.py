"""Eighth fuzz round, exported models: the graph check follows the values of shape-like tensors
(derived from ``Shape(image)``, so never folded constants) only while they are small. An
``Unsqueeze`` along 2^20 axes (``Shape`` values multiplied up, zeroed by ``Sub(x, x)``) kept
``make plan`` inside the check for minutes (one list insert per axis, quadratic); six dangling
``Mul`` nodes of (65536, 1) x (1, 1024) such values made the check hold 3.2 GB. Now an
``Unsqueeze`` is sized from its axes tensor's shape before any axis is read, no tensor has more
than 8 dimensions or names one new axis twice, and a value is computed only when it holds at
most 64 elements (a larger one is unknown to the check, as a runtime-computed one is)."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_files import REPO, exported_tiny_model, phantom_images
from onnx import TensorProto, helper, numpy_helper

from planning import onnx_graph
from planning.onnx_graph import check_onnx_graph
from tests.test_onnx_fuzz_round5 import _hostile_export, _refused

SIZE = 32
TRACKED = 64  # the most values the check follows for one tensor (as for small initializers)


def _graph(nodes: list, inits: list) -> onnx.ModelProto:
    """A one-input graph: ``seg`` = a 1 x 1 convolution of the image to 4 channels, then
    ``nodes`` (dangling: their outputs are no graph output, as in the red team's files)."""
    inp = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])
    out = helper.make_tensor_value_info("seg", TensorProto.FLOAT, ["batch", 4, SIZE, SIZE])
    w = numpy_helper.from_array(np.zeros((4, 1, 1, 1), np.float32), "w")
    conv = helper.make_node("Conv", ["image", "w"], ["seg"])
    g = helper.make_graph([conv, *nodes], "g", [inp], [out], initializer=[w, *inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _int(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def _shape_values(n: int, image: str = "image") -> tuple[list, list, str]:
    """Nodes and initializers computing a ``(n,)`` int64 tensor of zeros from ``Shape(image)``
    (4 values, squared by an outer ``Mul`` up to ``n``, a power of 4 from 16, then
    ``Sub(x, x)``): no constant, so the check follows its values only by computing them."""
    nodes, inits = [helper.make_node("Shape", [image], ["r8_s"])], [_int("r8_flat", [-1])]
    prev, size, step, made = "r8_s", 4, 0, {4: "r8_s"}
    while size < n:
        k = min(size, n // size)  # the last step may widen by a smaller factor made before
        inits += [_int(f"r8_col{step}_t", [size, 1]), _int(f"r8_row{step}_t", [1, k])]
        nodes += [helper.make_node("Reshape", [prev, f"r8_col{step}_t"], [f"r8_col{step}"]),
                  helper.make_node("Reshape", [made[k], f"r8_row{step}_t"], [f"r8_row{step}"]),
                  helper.make_node("Mul", [f"r8_col{step}", f"r8_row{step}"], [f"r8_sq{step}"]),
                  helper.make_node("Reshape", [f"r8_sq{step}", "r8_flat"], [f"r8_v{step}"])]
        prev, size, step = f"r8_v{step}", size * k, step + 1
        made[size] = prev
    assert size == n, (size, n)
    nodes.append(helper.make_node("Sub", [prev, prev], ["r8_zeros"]))
    return nodes, inits, "r8_zeros"


def _unsqueeze_bomb(n: int, image: str = "image") -> tuple[list, list]:
    """mk_onnx.py's ``unsqueeze_bomb``: the image unsqueezed along ``n`` axes, all 0."""
    nodes, inits, axes = _shape_values(n, image)
    return nodes + [helper.make_node("Unsqueeze", [image, axes], ["r8_u"])], inits


def _tracked_values(monkeypatch, path: Path, size: int, outputs: list[str]) -> dict:
    """The values the check followed for the graph at ``path`` (which it passes), by name."""
    seen: dict[str, np.ndarray] = {}
    infer = onnx_graph._infer

    def spy(node, shapes, values, batch=1, attrs=None):
        infer(node, shapes, values, batch, attrs)
        if batch == 1:  # (the check propagates every batch up to MAX_ONNX_BATCH)
            seen.update(values)

    monkeypatch.setattr(onnx_graph, "_infer", spy)
    check_onnx_graph(path, size, outputs)
    return seen


def test_unsqueeze_along_many_runtime_axes_is_refused_before_reading_them(tmp_path):
    # 4096 axes: the old check inserted each (8 M list moves here, 5 x 10^11 at 2^20) and,
    # the output being dangling, passed a 4100-d tensor
    msg = _refused(tmp_path, _graph(*_unsqueeze_bomb(4096)))
    assert "Unsqueeze along 4,096 axes of a 4-d tensor (at most 8 dimensions allowed)" in msg


@pytest.mark.parametrize(("axes", "words"), [
    ([0, 0], "Unsqueeze along axes [0, 0] naming one axis twice"),
    ([0, -6], "Unsqueeze along axes [0, -6] naming one axis twice"),
    ([9], "Unsqueeze along axes [9] outside [-5, 5)"),
    ([0, 1, 2, 3, 4], "Unsqueeze along 5 axes of a 4-d tensor (at most 8 dimensions allowed)"),
])  # fmt: skip
def test_unsqueeze_axes_onnx_runtime_would_refuse_are_refused(tmp_path, axes, words):
    model = _graph([helper.make_node("Unsqueeze", ["image", "ax"], ["u"])], [_int("ax", axes)])
    assert words in _refused(tmp_path, model)


@pytest.mark.parametrize(("axes", "words"), [
    ([4], "Squeeze along axes [4] outside [-4, 4)"),
    ([2], "Squeeze along axes [2] of a [1, 1, 32, 32] tensor (each must be of size 1)"),
    ([0, -1], "Squeeze along axes [0, -1] of a [1, 1, 32, 32] tensor"),
])  # fmt: skip
def test_squeeze_axes_onnx_runtime_would_refuse_are_refused(tmp_path, axes, words):
    """Before, an axis out of range was wrapped and one of size 32 dropped silently: the check
    propagated another shape than ONNX Runtime (which fails on each) would."""
    model = _graph([helper.make_node("Squeeze", ["image", "ax"], ["q"])], [_int("ax", axes)])
    assert words in _refused(tmp_path, model)


def test_squeeze_shapes_follow_onnx_runtime():
    """One axis named twice drops it once, as ONNX Runtime does ([1, -3] gives (1, 32, 32))."""
    model = _graph([helper.make_node("Squeeze", ["image", "ax"], ["q"])], [_int("ax", [1, -3])])
    graph = onnx_graph.read_graph("m.onnx", model.SerializeToString())
    assert onnx_graph.graph_shapes(graph, SIZE)[0]["q"] == [1, SIZE, SIZE]


def test_unsqueeze_axes_from_an_attribute_are_sized_too(tmp_path):
    model = _graph([helper.make_node("Unsqueeze", ["image"], ["u"], axes=[0] * 10**4)], [])
    model.opset_import[0].version = 11  # axes as an attribute (before opset 13)
    assert "Unsqueeze along 10,000 axes" in _refused(tmp_path, model)


def test_tensors_of_more_than_8_dimensions_are_refused(tmp_path):
    shape = _int("nine_d", [1] * 7 + [SIZE, SIZE])
    model = _graph([helper.make_node("Reshape", ["image", "nine_d"], ["r"])], [shape])
    assert "Reshape output of 9 dimensions (at most 8 allowed)" in _refused(tmp_path, model)
    big = numpy_helper.from_array(np.zeros([1] * 9, np.float32), "big")
    model = _graph([helper.make_node("Relu", ["big"], ["r"])], [big])
    assert "an initializer has more than 8 dimensions" in _refused(tmp_path, model)


def test_large_values_from_the_image_shape_are_not_tracked(monkeypatch, tmp_path):
    # a dangling (256, 1) x (1, 256) Mul and a Concat of 32 shape vectors (128 values): the old
    # check kept 65,536 and 128 values
    nodes, inits, _ = _shape_values(65536)
    nodes.append(helper.make_node("Concat", ["r8_s"] * 32, ["r8_cat"], axis=0))
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph(nodes, inits).SerializeToString())
    seen = _tracked_values(monkeypatch, path, SIZE, ["seg"])
    assert seen["r8_s"].tolist() == [1, 1, SIZE, SIZE]  # small ones still followed
    assert seen["r8_v0"].size == 16 and "r8_v1" not in seen and "r8_cat" not in seen, seen
    assert max(v.size for v in seen.values()) <= TRACKED


def test_a_large_broadcast_is_sized_before_it_is_computed(tmp_path):
    # one dangling (65536, 1) x (1, 256) int64 Mul: 128 MB for the old check, which computed
    # it before checking its size (and would have held it; six of 64 M values held 3.2 GB)
    nodes, inits, _ = _shape_values(65536)
    inits += [_int("r8_a_t", [65536, 1]), _int("r8_b_t", [1, 256])]
    nodes += [helper.make_node("Reshape", ["r8_v2", "r8_a_t"], ["r8_a"]),
              helper.make_node("Reshape", ["r8_v1", "r8_b_t"], ["r8_b"]),
              helper.make_node("Mul", ["r8_a", "r8_b"], ["r8_big"])]
    path = tmp_path / "m.onnx"
    path.write_bytes(_graph(nodes, inits).SerializeToString())
    tracemalloc.start()
    try:
        check_onnx_graph(path, SIZE, ["seg"])  # the values are unknown, not refused: dangling
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024**2, f"{peak:,} bytes allocated by the check"


def test_a_reshape_to_an_untracked_shape_is_refused(tmp_path):
    nodes, inits, zeros = _shape_values(256)  # 256 zeros: too many to follow
    nodes.append(helper.make_node("Reshape", ["image", zeros], ["r"]))
    assert "Reshape to a shape that is not known" in _refused(tmp_path, _graph(nodes, inits))


def _appended_unsqueeze_bomb(n_axes: int):
    """An edit for ``_hostile_export``: a dangling ``Unsqueeze`` bomb of ``n_axes`` axes
    appended to the exported graph."""
    def edit(model: onnx.ModelProto) -> None:
        nodes, inits = _unsqueeze_bomb(n_axes, model.graph.input[0].name)
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
    return edit


def test_unsqueeze_bomb_through_make_plan_is_one_line_status_2(tmp_path_factory, tmp_path):
    # the red team's unsq16.onnx
    path = _hostile_export(tmp_path_factory, tmp_path, _appended_unsqueeze_bomb(2**20))
    image = phantom_images(tmp_path_factory)[0]
    proc = subprocess.run([sys.executable, "-m", "planning.plan", "--image", str(image),
                           "--ckpt", str(path), "--out", str(tmp_path / "o")], cwd=REPO,
                          capture_output=True, text=True, timeout=150)  # old check: a hang
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, (proc.returncode, proc.stderr)
    assert str(path) in err[0] and "Unsqueeze along 1,048,576 axes" in err[0], err


def test_the_exported_model_still_passes(tmp_path_factory, monkeypatch, tmp_path):
    good = exported_tiny_model(tmp_path_factory)
    size = json.loads(good.with_suffix(".json").read_text())["input_size"]
    seen = _tracked_values(monkeypatch, good, size, ["seg", "lm", "roi", "lm_prev"])
    shape_outs = [n.output[0] for n in onnx.load(str(good)).graph.node if n.op_type == "Shape"]
    assert shape_outs and all(seen[o].size == 4 for o in shape_outs)  # still followed
    assert max(v.size for v in seen.values()) <= TRACKED
