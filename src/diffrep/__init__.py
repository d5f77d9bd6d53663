"""diffrep: one diffusion model as generator and representation learner."""

__version__ = "0.1.0"
