"""Guidance as denoiser wrappers: a wrapper takes a denoiser and is one, so samplers never see a guidance flag.

Classifier-free guidance with a guidance interval (:mod:`~diffrep.guidance.cfg`), autoguidance by a weaker model
(:mod:`~diffrep.guidance.auto`) and ADM classifier guidance (:mod:`~diffrep.guidance.classifier`), composed from one
command-line spelling (:mod:`~diffrep.guidance.spec`).  Classifier guidance takes gradients through its classifier,
which is why samplers never switch gradients off themselves.
"""

from typing import Callable

from diffrep.guidance.auto import Autoguidance
from diffrep.guidance.cfg import ClassifierFreeGuidance
from diffrep.guidance.classifier import ClassifierGuidance, NoisyClassifier

Guidance = Callable[[object], object]
"""A function from a denoiser to a (guided) denoiser, e.g. ``lambda d: ClassifierFreeGuidance(d, 1.5)``."""

__all__ = ["Autoguidance", "ClassifierFreeGuidance", "ClassifierGuidance", "Guidance", "NoisyClassifier"]
