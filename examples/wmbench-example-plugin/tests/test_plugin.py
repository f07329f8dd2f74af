"""The plugin passes wmbench's contract checks (the same ones every built-in passes)."""
from wmbench.testing import parametrize_with_checks
from wmbench_example_plugin import CornerPatch, WeightNoise


@parametrize_with_checks([CornerPatch, WeightNoise])
def test_wmbench_contract(plugin, check):
    check(plugin)
