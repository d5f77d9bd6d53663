"""The backbone capability protocol: what a net declares it offers to plug-ins, samplers and probes.

Every net offers ``taps`` (``net.tap_names``; ``net(x, t, cond, taps=...)`` returns those hidden
states) and has ``num_classes``.  Beyond that a net lists in ``net.capabilities`` which of these it has,
and a plug-in asks with :func:`require` instead of probing attribute names:

- ``label_embedding``: ``net.y_embedder``, the module embedding class labels (class-conditional nets);
- ``token_grid``: ``net.blocks`` (transformer blocks taking ``(tokens, conditioning)``), ``net.pos_embed``,
  ``net.grid`` (tokens per side), ``net.patch_size``, ``net.hidden_size``;
- ``self_condition``: ``net.self_cond``, DDAE++'s self-conditioning MLP.
"""

from __future__ import annotations

from torch import nn

from diffrep.errors import DiffrepError

CAPABILITIES = ("label_embedding", "token_grid", "self_condition")


def capabilities_of(net: nn.Module) -> frozenset[str]:
    """The capabilities ``net`` declares (none for a net that declares nothing)."""
    return frozenset(getattr(net, "capabilities", ()))


def require(net: nn.Module, capability: str, who: str, fix: str) -> None:
    """Refuse a net without ``capability`` with a one-line error: ``who`` needs it; ``fix`` says what to do."""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}: one of {', '.join(CAPABILITIES)}")
    if capability not in capabilities_of(net):
        raise DiffrepError(f"{who} needs a net with {capability.replace('_', ' ')}: {fix}")
