"""selfcond: DDAE++ self-conditioning, an architecture option (arXiv 2505.10999)."""

from __future__ import annotations

from dataclasses import dataclass

from diffrep.errors import DiffrepError
from diffrep.nets.capabilities import require
from diffrep.plugins.base import Plugin

@dataclass
class SelfCondOptions:
    source: int = -1                # block whose mean features condition the later blocks; −1 = the middle


class SelfCond(Plugin):
    """selfcond — DDAE++ self-conditioning (Xiang et al., arXiv 2505.10999).

    An architecture option rather than a loss: the net is built with
    :class:`diffrep.nets.common.SelfCondition`, which adds an MLP of the mean of block ``source``'s
    features to the conditioning vector of every later block (DiT) or of the decoder (U-Net,
    from its middle block).  Its weights are part of the net, so sampling, the EMA and exported
    models keep it; the last layer starts at zero, so training starts from the plain net.
    About 1% more compute.  No loss term.
    """

    name = "selfcond"

    def __init__(self, options: SelfCondOptions):
        super().__init__()
        if options.source == 0:
            raise DiffrepError("selfcond: source=0 turns self-conditioning off; use a block index or -1 (the middle)")
        self.options = options

    @classmethod
    def net_options(cls, options) -> dict:
        return {"self_condition": options.source}

    def setup(self, net, ema, process, x0_shape, pixel_shape) -> None:
        require(net, "self_condition", "selfcond", "the net was built without it; list the plug-in in the run's "
                "config (--plugin selfcond) so the trainer builds it in")
