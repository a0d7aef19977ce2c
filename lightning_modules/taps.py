"""The network's output and its GradNorm taps (tap plumbing beside the network).

A task head hands its coarse map to its own output path through :func:`tap` (an alias,
``coarse.view_as(coarse)``) and to the re-injection through the map itself. The alias is then
the only way from the last shared layer ``W^l`` to that output, and the gradient that the one
backward of ``sum_l sum_t w_t^l L_t^l`` leaves at it is exactly ``w_t^l dL_t^l / d coarse``:
``GradNorm.backward_fused`` turns it into ``w_t^l grad_{W^l} L_t^l`` through the coarse
predictor's two 1x1 layers only (docs/ARCHITECTURE.md, "GradNorm taps").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


def tap(coarse: Tensor) -> Tensor:
    """The GradNorm tap of a head: a view of its coarse map that feeds that head's output only."""
    return coarse.view_as(coarse)


@dataclass
class SHGNOutput:
    """Predictions of every hourglass (deep supervision).

    Attributes:
        stacks: ``stacks[l][task]`` is ``(B, C_task, S, S)`` for hourglass ``l`` (0 = first);
            ``seg`` holds logits, ``lm`` and ``roi`` heat-maps; task order = network's tasks.
        taps: ``taps[l][task] = (alias,)``: the head's :func:`tap`, the only way from ``W^l``
            to ``stacks[l][task]``, reaching nothing else; empty when the producer has none.
    """

    stacks: list[dict[str, Tensor]]
    taps: list[dict[str, tuple[Tensor, ...]]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Tensor]:
        """Predictions of the last hourglass (what inference uses)."""
        return self.stacks[-1]

    def gradnorm_taps(self, task_names: list[str]) -> list[list[tuple[Tensor, ...]]] | None:
        """``taps`` as ``[l][t]`` in the order of ``task_names`` (the loss columns), or None if
        this output has no taps for every hourglass and task."""
        if len(self.taps) != len(self.stacks) or not all(
            name in taps for taps in self.taps for name in task_names
        ):
            return None
        return [[taps[name] for name in task_names] for taps in self.taps]
