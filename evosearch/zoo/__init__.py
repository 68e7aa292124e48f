"""The tiny offline model zoo: a Llama base, specialists fine-tuned from it, and lm-eval tasks over them."""

from evosearch.zoo.build import PRESETS, ZooError, ZooManifest, build_zoo

__all__ = ["PRESETS", "ZooError", "ZooManifest", "build_zoo"]
