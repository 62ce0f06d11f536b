"""Networks. Inputs are uint8 frame stacks; scaling to [0, 1] happens inside the network."""

from __future__ import annotations

import torch
from torch import nn


class MarioNet(nn.Module):
    """The tutorial's MarioNet (the Nature-DQN torso): 3 convolutions, 2 linear layers -> Q-values."""

    def __init__(self, in_channels: int = 4, n_actions: int = 2, frame_size: int = 84):
        super().__init__()
        if frame_size != 84:
            raise ValueError(f"MarioNet expects 84x84 frames, got {frame_size}x{frame_size}")
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3136, 512), nn.ReLU(),
            nn.Linear(512, n_actions),
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        # Frames stay uint8 end to end (4x smaller replay, cheaper copies); scale here.
        return self.net(obs.float().div_(255.0))


NETWORKS: dict[str, type[nn.Module]] = {"MarioNet": MarioNet}


def build_network(name: str, **kwargs) -> nn.Module:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}: known are {', '.join(NETWORKS)}")
    return NETWORKS[name](**kwargs)
