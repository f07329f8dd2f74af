"""A third-party plugin used by the tests: a BadNets variant deployed behind a label-only API."""
from wmbench.methods.badnets import BadNets
from wmbench.registry import register_method


@register_method("labelonly_badnets")
class LabelOnlyBadNets(BadNets):
    """BadNets whose victim answers only top-1 labels (so soft-label stealing is incompatible)."""

    exposes = frozenset({"labels"})
    hidden = True
