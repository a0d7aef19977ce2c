"""The phantom families written apart from ours (``benchmarks/raycast_phantoms.py``,
``benchmarks/sdf_phantoms.py``) write dataset folders that the project's own validator and
reader accept, the same bytes for the same seed."""

from __future__ import annotations

import numpy as np
import pytest
from benchmark_scripts import load_benchmark

from datamodules.dataset_io import read_sample
from datamodules.validate import validate_dataset


@pytest.mark.parametrize("name", ["raycast_phantoms", "sdf_phantoms"])
def test_two_images_validate_read_and_repeat(name, tmp_path):
    gen = load_benchmark(name)
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
    gen = load_benchmark("sdf_phantoms")
    (tmp_path / "file").write_text("x")
    assert gen.main(["--out", str(tmp_path / "file" / "out"), "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "file" / "out") in err
    with pytest.raises(SystemExit) as exc:
        gen.main(["--out", str(tmp_path / "o"), "--n", "-1"])
    assert exc.value.code == 2
