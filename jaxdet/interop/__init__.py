"""Weights of other libraries' detectors in jaxdet (`torchvision`: Faster / Mask R-CNN)."""
