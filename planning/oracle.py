"""Ground-truth maps in place of predictions ("oracle"): the training targets of a sample.

Masks, landmark heat-maps and the cortex-line ROI are rendered in the network frame exactly as
the DataModule renders training targets (``datamodules.transforms.SampleTransform`` without
augmentation, ``datamodules.targets``). Running the plan geometry on these maps measures the
geometry alone (decoding, line fit, mapping back, Schoettle construction), without the network.
"""

from __future__ import annotations

from datamodules.sample import Sample
from datamodules.targets import roi_heatmap
from datamodules.transforms import SampleTransform
from geometry.heatmaps import HeatmapCodec
from planning.predict import NetworkMaps


def oracle_maps(
    sample: Sample, size: int = 256, sigma: float = 6.0, codec: HeatmapCodec | None = None
) -> NetworkMaps:
    """Network-frame target maps of ``sample``'s primary rater (no augmentation).

    Args:
        sample: the sample (masks and first rater's annotation are used).
        size: network side S (ignored when ``codec`` is given).
        sigma: heat-map Gaussian sigma in network pixels (ignored when ``codec`` is given).
        codec: the checkpoint's heat-map codec (``planning.model_io``): its input size and
            sigma, so the oracle draws what that model was trained to predict.
    """
    codec = codec or HeatmapCodec(size, size, sigma)
    view = SampleTransform(codec.input_size)(sample)
    return NetworkMaps(
        seg=view.masks.astype("float32"),
        lm=codec.encode(view.landmarks, view.landmark_visible),
        roi=roi_heatmap(view.cortex_points, codec.heatmap_size, codec.sigma),
        frame=view.frame,
    )
