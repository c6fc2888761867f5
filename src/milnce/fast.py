"""Fast inference path of the video tower (placeholder: eager)."""
from __future__ import annotations
import torch
from torch import nn
from .model import VideoTower


class FastVideoNet(nn.Module):
    def __init__(self, net: VideoTower, precision: str = "fp32") -> None:
        super().__init__()
        self.net = net

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.net(video)
