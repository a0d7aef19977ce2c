"""``python -m planning.compare``: two evaluations of the same test set compared image by image
(session 31 walkthrough: there was no way to tell which of two models is better, and each
model's median covered other images). Checked against hand-computed cases."""

from __future__ import annotations

import csv
import math

import pytest

from planning.compare import METRICS, compare, main, read_rows
from planning.evaluation_record import write_record

FIELDS = ["id", "unit", *(m for m, _, _ in METRICS), "needs_review"]


def _write(folder, values: dict[str, float], flagged=(), **other) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "per_image.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for i, v in values.items():
            row = {m: 1.0 for m, _, _ in METRICS} | {"id": i, "unit": "mm", "schoettle": v,
                                                     "needs_review": int(i in flagged)}
            row.update({k: vals[i] for k, vals in other.items() if i in vals})
            w.writerow(row)


def test_five_images_all_worse_by_hand(tmp_path):
    a = {f"k{i}": 2.0 + i for i in range(5)}
    b = {k: v + d for (k, v), d in zip(a.items(), [1, 2, 3, 4, 12], strict=True)}  # B worse
    _write(tmp_path / "A", a)
    _write(tmp_path / "B", b, flagged={"k4"})
    _, ra = read_rows(tmp_path / "A")
    _, rb = read_rows(tmp_path / "B" / "per_image.csv")
    text, rows = compare(ra, rb, level=0.95, n_boot=2000, limit=10.0)
    s = next(r for r in rows if r.get("metric") == "schoettle")
    assert s["n_paired"] == 5 and s["median_a"] == 4.0 and s["median_b"] == 7.0
    assert s["median_difference"] == 3.0  # median of 1, 2, 3, 4, 12
    # exact two-sided signed-rank p with all 5 differences positive: 2 / 2^5
    assert s["wilcoxon_p"] == pytest.approx(0.0625)
    assert 1.0 <= s["ci_low"] <= 3.0 <= s["ci_high"] <= 12.0
    # the CI excludes 0 (every difference > 0), but 5 images cannot show it at p < 0.05
    assert s["better"] == "-"
    iou = next(r for r in rows if r.get("metric") == "iou_femur")
    assert iou["median_difference"] == 0 and iou["wilcoxon_p"] == 1.0 and iou["better"] == "-"
    gate = {r["model"]: r for r in rows if r.get("table") == "gate"}
    assert gate["A"]["flagged"] == 0 and gate["B"]["flagged"] == 1
    assert gate["A"]["unflagged_over_limit"] == 0  # A: 2..6 mm
    assert gate["B"]["unflagged_over_limit"] == 0  # k4 (18 mm) is flagged
    assert "median B - A [95% CI]" in text


def test_one_image_names_no_winner_and_twelve_do(tmp_path):
    _write(tmp_path / "A1", {"k": 2.0})
    _write(tmp_path / "B1", {"k": 3.0})
    _, rows = compare(read_rows(tmp_path / "A1")[1], read_rows(tmp_path / "B1")[1], n_boot=200)
    assert rows[0]["median_difference"] == 1.0 and rows[0]["better"] == "-"
    a = {f"k{i}": 2.0 + i for i in range(12)}
    _write(tmp_path / "A", a)
    _write(tmp_path / "B", {k: v + 0.5 + 0.1 * i for i, (k, v) in enumerate(a.items())})
    _, rows = compare(read_rows(tmp_path / "A")[1], read_rows(tmp_path / "B")[1], n_boot=500)
    # 12 positive differences: exact two-sided p = 2 / 2^12
    assert rows[0]["wilcoxon_p"] == pytest.approx(2 / 4096) and rows[0]["better"] == "A"


def test_failures_are_counted_apart_with_a_sign_test(tmp_path):
    ids = [f"k{i}" for i in range(8)]
    a = {i: 3.0 for i in ids} | {"k0": math.nan, "k1": math.nan}
    b = {i: 3.5 for i in ids} | {"k2": math.nan, "k3": math.nan, "k4": math.nan}
    _write(tmp_path / "A", a)
    _write(tmp_path / "B", b)
    _, ra = read_rows(tmp_path / "A")
    _, rb = read_rows(tmp_path / "B")
    text, rows = compare(ra, rb, n_boot=100)
    s = next(r for r in rows if r.get("metric") == "schoettle")
    assert s["n_paired"] == 3  # k5..k7: the images both constructed
    fails = next(r for r in rows if r.get("table") == "no_point")
    assert (fails["a"], fails["b"], fails["only_a"], fails["only_b"]) == (2, 3, 2, 3)
    # exact two-sided binomial p of 2 of 5 at 1/2: P(X <= 2) * 2 = 16/32 * 2 = 1
    assert fails["sign_test_p"] == pytest.approx(1.0)
    assert "only A failed on 2, only B on 3" in text


def test_cli_refuses_other_test_sets_and_writes_tables(tmp_path, capsys):
    a = {f"k{i}": 2.0 + i for i in range(6)}
    _write(tmp_path / "A", a)
    _write(tmp_path / "B", {k: v + 1 for k, v in a.items()})
    write_record(tmp_path / "A", {"model": "a", "test_set": "/data/x (6 images)"})
    write_record(tmp_path / "B", {"model": "b", "test_set": "/data/y (6 images)"})
    assert main([str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("compare: error: other test sets: A /data/x "
                                               "(6 images), B /data/y (6 images)")
    write_record(tmp_path / "B", {"model": "b", "test_set": "/data/x (6 images)"})
    assert main([str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(tmp_path / "o"),
                 "--n-boot", "200"]) == 0
    assert "| Schoettle point (mm) | 6 | 4.50 | 5.50 | 1.00 [1.00, 1.00] |" in (
        tmp_path / "o" / "compare.md").read_text()
    assert (tmp_path / "o" / "compare.csv").is_file()
    assert main([str(tmp_path / "A"), str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"compare: error: {tmp_path / 'nothing'}: no per_image.csv (No such file or "
        "directory); give a make evaluate folder")
    import os

    (tmp_path / "F").mkdir()
    os.mkfifo(tmp_path / "F" / "per_image.csv")  # would block a reader for ever
    assert main([str(tmp_path / "A"), str(tmp_path / "F")]) == 2
    assert capsys.readouterr().err.strip().endswith("per_image.csv: not a regular file")
    (tmp_path / "C").mkdir()
    (tmp_path / "C" / "per_image.csv").write_text("id,unit\nk0,mm\n")
    assert main([str(tmp_path / "A"), str(tmp_path / "C")]) == 2
    assert "not a make evaluate per_image.csv (no column" in capsys.readouterr().err
