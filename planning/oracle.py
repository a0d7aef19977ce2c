"""Ground-truth maps in place of predictions ("oracle"): the training targets of a sample.

Masks, landmark heat-maps and the cortex-line ROI are rendered in the network frame exactly as
the DataModule renders training targets (``datamodules.transforms.SampleTransform`` without
augmentation, ``datamodules.targets``). Running the plan geometry on these maps measures the
geometry alone (decoding, line fit, mapping back, Schoettle construction), without the network.
"""

from __future__ import annotations

from datamodules.sample import Sample
from datamodules.targets import landmark_heatmaps, roi_heatmap
from datamodules.transforms import SampleTransform
from planning.predict import NetworkMaps


def oracle_maps(sample: Sample, size: int = 256, sigma: float = 6.0) -> NetworkMaps:
    """Network-frame target maps of ``sample``'s primary rater (no augmentation).

    Args:
        sample: the sample (masks and first rater's annotation are used).
        size: network side S.
        sigma: heat-map Gaussian sigma in network pixels (paper: 6 at S = 256).
    """
    view = SampleTransform(size)(sample)
    return NetworkMaps(
        seg=view.masks.astype("float32"),
        lm=landmark_heatmaps(view.landmarks, view.landmark_visible, size, sigma),
        roi=roi_heatmap(view.cortex_points, size, sigma),
        frame=view.frame,
    )
