"""jaxdet: object detection research in JAX/Flax as pure, jittable functions.

`jaxdet.load(workdir)` and `jaxdet.predict_images(...)` (inference on your own images,
`jaxdet.predict`) are imported on first use, so `import jaxdet` stays light.
"""

__version__ = "0.1.0"
__all__ = ["load", "predict_images"]


def __getattr__(name: str):
    if name in __all__:
        from jaxdet import predict

        return getattr(predict, name)
    raise AttributeError(f"module 'jaxdet' has no attribute {name!r}")
