"""Several trained heads on one frozen backbone, scored as the mean of their patch scores.

Runs that differ only in their seed rank the same test parts differently (docs/RESULTS.md: I-AUROC
0.950-0.988 on the demo's set for seeds 0-2), and each run's highest good-part scores sit on different
parts. The mean of two runs' patch scores keeps what both find and damps what one alone finds, so the
ensemble's good parts spread less and a calibrated threshold catches more. Only the fusion adaptor and
the discriminator are trained, so the members share the backbone's features: an ensemble of N costs one
backbone pass and N heads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from training.model.bridgenet import BridgeNet


class HeadEnsemble(nn.Module):
    """`forward(rgb, depth) -> (scores, maps)` as `BridgeNet.forward`, on the mean of the members' raw patch
    scores. The members must share one backbone module and agree on features, modalities and size; the
    first member's backbone, pooling and smoothing serve all."""

    def __init__(self, members: Sequence[BridgeNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        shape = (first.feature_dim, first.modalities, first.image_size, first.grid)
        for i, member in enumerate(members[1:], start=1):
            if member.backbone is not first.backbone:
                raise ValueError(f"member {i} has its own backbone: the members must share the first's")
            if (member.feature_dim, member.modalities, member.image_size, member.grid) != shape:
                raise ValueError(
                    f"member {i} (features, modalities, size, grid) "
                    f"{(member.feature_dim, member.modalities, member.image_size, member.grid)} differ from {shape}"
                )
        self.members = nn.ModuleList(members)
        self.image_size = first.image_size
        self.modalities = first.modalities

    @property
    def heads(self) -> list[BridgeNet]:
        return [cast(BridgeNet, member) for member in self.members]

    def forward(self, rgb: Tensor | None, depth: Tensor | None) -> tuple[Tensor, Tensor]:
        first, *_ = heads = self.heads
        rows = first.to_rows(first.fuse(*first.embed(rgb, depth)))
        batch = rows.shape[0] // (first.grid * first.grid)
        patch = torch.stack([h.discriminate_rows(h.adapt_rows(rows)) for h in heads]).mean(dim=0)
        return first.outputs(patch.reshape(batch, first.grid, first.grid))
