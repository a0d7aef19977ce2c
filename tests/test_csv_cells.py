"""CSV files a clinician may open in a spreadsheet (red-team round 7): a file name such as
``=HYPERLINK(...).png`` or an id ``=1+2`` must arrive as text, not as a formula, while numbers,
negative ones included, stay numbers."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from planning.batch import write_summary
from planning.tables import csv_cell, write_rows

HOSTILE = ['=1+2.png', '=HYPERLINK("http://evil.example","click").png', "+cmd.png", "@SUM(A1)",
           "-2+3.png", "\t=1.png"]


@pytest.mark.parametrize("text", HOSTILE)
def test_a_cell_that_would_start_a_formula_is_text(text):
    assert csv_cell(text) == "'" + text


@pytest.mark.parametrize("value", ["-3.5", "+2", "-1e-3", "knee.png", "", 4, -2.5, None])
def test_numbers_and_plain_text_are_unchanged(value):
    assert csv_cell(value) == value


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_plan_summary_and_evaluation_rows_write_names_as_text(tmp_path):
    rows = [{"image": name, "status": "ok", "schoettle_x_px": -1.5} for name in HOSTILE]
    got = _read(write_summary(tmp_path / "summary.csv", rows))
    assert [r["image"] for r in got] == ["'" + n for n in HOSTILE]
    assert {r["schoettle_x_px"] for r in got} == {"-1.5"}
    write_rows(tmp_path / "per_image.csv", [{"id": "=1+2", "err": -0.25}])
    assert _read(tmp_path / "per_image.csv") == [{"id": "'=1+2", "err": "-0.25"}]
