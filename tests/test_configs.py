"""Every config under configs/ loads and builds its detector (no parameters are made)."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from jaxdet import detectors

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "configs").glob("*/*.py")
    if p.name != "__init__.py"
)


def test_configs_are_found():
    assert len(CONFIGS) > 30 and "configs.atss.atss_tiny_shapes" in CONFIGS


@pytest.mark.parametrize("module", CONFIGS)
def test_config_builds_its_detector(module):
    config = importlib.import_module(module).get_config()
    det = detectors.build(config)
    assert isinstance(det, detectors.Detector), (module, type(det))
