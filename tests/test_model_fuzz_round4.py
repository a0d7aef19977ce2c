"""Fourth fuzz round of model files (checkpoints and exported graphs): each case failed before
its fix (17 GB and 41 s for a 200 kB file, a silently different network, a parser and runtime
that disagree on which weights run, or a line that named nothing) and is now refused in one line
naming the file, before any work proportional to what the file claims."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from lightning_modules.checkpoint_file import CheckpointError, check_architecture, read_checkpoint
from planning.model_io import build_network, load_checkpoint
from planning.onnx_graph import check_onnx_graph
from tests.model_files import exported_tiny_model, phantom_images, trained_tiny_checkpoint

WEIGHT = "net.stem.conv.weight"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> dict:
    """The tiny trained checkpoint, loaded (each test saves a changed deep copy)."""
    return torch.load(trained_tiny_checkpoint(tmp_path_factory), weights_only=True)


def saved(tmp_path, ckpt: dict, name: str, change) -> os.PathLike:
    """``ckpt`` deep-copied, changed in place by ``change`` and saved as ``tmp_path/name``."""
    ck = copy.deepcopy(ckpt)
    change(ck)
    torch.save(ck, tmp_path / name)
    return tmp_path / name


def _set_weight(value):
    return lambda ck: ck["state_dict"].__setitem__(WEIGHT, value)


def _share_storage(ck: dict) -> None:
    """300 full views of one 4 MB storage: 1.2 GB of 'weights' in a 4 MB file."""
    big = torch.zeros(2**20)
    ck["state_dict"].update({f"x{i}": big for i in range(300)})


def _optimizer_view(ck: dict) -> None:
    state = ck["optimizer_states"][0]["state"]
    state[next(iter(state))]["square_avg"] = torch.zeros(1).expand(6000, 6000)


@pytest.mark.parametrize(("change", "words"), [
    (_set_weight(torch.zeros(1).expand(6000, 6000)), "over 4 bytes of storage"),  # 17 GB at 50k
    (_set_weight(torch.ones(1).expand(4, 1, 7, 7)), "overlapping or broadcast"),  # planned
    (_share_storage, "more than twice the"),
    (_optimizer_view, "optimizer_states.0.state.0.square_avg"),  # resume casts it
    (_set_weight(torch.empty(4, 1, 7, 7, device="meta")), "a meta tensor"),
    (_set_weight(torch.zeros(4, 1, 7, 7, dtype=torch.float8_e4m3fn)), "float8_e4m3fn: not supp"),
    (lambda ck: ck["state_dict"].__setitem__(5, torch.zeros(1)), "a key of type int"),
], ids=["broadcast", "broadcast-right-shape", "shared-storage", "optimizer-view", "meta",
        "float8", "int-key"])  # fmt: skip
def test_tensors_that_are_not_stored_weights_are_refused_unread(ckpt, tmp_path, change, words):
    """Before: a broadcast view was NaN-checked and cast value by value (a 50 000^2 view of one
    float: 17 GB, 41 s; 200 of them never ended), a right-shaped one planned as a constant
    network, a meta tensor failed in ``Tensor.item()`` and float8 in ``isfinite``."""
    path = saved(tmp_path, ckpt, "bad.ckpt", change)
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=words) as err:
        read_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert time.perf_counter() - start < 5


def test_nested_tensor_is_refused_without_torchs_warning(ckpt, tmp_path, recwarn):
    """Before: a prototype warning of several lines on stderr, then a 2 kB dispatcher error."""
    with pytest.warns(UserWarning):
        nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    path = saved(tmp_path, ckpt, "nested.ckpt", _set_weight(nested))
    recwarn.clear()
    with pytest.raises(CheckpointError, match="is a nested tensor"):
        read_checkpoint(path)
    assert not [w for w in recwarn if "nested" in str(w.message)]


def test_a_pickled_structure_sharing_itself_is_walked_once(ckpt, tmp_path):
    """Lists nested 20 000 deep: the tensor walk visits each container once, without recursion.
    One list held twice at each of 100 levels (2^100 paths, 450 kB) was walked once and loaded
    too; since the fifth fuzz round it is refused before loading (``pickle_scan``: any other
    walk of it, or a tuple built the same way and hashed as a key, would never end)."""
    laughs: list = [0]
    for _ in range(100):
        laughs = [laughs, laughs]
    deep: list = [torch.zeros(1)]
    for _ in range(20_000):
        deep = [deep]

    import sys
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(100_000)  # torch.save pickles recursively; reading does not
    try:
        path = saved(tmp_path, ckpt, "deep.ckpt", lambda ck: ck["loops"].__setitem__("deep", deep))
        bomb = saved(tmp_path, ckpt, "laughs.ckpt",
                     lambda ck: ck["hyper_parameters"].__setitem__("laughs", laughs))
    finally:
        sys.setrecursionlimit(limit)
    start = time.perf_counter()
    assert read_checkpoint(path)["loops"]["deep"][0] is not None
    with pytest.raises(CheckpointError, match="laughs.ckpt: refused: .*expands to more than"):
        read_checkpoint(bomb)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64])
def test_weights_that_are_not_real_numbers_are_refused(ckpt, tmp_path, dtype):
    """Before: int or bool weights failed in a line of torch's cut mid-sentence ("whose
    dimensions in the model are ... an exception occur"); resuming cast them silently."""
    def change(ck: dict) -> None:
        ck["state_dict"] = {k: v.to(dtype) if v.is_floating_point() else v
                            for k, v in ck["state_dict"].items()}

    path = saved(tmp_path, ckpt, "typed.ckpt", change)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=f"'stem.conv.weight' holds {name} values"):
        load_checkpoint(path)
    state = read_checkpoint(path)["state_dict"]
    with torch.device("meta"):
        net = build_network(ckpt["hyper_parameters"])
    with pytest.raises(CheckpointError, match="not floating point"):  # the resume check
        check_architecture(path, {k[4:]: v for k, v in state.items() if k.startswith("net.")},
                           net)


