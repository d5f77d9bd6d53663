"""Guidance as denoiser wrappers: a wrapper takes a denoiser and is one, so samplers never see a guidance flag.

Today: classifier-free guidance with a guidance interval.  Classifier guidance (ADM, EluCD),
autoguidance and self-guidance join as wrappers of the same shape; some need gradients through the
denoiser, which is why samplers never switch gradients off themselves.
"""

from typing import Callable

from diffrep.guidance.cfg import ClassifierFreeGuidance

Guidance = Callable[[object], object]
"""A function from a denoiser to a (guided) denoiser, e.g. ``lambda d: ClassifierFreeGuidance(d, 1.5)``."""

__all__ = ["ClassifierFreeGuidance", "Guidance"]
