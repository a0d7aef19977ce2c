"""Calibration-sphere detector: time per image size and accuracy on phantoms with a sphere.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/bench_sphere.py [--n 30]

Prints the wall time of ``find_sphere_candidates`` on noise and phantom images up to 4k px
(target <= 1 s each), and on ``--n`` phantoms with the sphere enabled: the fraction found, the
radius error (median, max), how many are within 1 % and how often the reported bound
(``sphere_uncertainty``) covers the error or flags the plan; on phantoms without a sphere, how many
false spheres.
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from datamodules.phantoms import PhantomConfig, generate_phantom
from geometry.pixel_spacing import MAX_SPHERE_UNCERTAINTY, sphere_uncertainty
from geometry.spacing import detect_calibration_sphere, find_sphere_candidates


def timed(img: np.ndarray) -> str:
    """Wall and CPU seconds of one full candidate search (CPU time is robust to a busy box)."""
    t, c = time.perf_counter(), time.process_time()
    find_sphere_candidates(img)
    return f"{time.perf_counter() - t:.3f} wall / {time.process_time() - c:.3f} cpu"


def main() -> None:
    """Run the timing and accuracy benchmark."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30, help="phantoms with and without a sphere")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    base = generate_phantom(1, PhantomConfig(p_sphere=1.0)).image
    print("time per image (s):")
    for side in (800, 2000, 4000):
        noise = rng.random((side, side), dtype=np.float32)
        f = side / max(base.shape)
        ph = cv2.resize(base, None, fx=f, fy=f, interpolation=cv2.INTER_LINEAR)
        print(f"  {side:>5} px  noise {timed(noise)}  phantom {timed(ph)}")
    errs, bounds, missed, false_pos = [], [], 0, 0
    for seed in range(args.n):
        s = generate_phantom(10_000 + seed, PhantomConfig(p_sphere=1.0))
        truth = s.meta.get("sphere")
        det = detect_calibration_sphere(s.image)
        if truth is None:
            false_pos += det is not None
            continue
        if det is None or np.hypot(*(det.center - truth["centre_px"])) > 0.2 * truth["radius_px"]:
            missed += 1
            continue
        errs.append(100 * (det.radius_px / truth["radius_px"] - 1))
        bounds.append(100 * sphere_uncertainty(det))
    e = np.abs(errs) if errs else np.full(1, np.nan)
    print(
        f"phantoms with a sphere: {len(errs)} found, {missed} missed; |radius error| % "
        f"median {np.median(e):.2f}, max {e.max():.2f}, within 1 %: {np.mean(e <= 1):.0%}"
    )
    b, cap = np.array(bounds), 100 * MAX_SPHERE_UNCERTAINTY
    print(f"spacing bound 3 blur / R: covers the error in {np.sum(e <= np.maximum(b, cap))} of "
          f"{len(b)}; above {cap:.0f} % (plan flagged) in {np.sum(b > cap)} of {len(b)}")
    for seed in range(args.n):
        s = generate_phantom(20_000 + seed, PhantomConfig(p_sphere=0.0))
        false_pos += detect_calibration_sphere(s.image) is not None
    print(f"false spheres on phantoms without one: {false_pos}")


if __name__ == "__main__":
    main()
