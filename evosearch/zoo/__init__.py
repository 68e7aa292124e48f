"""The tiny offline model zoo: a Llama base, specialists fine-tuned from it, and lm-eval tasks over them."""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "ZooError", "ZooManifest", "build_zoo"]


def __getattr__(name: str) -> Any:
    # Lazily: `evosearch.zoo.cli` is loaded by every CLI verb, and the builder pulls in the trainer.
    if name in __all__:
        from evosearch.zoo import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
