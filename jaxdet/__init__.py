"""jaxdet: object detection research in JAX/Flax as pure, jittable functions."""

__version__ = "0.1.0"
