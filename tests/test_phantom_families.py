"""The phantom families written apart from ours (``benchmarks/raycast_phantoms.py``,
``benchmarks/sdf_phantoms.py``) write dataset folders that the project's own validator and
reader accept, the same bytes for the same seed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from datamodules.dataset_io import read_sample
from datamodules.validate import validate_dataset

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _generator(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["raycast_phantoms", "sdf_phantoms"])
def test_two_images_validate_read_and_repeat(name, tmp_path):
    gen = _generator(name)
    gen.main(["--out", str(tmp_path / "a"), "--n", "2", "--seed", "303"])
    report = validate_dataset(tmp_path / "a")
    assert not report.errors, report.errors
    images = sorted((tmp_path / "a" / "images").iterdir())
    assert len(images) == 2
    sample = read_sample(tmp_path / "a", images[0].stem)
    assert sample.masks[0].any() and sample.spacing_mm is not None
    h, w = sample.image.shape
    assert np.all((sample.landmarks >= 0) & (sample.landmarks < [w, h]))
    gen.main(["--out", str(tmp_path / "b"), "--n", "1", "--seed", "303"])
    assert (tmp_path / "b" / "images" / images[0].name).read_bytes() == images[0].read_bytes()


def test_sdf_family_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    gen = _generator("sdf_phantoms")
    (tmp_path / "file").write_text("x")
    assert gen.main(["--out", str(tmp_path / "file" / "out"), "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "file" / "out") in err
    with pytest.raises(SystemExit) as exc:
        gen.main(["--out", str(tmp_path / "o"), "--n", "-1"])
    assert exc.value.code == 2
