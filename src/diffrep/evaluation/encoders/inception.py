"""The FID Inception-v3 network, in the parameter layout of the pytorch-fid weights file.

FID (Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", arXiv 1706.08500) and Inception Score are defined on TensorFlow's 2015-12-05
Inception-v3 graph (Szegedy et al., "Rethinking the Inception Architecture for Computer Vision",
arXiv 1512.00567).  pytorch-fid ported that graph to a PyTorch state dict,
``pt_inception-2015-12-05-6726825d.pth``, whose keys follow torchvision's ``Inception3`` names
(``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_mean``, …, ``fc.weight``).

The TensorFlow graph differs from torchvision's Inception3 in a few places, all reproduced here:

* the average pools inside the Mixed blocks ignore the zero padding (``count_include_pad=False``);
* the last block (``Mixed_7c``) max-pools, not average-pools, in its pool branch;
* 1008 logits and no auxiliary classifier;
* BatchNorm with eps 0.001 and no ``num_batches_tracked`` buffer (the file has none).

The net takes N×3×299×299 images already scaled to about [-1, 1]; resizing and scaling happen in the encoder wrapper.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffrep.evaluation.encoders.weights import check_state_dict, read_state_dict

FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
"""Where pytorch-fid publishes the ported TensorFlow 2015-12-05 Inception-v3 weights."""

NUM_LOGITS = 1008
"""TensorFlow's Inception graph has 1008 output classes (1000 ImageNet classes plus unused ones)."""

POOL3_DIM = 2048

__all__ = ["FID_WEIGHTS_URL", "FIDInceptionV3", "load_fid_inception"]


class FrozenBatchNorm2d(nn.Module):
    """Inference-only BatchNorm (always uses the running statistics) with eps 0.001.

    It holds ``weight``, ``bias``, ``running_mean`` and ``running_var`` only: no ``num_batches_tracked``
    buffer, so its state dict has exactly the keys of the FID weights file.
    """

    def __init__(self, channels: int, eps: float = 0.001):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)


class ConvBN(nn.Module):
    """Bias-free convolution, BatchNorm, ReLU (torchvision's ``BasicConv2d``: keys ``conv.*`` and ``bn.*``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int = 1, padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = FrozenBatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _same_avg_pool() -> nn.AvgPool2d:
    """3×3 stride-1 average pool that, like TensorFlow's, averages over the unpadded pixels only."""
    return nn.AvgPool2d(kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35×35 block (Mixed_5b/c/d): 1×1, 5×5, double 3×3 and pool branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.pool = _same_avg_pool()
        self.branch_pool = ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5x5 = self.branch5x5_2(self.branch5x5_1(x))
        b3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5x5, b3x3dbl, self.branch_pool(self.pool(x))], dim=1)


class InceptionB(nn.Module):
    """35×35 → 17×17 reduction (Mixed_6a): strided 3×3, double 3×3 and max-pool branches."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3x3dbl, self.pool(x)], dim=1)


class InceptionC(nn.Module):
    """17×17 block (Mixed_6b/c/d/e) with factorised 7×7 convolutions (1×7 then 7×1)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.pool = _same_avg_pool()
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7x7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7x7dbl = conv(b7x7dbl)
        return torch.cat([self.branch1x1(x), b7x7, b7x7dbl, self.branch_pool(self.pool(x))], dim=1)


class InceptionD(nn.Module):
    """17×17 → 8×8 reduction (Mixed_7a): 3×3, 7×7-then-3×3 and max-pool branches."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3x3 = self.branch3x3_2(self.branch3x3_1(x))
        b7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3x3, b7x7x3, self.pool(x)], dim=1)


class InceptionE(nn.Module):
    """8×8 block (Mixed_7b/c) with split 1×3 / 3×1 outputs.

    ``max_pool`` picks the pool branch's pooling: the 2015-12-05 graph average-pools (without the padding) in
    Mixed_7b but max-pools in Mixed_7c.
    """

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.branch1x1 = ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1) if max_pool else _same_avg_pool()
        self.branch_pool = ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3x3 = self.branch3x3_1(x)
        b3x3 = torch.cat([self.branch3x3_2a(b3x3), self.branch3x3_2b(b3x3)], dim=1)
        b3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        b3x3dbl = torch.cat([self.branch3x3dbl_3a(b3x3dbl), self.branch3x3dbl_3b(b3x3dbl)], dim=1)
        return torch.cat([self.branch1x1(x), b3x3, b3x3dbl, self.branch_pool(self.pool(x))], dim=1)


class FIDInceptionV3(nn.Module):
    """TensorFlow's 2015-12-05 Inception-v3 as used by FID (arXiv 1706.08500; architecture arXiv 1512.00567).

    ``forward(x)`` takes float N×3×299×299 images scaled to [-1, 1] and returns ``(pool3, logits)``: the
    N×2048 global average pool after Mixed_7c (the FID features) and the N×1008 logits ``pool3·Wᵀ`` for
    Inception Score (``+ b`` only with ``logits_bias``), both float32 even under autocast.
    """

    def __init__(self, logits_bias: bool = False):
        super().__init__()
        self.logits_bias = logits_bias
        self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = ConvBN(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(POOL3_DIM, NUM_LOGITS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.features():
            x = layer(x)
        pool3 = x.float().mean(dim=(2, 3))
        logits = F.linear(pool3, self.fc.weight, self.fc.bias if self.logits_bias else None)
        return pool3, logits.float()

    def features(self) -> list[nn.Module]:
        """The layers from the input to Mixed_7c's N×2048×8×8 output, in order."""
        return [self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1, self.Conv2d_3b_1x1,
                self.Conv2d_4a_3x3, self.maxpool2, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c]


def load_fid_inception(weights: str | Path | None = None, *, logits_bias: bool = False) -> FIDInceptionV3:
    """The FID Inception-v3 in eval mode with the given weights (arXiv 1706.08500); its logits omit the classifier
    bias unless ``logits_bias`` (the original IS code and torch-fidelity omit it; keep it only to reproduce tools
    that do not).

    ``weights=None`` downloads pytorch-fid's official file from :data:`FID_WEIGHTS_URL` (cached by
    ``torch.hub``); otherwise it is a local ``.safetensors`` file or a ``torch.save``'d state dict.  The state
    dict must match the network exactly (``*.num_batches_tracked`` BatchNorm counters, which the official file
    lacks but a torchvision-style re-save may have, are ignored).
    """
    state, source = read_state_dict(weights, FID_WEIGHTS_URL, "FID Inception-v3")
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    net = FIDInceptionV3(logits_bias)
    check_state_dict(state, net.state_dict(), "FID Inception-v3", source)
    net.load_state_dict(state, strict=True)
    return net.eval()
