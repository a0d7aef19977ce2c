"""make evaluate's error gallery (issue 14): the N worst in order, a seeded random N, pictures.

Ground-truth ("oracle") maps stand in for a network; the Schoettle errors of the rows are then
set by hand, so which cases the gallery must hold is known exactly.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from datamodules.phantoms import PhantomConfig, generate_phantom
from planning.evaluate import DEFAULT_PHANTOM_SEED, evaluate, evaluate_sample, main
from planning.gallery import CASE_SIDE, Gallery, scaled_plan
from planning.oracle import oracle_maps
from planning.overlay import BONE_COLOURS, SCHOETTLE_COLOUR, draw_truth
from planning.tables import BootstrapSpec

CFG = PhantomConfig(min_side=160, max_side=220)
ERRORS = [3.0, math.nan, 7.5, 1.0, 9.0, 0.5, 4.0]  # hand-set Schoettle errors (mm)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cases():
    """(sample, result, maps) of 7 small phantoms, errors set to ERRORS."""
    out = []
    for i, err in enumerate(ERRORS):
        sample = generate_phantom(100 + i, CFG)
        maps = oracle_maps(sample, 64)
        res = evaluate_sample(sample, maps)
        res.row["schoettle"] = err
        out.append((sample, res, maps))
    return out


def test_gallery_holds_the_worst_in_order_and_a_seeded_random_pick(cases, tmp_path):
    gallery = Gallery(2, seed=5)
    for case in cases:
        gallery.offer(*case)
    paths = gallery.write(tmp_path)
    index = _read(tmp_path / "index.csv")
    worst = [r for r in index if r["kind"] == "worst"]
    # NaN (not constructed) is the worst, then 9.0: images 1 and 4
    assert [r["id"] for r in worst] == [cases[1][0].id, cases[4][0].id]
    assert [r["rank"] for r in worst] == ["1", "2"]
    # independent draw: one uniform priority per image in offer order; the two lowest
    # priorities among the images not in the worst two
    prio = np.random.default_rng(5).random(len(ERRORS))
    rest = [i for i in np.argsort(prio) if i not in (1, 4)][:2]
    assert [r["id"] for r in index if r["kind"] == "random"] == [cases[i][0].id for i in rest]
    names = {p.name for p in paths}
    assert {"contact_sheet.png", "index.csv"} <= names
    assert f"worst_01_{cases[1][0].id}.png" in names
    shapes = {sample.id: sample.shape for sample, _, _ in cases}
    for r in index:  # the radiograph at CASE_SIDE short side, the two panels to its right
        img = cv2.imread(str(tmp_path / r["file"]))
        h, w = shapes[r["id"]]
        assert img is not None and img.shape[0] == round(h * CASE_SIDE / min(h, w))
        assert img.shape[1] > round(w * CASE_SIDE / min(h, w)) + 300
    sheet = cv2.imread(str(tmp_path / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 4 * 200  # 4 columns of thumbnails
    # a second write of a smaller gallery leaves no stale pictures behind
    small = Gallery(1, seed=5)
    for case in cases[:3]:
        small.offer(*case)
    small.write(tmp_path)
    assert len(list(tmp_path.glob("worst_*.png"))) == 1


def test_gallery_keeps_everything_when_there_are_few_images(cases, tmp_path):
    gallery = Gallery(8)
    for case in cases[:3]:
        gallery.offer(*case)
    worst, lots = gallery.selection()
    assert worst == [1, 2, 0] and lots == []  # errors NaN, 7.5, 3.0; no one left to draw


def test_evaluate_writes_the_gallery_of_its_own_worst_rows(tmp_path):
    from planning.evaluate import phantom_samples

    spec = BootstrapSpec(n_boot=100, seed=0)
    samples = phantom_samples(4, DEFAULT_PHANTOM_SEED, CFG)
    res = evaluate(samples, tmp_path, oracle=True, spec=spec, log=None, image_size=64,
                   gallery=Gallery(2, seed=0))
    rows = sorted(res.rows, key=lambda r: -r["schoettle"])
    index = _read(tmp_path / "gallery" / "index.csv")
    assert [r["id"] for r in index if r["kind"] == "worst"] == [r["id"] for r in rows[:2]]
    assert float(index[0]["schoettle"]) == pytest.approx(rows[0]["schoettle"])
    assert len([r for r in index if r["kind"] == "random"]) == 2
    # --gallery 0: no gallery folder
    out = tmp_path / "cli"
    assert main(["--oracle", "--n-phantoms", "1", "--n-boot", "50",
                 "--image-size", "64", "--gallery", "0", "--out", str(out)]) == 0
    assert (out / "table1.md").is_file() and not (out / "gallery").exists()


def test_draw_truth_dashes_outlines_and_marks_the_point():
    img = np.zeros((200, 300, 3), np.uint8)
    masks = np.zeros((4, 200, 300), bool)
    masks[0, 50:150, 60:240] = True  # femur: a 180 x 100 rectangle
    draw_truth(img, masks=masks, schoettle=np.array([150.0, 100.0]))
    femur = np.all(np.abs(img.astype(int) - BONE_COLOURS["femur"]) < 60, axis=2)
    top_edge = femur[49:52, 70:230].any(axis=0)  # along the top edge, away from corners
    assert 0.3 < top_edge.mean() < 0.8, top_edge.mean()  # dashed: neither solid nor absent
    green = np.all(np.abs(img.astype(int) - SCHOETTLE_COLOUR) < 60, axis=2)
    ys, xs = np.nonzero(green)
    assert abs(xs.mean() - 150) < 1.5 and abs(ys.mean() - 100) < 1.5  # diamond centred
    assert not green[100, 150]  # open diamond: the point itself stays visible


def test_scaled_plan_keeps_pixel_centres_and_mm(cases):
    plan = cases[0][1].plan
    s = 3.0
    big = scaled_plan(plan, s)
    np.testing.assert_allclose(big.schoettle, (plan.schoettle + 0.5) * 3 - 0.5)
    # the same physical point: distance in mm unchanged (phantom spacing is isotropic)
    assert plan.spacing[0] == pytest.approx(plan.spacing[1])
    assert big.spacing[0] == pytest.approx(plan.spacing[0] / 3)
    assert big.lm1.distance(big.schoettle) * big.spacing[1] == pytest.approx(
        plan.lm1.distance(plan.schoettle) * plan.spacing[1], rel=1e-9)


@pytest.mark.parametrize("n_reasons", [2, 30])
def test_info_panel_says_how_many_reasons_it_could_not_show(n_reasons, monkeypatch):
    """User walkthrough: reasons past the panel's height were cut mid-sentence without a word;
    now the last line says how many more there are (all are in index.csv)."""
    from planning import gallery, overlay

    drawn: list[str] = []
    monkeypatch.setattr(overlay, "_text", lambda img, text, *a, **k: drawn.append(text))
    row = {"unit": "mm", "id": "k", "schoettle": 1.0, "ed_p_blum": 1.0, "ed_p_tmc": 1.0,
           "line": 1.0, "iou_femur": 0.9}
    reasons = [f"reason number {i} with a long explanation of what went wrong in the plan"
               for i in range(n_reasons)]
    st = overlay.Style(600, 600)
    gallery.info_panel(600, "worst 1", row, reasons, st, 300)
    shown = [t for t in drawn if "reason number" in t]
    more = [t for t in drawn if "more (index.csv)" in t]
    if n_reasons == 2:
        assert not more and len({t.split(" with")[0] for t in shown}) == 2
    else:
        hidden = int(more[0].split()[0].lstrip("+"))
        assert drawn[-1] == more[0] and 0 < hidden < n_reasons
        first_words = {t.split(" with")[0] for t in shown if t.startswith("- reason")}
        assert len(first_words) == n_reasons - hidden  # every shown reason is whole
