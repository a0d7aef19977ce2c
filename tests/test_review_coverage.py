"""Risk-coverage of the review gate (``make evaluate``): the table, the curve and the per-reason
counts against hand computations, and the files evaluate writes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planning.tables import reason_counts, risk_coverage, risk_coverage_curve


def test_risk_coverage_table_by_hand():
    errors = [1.0, 2.0, 3.0, 40.0, math.nan, 4.0]
    flagged = [0, 0, 0, 1, 1, 0]
    rows = [{"schoettle": e, "needs_review": f} for e, f in zip(errors, flagged, strict=True)]
    md, summary = risk_coverage(rows, "mm")
    assert "coverage 67% (4/6 plans not flagged)" in md
    ok = next(s for s in summary if s["group"] == "not flagged")
    assert ok["n"] == 4 and ok["median"] == pytest.approx(2.5)
    assert ok["p95"] == pytest.approx(np.percentile([1, 2, 3, 4], 95)) and ok["max"] == 4.0
    bad = next(s for s in summary if s["group"] == "flagged")
    assert bad["n"] == 2 and bad["no_point"] == 1 and bad["max"] == 40.0


def test_risk_coverage_curve_keeps_the_most_trusted_first():
    cov, med, p95 = risk_coverage_curve([5.0, 1.0, math.nan, 3.0], scores=[2, 0, 9, 1])
    np.testing.assert_allclose(cov, [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(med[:3], [1.0, 2.0, 3.0])  # 1; 1,3; 1,3,5
    assert med[3] == 4.0 and np.isinf(p95[3])  # the missing point counts as infinite error
    assert p95[2] == pytest.approx(np.percentile([1.0, 3.0, 5.0], 95))


def test_reason_counts_count_images_not_reasons():
    md, rows = reason_counts([["tta_spread", "tta_spread", "off_femur"], [], ["off_femur"]])
    assert {r["reason"]: r["count"] for r in rows} == {"off_femur": 2, "tta_spread": 1}
    assert "| off_femur | 2/3 |" in md
    assert "(none)" in reason_counts([[], []])[0]


def test_evaluate_writes_risk_coverage(tmp_path):
    from datamodules.phantoms import PhantomConfig
    from planning.evaluate import evaluate, phantom_samples
    from planning.tables import BootstrapSpec

    cfg = PhantomConfig(min_side=300, max_side=360)
    res = evaluate(phantom_samples(3, 2_000_000, cfg), tmp_path, oracle=True,
                   spec=BootstrapSpec(n_boot=50), log=None)  # fmt: skip
    assert (tmp_path / "risk_coverage.png").stat().st_size > 1000
    text = (tmp_path / "risk_coverage.md").read_text()
    n_ok = sum(1 - r["needs_review"] for r in res.rows)
    assert f"({n_ok}/3 plans not flagged)" in text and "Review reasons fired" in text
    assert "review_codes" in (tmp_path / "per_image.csv").read_text().splitlines()[0]
