"""Contact sheet of phantoms: ``python -m datamodules.phantoms.sheet --out PNG --seed SEED``.

Each cell shows one phantom with its mask outlines and points in the colours of every picture
(``datamodules.colours``: femur gold, patella magenta, tibia sky blue, fibula light green; p_blum
cyan, p_tmc white), the posterior cortex line extended across the image (red), the
perpendiculars LM2/LM3 (thin grey) and the Schoettle point with its 2.5 mm circle (green).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from datamodules.colours import BONE_RGB, CORTEX_RGB, LANDMARK_RGB, SCHOETTLE_RGB
from datamodules.phantoms.config import PhantomConfig
from datamodules.phantoms.generate import generate_phantom, sample_seed
from datamodules.sample import BONES, LANDMARKS, Sample

BONE_COLOURS = tuple(BONE_RGB[b][::-1] for b in BONES)  # BGR
P_BLUM, P_TMC = (LANDMARK_RGB[n][::-1] for n in LANDMARKS)
LINE, SP = CORTEX_RGB[::-1], SCHOETTLE_RGB[::-1]


def _full_line(p: np.ndarray, d: np.ndarray, scale: float) -> tuple[tuple[int, int], ...]:
    d = d / np.linalg.norm(d)
    a, b = (p - 5000 * d) * scale, (p + 5000 * d) * scale
    return (int(a[0]), int(a[1])), (int(b[0]), int(b[1]))


def draw_sample(sample: Sample, cell: int = 380, outlines: bool = True) -> np.ndarray:
    """An annotated BGR uint8 picture of one sample, its longer side ``cell`` px (without
    ``outlines`` only the raw image)."""
    h, w = sample.shape
    scale = cell / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = cv2.resize((sample.image * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if outlines:
        for b, colour in enumerate(BONE_COLOURS):
            m = cv2.resize(sample.masks[b], size, interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, colour, 1, cv2.LINE_AA)
    else:
        return out
    cp = sample.cortex_points
    d = cp[-1] - cp[0]
    a, b = _full_line(cp[0], d, scale)
    cv2.line(out, a, b, LINE, 1, cv2.LINE_AA)
    n = np.array([-d[1], d[0]])
    for p in sample.landmarks:
        a, b = _full_line(p, n, scale)
        cv2.line(out, a, b, (150, 150, 150), 1, cv2.LINE_AA)
    for p, colour in zip(sample.landmarks, (P_BLUM, P_TMC), strict=True):
        cv2.circle(out, (int(p[0] * scale), int(p[1] * scale)), 3, colour, -1, cv2.LINE_AA)
    for p in cp:
        cv2.circle(out, (int(p[0] * scale), int(p[1] * scale)), 2, LINE, -1, cv2.LINE_AA)
    if sample.schoettle_point is not None:
        c = sample.schoettle_point * scale
        r_ref = 2.5 / sample.spacing_mm[0] * scale
        cv2.circle(out, (int(c[0]), int(c[1])), max(2, int(round(r_ref))), SP, 1, cv2.LINE_AA)
        cv2.drawMarker(out, (int(c[0]), int(c[1])), SP, cv2.MARKER_CROSS, 6, 1)
    return out


def contact_sheet(
    seed: int,
    rows: int = 3,
    cols: int = 4,
    cell: int = 380,
    config: PhantomConfig | None = None,
    outlines: bool = True,
) -> np.ndarray:
    """A rows x cols grid: per cell the raw phantom's annotated picture and a caption."""
    sheet = np.full((rows * (cell + 22), cols * cell, 3), 30, np.uint8)
    for i in range(rows * cols):
        s = generate_phantom(sample_seed(seed, i), config, sample_id=f"phantom_{i:05d}")
        pic = draw_sample(s, cell, outlines)
        r, c = divmod(i, cols)
        y0, x0 = r * (cell + 22), c * cell
        sheet[y0 : y0 + pic.shape[0], x0 : x0 + pic.shape[1]] = pic
        caption = (
            f"{s.id} {s.meta['side'][0].upper()} flex {s.meta['flexion_deg']:.0f}"
            f" {s.shape[1]}x{s.shape[0]} {s.spacing_mm[0]:.3f}mm"
        )
        cv2.putText(
            sheet,
            caption,
            (x0 + 4, y0 + cell + 16),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.42,
            (230, 230, 230),
            1,
            cv2.LINE_AA,
        )
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/phantoms_sheet.png")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--cols", type=int, default=4)
    parser.add_argument("--cell", type=int, default=380)
    parser.add_argument("--no-outlines", action="store_true", help="raw images only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(args.seed, args.rows, args.cols, args.cell, outlines=not args.no_outlines)
    from datamodules.image_io import write_image

    write_image(out, sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
