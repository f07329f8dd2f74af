"""An example wmbench plugin: one watermark method and one attack, found through entry points."""
from wmbench_example_plugin.cornerpatch import CornerPatch, CornerPatchConfig
from wmbench_example_plugin.weightnoise import WeightNoise, WeightNoiseConfig

__all__ = ["CornerPatch", "CornerPatchConfig", "WeightNoise", "WeightNoiseConfig"]
