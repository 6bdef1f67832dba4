"""Package versions recorded beside every run, so a result names the stack that produced it."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = [
    "drift-lite",
    "torch",
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "math-verify",
]


def package_versions() -> dict:
    """Python and key package versions ("missing" when not installed)."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return found
