"""Standard (Inception) FID from a user-supplied pytorch-fid weights file; never downloads.

``pytorch_fid.inception.InceptionV3`` always fetches its weights from the internet, so this
module rebuilds the same network locally: torchvision's ``Inception3`` (1008 classes, no
auxiliary head) with the FID-specific blocks from ``pytorch_fid.inception`` swapped in,
loaded from ``pt_inception-2015-12-05-6726825d.pth`` given by path, and cut into the same
four feature blocks as ``InceptionV3``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from pytorch_fid.inception import (
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE_1,
    FIDInceptionE_2,
)
from torchvision.models.inception import Inception3

from .metrics import frechet_distance

__all__ = [
    "FID_WEIGHTS_FILENAME",
    "FIDInceptionFeatures",
    "build_fid_inception_net",
    "inception_features",
    "load_fid_inception",
    "standard_fid",
]

FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}


def build_fid_inception_net() -> Inception3:
    """The FID Inception network (pytorch-fid's ``fid_inception_v3``) with random weights.

    Its ``state_dict`` has exactly the keys and shapes of pytorch-fid's weights file.
    """
    net = Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FIDInceptionFeatures(nn.Module):
    """Equivalent of ``pytorch_fid.inception.InceptionV3([block])`` built from ``net``.

    Input: ``[n, 3, H, W]`` in [0, 1]; resized bilinearly to 299x299 and scaled to
    [-1, 1] as in pytorch-fid.  Output: ``[n, dims]`` features (spatially averaged for the
    final block, as pytorch-fid's ``adaptive_avg_pool2d`` for the earlier ones).
    """

    def __init__(self, net: Inception3, dims: int = 2048) -> None:
        super().__init__()
        if dims not in BLOCK_INDEX_BY_DIM:
            raise ValueError(f"dims must be one of {sorted(BLOCK_INDEX_BY_DIM)}, got {dims}")
        self.dims = dims
        last = BLOCK_INDEX_BY_DIM[dims]
        blocks = [
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3,
             nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b,
             net.Mixed_6c, net.Mixed_6d, net.Mixed_6e],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks[:last + 1])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        for block in self.blocks:
            x = block(x)
        if x.shape[2] != 1 or x.shape[3] != 1:
            x = F.adaptive_avg_pool2d(x, output_size=(1, 1))
        return x.flatten(1)


_NET_CACHE: dict[tuple[str, int, str], Inception3] = {}


def load_fid_inception(weights_path: str | Path, dims: int = 2048,
                       device: str | torch.device = "cpu") -> FIDInceptionFeatures:
    """Build the FID Inception feature extractor from a local weights file.

    The loaded network is cached (one at a time, keyed by path, mtime and device).
    Raises FileNotFoundError (naming the path) when the file does not exist and
    RuntimeError when the file does not match the architecture.
    """
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Inception FID weights not found: {path} (expected pytorch-fid's "
            f"{FID_WEIGHTS_FILENAME}; it is never downloaded automatically)")
    key = (str(path.resolve()), path.stat().st_mtime_ns, str(device))
    net = _NET_CACHE.get(key)
    if net is None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = build_fid_inception_net()
        net.load_state_dict(state, strict=True)
        net = net.to(device).eval()
        _NET_CACHE.clear()  # keep at most one ~100 MB network alive
        _NET_CACHE[key] = net
    return FIDInceptionFeatures(net, dims=dims)


def _to_rgb01(images: torch.Tensor) -> torch.Tensor:
    x = images.detach()
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [n,H,W], [n,1,H,W] or [n,3,H,W], got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.clamp(0.0, 1.0)


def inception_features(model: FIDInceptionFeatures, images: torch.Tensor, batch: int = 100
                       ) -> np.ndarray:
    """Inception features ``[n, dims]`` (float64) of grey or RGB images in [0, 1]."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, images.shape[0], batch):
        xb = _to_rgb01(images[i:i + batch]).to(device)
        out.append(model(xb).cpu().double())
    return torch.cat(out).numpy()


def standard_fid(gen_images: torch.Tensor, real_images: torch.Tensor,
                 weights_path: str | Path, batch: int = 100, *, dims: int = 2048,
                 device: str | torch.device = "cpu") -> float:
    """Standard FID between two image sets using pytorch-fid's Inception weights.

    Images: ``[n, 1, 28, 28]`` (or ``[n, 28, 28]``/RGB) in [0, 1] or uint8; grey images are
    repeated to 3 channels and resized to 299x299 as pytorch-fid does.
    """
    model = load_fid_inception(weights_path, dims=dims, device=device)
    fa = inception_features(model, gen_images, batch)
    fb = inception_features(model, real_images, batch)
    return frechet_distance(fa, fb)