def test_another_projects_checkpoint_and_a_legacy_file_say_what_they_are(ckpt, tmp_path):
    """A Lightning checkpoint of another network (no ``net.*`` weights; before: 100 missing
    keys) and a pre-1.6 torch file (before: "truncated, or not written by torch.save")."""
    other = {"state_dict": {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.bias": torch.zeros(10)},
             "hyper_parameters": {}}
    torch.save(other, tmp_path / "resnet.ckpt")
    with pytest.raises(CheckpointError, match="holds no net.* weights .*'conv1.weight'"):
        load_checkpoint(tmp_path / "resnet.ckpt")
    torch.save(ckpt, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="a legacy torch file"):
        read_checkpoint(tmp_path / "legacy.ckpt")


def test_broadcast_checkpoint_through_plan_is_one_line(ckpt, tmp_path_factory, tmp_path, capsys):
    """Through the command: status 2, one line naming the weight (before: 41 s, 17 GB)."""
    from planning.plan import main

    path = saved(tmp_path, ckpt, "v.ckpt", _set_weight(torch.zeros(1).expand(6000, 6000)))
    image = phantom_images(tmp_path_factory, n=1)[0]
    rc = main(["--image", str(image), "--ckpt", str(path), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and WEIGHT in err[0] and err[0].startswith("plan: error:")
    assert not list((tmp_path / "o").glob("*_plan.*"))


def test_link_loop_and_evaluate_lines(ckpt, tmp_path, capsys):
    """A looping link is named as such (before: "does not exist"); evaluate's lines start
    with ``evaluate: error:`` and name the file once (before: neither)."""
    from planning.evaluate import main as evaluate
    from planning.plan import main as plan

    loop = tmp_path / "loop.ckpt"
    loop.symlink_to(loop)
    assert plan(["--image", "x.png", "--ckpt", str(loop)]) == 2
    assert "a symbolic link to nothing, or a loop" in capsys.readouterr().err
    bad = saved(tmp_path, ckpt, "meta.ckpt", _set_weight(torch.empty(4, 1, 7, 7, device="meta")))
    for path, words in ((loop, "symbolic link"), (tmp_path, "is a folder"), (bad, "meta tensor")):
        assert evaluate(["--ckpt", str(path), "--n-phantoms", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("evaluate: error: ") and words in err[0], err
        assert err[0].count(str(path)) == 1, err


@pytest.fixture(scope="module")
def graph(tmp_path_factory) -> onnx.ModelProto:
    """The tiny export, parsed by the ``onnx`` package (to be changed by each test)."""
    return onnx.load(exported_tiny_model(tmp_path_factory))


def _checked(model: onnx.ModelProto, tmp_path) -> None:
    """``check_onnx_graph`` on ``model`` written to ``tmp_path`` (the tiny export's 64 px)."""
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    check_onnx_graph(path, 64, ["seg", "lm", "roi", "lm_prev"])


def _folded_resizes(model: onnx.ModelProto) -> None:
    """The image plus a constant resized 8 x 8 -> 512 x 512 -> 64 x 64 before the network."""
    for node in model.graph.node:
        node.input[:] = ["pre" if i == "image" else i for i in node.input]
    model.graph.initializer.extend([
        numpy_helper.from_array(np.zeros((1, 1, 8, 8), np.float32), "c"),
        numpy_helper.from_array(np.array([1, 1, 64, 64], np.float32), "up"),
        numpy_helper.from_array(np.array([1, 1, 1 / 8, 1 / 8], np.float32), "down")])
    pre = [helper.make_node("Resize", ["c", "", "up"], ["big"], mode="nearest"),
           helper.make_node("Resize", ["big", "", "down"], ["small"], mode="nearest"),
           helper.make_node("Add", ["image", "small"], ["pre"])]
    for node in reversed(pre):
        model.graph.node.insert(0, node)


def _sparse_weight(model: onnx.ModelProto) -> None:
    w = model.graph.initializer[0]
    values = helper.make_tensor(w.name, TensorProto.FLOAT, [1], [1000.0])
    index = helper.make_tensor("i", TensorProto.INT64, [1], [0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, index, w.dims))


def _function(model: onnx.ModelProto) -> None:
    model.functions.append(helper.make_function(
        "", "Sigmoid", ["X"], ["Y"], [helper.make_node("Relu", ["X"], ["Y"])],
        [helper.make_opsetid("", 18)]))


def _twin_weight(model: onnx.ModelProto) -> None:
    twin = copy.deepcopy(model.graph.initializer[0])
    twin.raw_data = np.full(int(np.prod(twin.dims)), 1e3, np.float32).tobytes()
    model.graph.initializer.insert(0, twin)


def _redefined_output(model: onnx.ModelProto) -> None:
    model.graph.node.append(helper.make_node("Identity", ["image"], ["seg"]))


@pytest.mark.parametrize(("change", "words"), [
    (_folded_resizes, "from constants alone"),  # 14 such: 4.2 GB, 9.5 s before
    (_sparse_weight, "sparse initializers are not accepted"),  # planned before
    (_function, "model-local functions"),  # planned before (ONNX Runtime ignored it)
    (_twin_weight, "two initializers share a name"),  # planned before
    (_redefined_output, "redefines tensor 'seg'"),  # ONNX Runtime's multi-part message
], ids=["constant-folding", "sparse", "function", "twin-weight", "redefined"])  # fmt: skip
def test_graphs_the_runtime_could_read_differently_are_refused(graph, tmp_path, change, words):
    """What the check does not model is refused, not skipped: ONNX Runtime folds constant
    nodes at load and keeps the result, loads sparse initializers and local functions the
    check's parser skipped, and picks one of two same-named weights."""
    model = copy.deepcopy(graph)
    _checked(model, tmp_path)  # the unchanged export passes
    change(model)
    with pytest.raises(ValueError, match=words):
        _checked(model, tmp_path)


def test_folding_chain_through_plan_is_one_line_and_cheap(graph, tmp_path_factory, tmp_path,
                                                         capsys):
    """Through the command with a matching description: status 2 before ONNX Runtime runs."""
    from planning.plan import main

    model = copy.deepcopy(graph)
    _folded_resizes(model)
    data = model.SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data)
    meta = json.loads(exported_tiny_model(tmp_path_factory).with_suffix(".json").read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "m.json").write_text(json.dumps(meta))
    image = phantom_images(tmp_path_factory, n=1)[0]
    rc = main(["--image", str(image), "--ckpt", str(tmp_path / "m.onnx"), "--out",
               str(tmp_path / "o"), "--tta", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "constant folding" in err[0], err



@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="drops root privileges to make a file unreadable")
def test_an_unreadable_checkpoint_says_so(tmp_path_factory, request):
    """A file without read permission, and one in a folder that may not be searched. Before:
    "truncated, or not written by torch.save" (``zipfile.is_zipfile`` answers False for a file
    it cannot open), and a traceback (``Path.exists`` raises for an unsearchable folder)."""
    import shutil
    import subprocess
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own folders are closed (0700)
    request.addfinalizer(lambda: shutil.rmtree(root))
    root.chmod(0o755)  # searchable for the unprivileged user
    locked_file, locked_dir = root / "locked.ckpt", root / "closed" / "m.ckpt"
    locked_dir.parent.mkdir(mode=0o700)
    for path in (locked_file, locked_dir):
        shutil.copy(trained_tiny_checkpoint(tmp_path_factory), path)
    locked_file.chmod(0)
    code = ("import os, sys\n"
            "from lightning_modules.checkpoint_file import CheckpointError, read_checkpoint\n"
            "from lightning_modules.model_limits import model_file_problem\n"
            "os.setgid(65534)\nos.setuid(65534)\n"
            "for p in sys.argv[1:]:\n"
            "    print(model_file_problem(p))\n"
            "    try:\n        read_checkpoint(p)\n"
            "    except CheckpointError as err:\n        print(err)\n")
    res = subprocess.run([sys.executable, "-c", code, str(locked_file), str(locked_dir)],
                         capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    lines = res.stdout.splitlines()
    assert res.returncode == 0 and len(lines) == 4, res.stdout + res.stderr
    assert lines[0] == "None" and "cannot read ([Errno 13] Permission denied" in lines[1]
    assert lines[2] == f"{locked_dir}: cannot read (Permission denied)"
    assert "cannot read ([Errno 13] Permission denied" in lines[3]


@pytest.mark.parametrize(("change", "words"), [
    ({"version": 2}, "description version 2; this kneeplan reads version 1"),
    ({"version": "1"}, "description version '1'"),
    ({"task_channels": {"seg": 4, "lm": 3, "roi": 1}}, "gives lm 3 channels; planning needs 2"),
    ({"task_channels": {"seg": 4, "lm": 2}}, "gives roi None channels"),
    ({"task_channels": [4, 2, 1]}, "'task_channels' must map task names"),
])
def test_export_description_contradicting_planning_is_refused(tmp_path_factory, tmp_path,
                                                              change, words):
    """A description from a later layout, or whose channel counts are not the ones planning
    reads, is refused (the run-time channel check alone would blame the graph)."""
    from planning.predict import read_export_meta

    model = exported_tiny_model(tmp_path_factory)
    onnx = tmp_path / "m.onnx"
    shutil.copy(model, onnx)
    meta = json.loads(model.with_suffix(".json").read_text())
    assert read_export_meta(model)["version"] == 1  # what make export writes passes
    onnx.with_suffix(".json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(ValueError, match="cannot use the exported model's description") as err:
        read_export_meta(onnx)
    assert words in str(err.value) and "\n" not in str(err.value)
