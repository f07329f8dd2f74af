"""One small registry for methods, attacks, datasets and models.

Built-ins are listed in a static ``name -> "module:attr"`` map and imported on first use, so
``wmbench list`` stays fast. Third-party plugins register through the entry-point groups
``wmbench.methods``, ``wmbench.attacks``, ``wmbench.datasets`` and ``wmbench.models``, through
:func:`load_plugin` (``--plugin MODULE`` on the CLI), or by using the decorators directly.
A ``package.module:Attr`` dotted path is accepted wherever a name is.
"""
from __future__ import annotations

import importlib
import logging
from importlib import metadata
from typing import Any, Callable, Dict, Iterable, List, Optional

from wmbench.errors import UserError

log = logging.getLogger(__name__)


def _import_target(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


class Registry:
    """A name -> object map with lazy built-ins and entry-point plugins.

    Parameters
    ----------
    kind: str
        Singular noun used in messages ("method", "attack", ...).
    builtins: dict
        ``name -> "module:attr"`` for the built-in entries, imported on first use.
    group: str
        Entry-point group scanned for third-party plugins.
    """

    def __init__(self, kind: str, builtins: Dict[str, str], group: str):
        self.kind = kind
        self.group = group
        self._builtins = dict(builtins)
        self._entries: Dict[str, Any] = {}
        self._entry_points_loaded = False

    # -- registration -------------------------------------------------------------------
    def register(self, name: Optional[str] = None) -> Callable[[Any], Any]:
        """Decorator: ``@register_method("badnets")``. Sets ``obj.name`` when missing."""

        def decorator(obj: Any) -> Any:
            key = name or getattr(obj, "name", None) or obj.__name__.lower()
            own = vars(obj).get("name") if hasattr(obj, "__dict__") else getattr(obj, "name", None)
            if not own or not isinstance(own, str):  # set when missing (not inherited from a parent)
                try:
                    setattr(obj, "name", key)
                except (AttributeError, TypeError):
                    pass
            existing = self._entries.get(key)
            if existing is not None and existing is not obj:
                log.warning("%s %r re-registered by %s", self.kind, key, getattr(obj, "__module__", obj))
            self._entries[key] = obj
            return obj

        return decorator

    # -- look-up ------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name in self._entries:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the built-ins
                log.warning("could not load %s plugin %r: %s", self.kind, ep.name, exc)
                continue
            if ep.name not in self._entries:
                self.register(ep.name)(obj)

    def names(self) -> List[str]:
        """All known names (built-in, registered and entry-point plugins), sorted."""
        self._load_entry_points()
        return sorted(set(self._builtins) | set(self._entries))

    def get(self, name: str) -> Any:
        """Return the registered object, importing a built-in on first use.

        Raises :class:`UserError` naming the available entries when ``name`` is unknown.
        """
        if name in self._entries:
            return self._entries[name]
        if name in self._builtins:
            obj = _import_target(self._builtins[name])
            self._entries.setdefault(name, obj)
            return self._entries[name]
        if ":" in name:
            try:
                obj = _import_target(name)
            except (ImportError, AttributeError) as exc:
                raise UserError(f"cannot import {self.kind} {name!r}: {exc}") from None
            return self.register(name)(obj)
        self._load_entry_points()
        if name in self._entries:
            return self._entries[name]
        raise UserError(
            f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none)'}"
        )

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def all(self) -> Dict[str, Any]:
        """Every entry, loaded."""
        return {n: self.get(n) for n in self.names()}

    def resolve_list(self, spec: Iterable[str] | str) -> List[str]:
        """Expand ``"all"`` or ``"a,b"`` (or a list) into validated names."""
        items = spec.split(",") if isinstance(spec, str) else list(spec)
        items = [s.strip() for s in items if s and s.strip()]
        if not items:
            raise UserError(f"no {self.kind} given; available: {', '.join(self.names())}")
        if items == ["all"]:
            return [n for n in self.names() if not getattr(self.get(n), "hidden", False)]
        for item in items:
            self.get(item)
        return items


METHODS = Registry(
    "method",
    {
        "badnets": "wmbench.methods.badnets:BadNets",
        "composite": "wmbench.methods.composite:Composite",
        "abstract": "wmbench.methods.abstract:Abstract",
        "content": "wmbench.methods.zhang:Content",
        "noise": "wmbench.methods.zhang:Noise",
        "unrelated": "wmbench.methods.zhang:Unrelated",
        "fcw": "wmbench.methods.fcw:FunctionCoupled",
        "deeptracer": "wmbench.methods.deeptracer:DeepTracer",
        "ewe": "wmbench.methods.ewe:EWE",
        "margin": "wmbench.methods.margin:MarginBased",
        "mea_defender": "wmbench.methods.mea_defender:MEADefender",
        "t2s": "wmbench.methods.t2s:T2S",
    },
    "wmbench.methods",
)
ATTACKS = Registry(
    "attack",
    {
        "none": "wmbench.attacks.none:NoAttack",
        "knockoff": "wmbench.attacks.knockoff:Knockoff",
        "jbda": "wmbench.attacks.jbda:JBDA",
        "dfme": "wmbench.attacks.dfme:DFME",
        "dfms_hl": "wmbench.attacks.dfms_hl:DFMSHL",
        "distill": "wmbench.attacks.distill:Distill",
        "independent": "wmbench.attacks.independent:Independent",
        "ftll": "wmbench.attacks.finetune:FTLL",
        "ftal": "wmbench.attacks.finetune:FTAL",
        "rtll": "wmbench.attacks.finetune:RTLL",
        "rtal": "wmbench.attacks.finetune:RTAL",
        "prune": "wmbench.attacks.prune:Prune",
        "fineprune": "wmbench.attacks.prune:FinePrune",
        "quantize": "wmbench.attacks.quantize:Quantize",
        "transfer": "wmbench.attacks.transfer:Transfer",
        "pre_blur": "wmbench.attacks.preprocess:PreBlur",
        "pre_noise": "wmbench.attacks.preprocess:PreNoise",
        "pre_quant": "wmbench.attacks.preprocess:PreQuant",
        "pre_crop": "wmbench.attacks.preprocess:PreCrop",
        "pre_randcrop": "wmbench.attacks.preprocess:PreRandCrop",
        "detect_lof": "wmbench.attacks.detect:DetectLOF",
        "detect_if": "wmbench.attacks.detect:DetectIF",
        "ambiguity": "wmbench.attacks.ambiguity:Ambiguity",
        "adaptive_pattern": "wmbench.attacks.adaptive:AdaptivePattern",
        "adaptive_sources": "wmbench.attacks.adaptive:AdaptiveSources",
        "adaptive_infer": "wmbench.attacks.adaptive:AdaptiveInfer",
    },
    "wmbench.attacks",
)
DATASETS = Registry(
    "dataset",
    {
        "fmnist": "wmbench.data.fmnist:FashionMNIST",
        "digits": "wmbench.data.digits:Digits",
        "synthetic": "wmbench.data.synthetic:Synthetic",
        "cifar10": "wmbench.data.cifar:CIFAR10",
        "cifar100": "wmbench.data.cifar:CIFAR100",
        "imagefolder": "wmbench.data.imagefolder:ImageFolderData",
        "mnist": "wmbench.data.mnist_family:MNIST",
        "kmnist": "wmbench.data.mnist_family:KMNIST",
        "emnist": "wmbench.data.mnist_family:EMNIST",
    },
    "wmbench.datasets",
)
MODELS = Registry(
    "model",
    {
        "naivenet": "wmbench.models.naivenet:naivenet",
        "cwnet": "wmbench.models.cwnet:cwnet",
        "alexnet_cifar": "wmbench.models.alexnet_cifar:alexnet_cifar",
        "resnet18_cifar": "wmbench.models.resnet_cifar:resnet18_cifar",
        "resnet50": "wmbench.models.torchvision_models:resnet50",
        "densenet161": "wmbench.models.torchvision_models:densenet161",
        "efficientnet_b2": "wmbench.models.torchvision_models:efficientnet_b2",
        "vgg16": "wmbench.models.torchvision_models:vgg16",
        "mobilenet_v2": "wmbench.models.torchvision_models:mobilenet_v2",
        "vit_b_16": "wmbench.models.torchvision_models:vit_b_16",
        "tinycnn": "wmbench.models.naivenet:tinycnn",
    },
    "wmbench.models",
)

register_method = METHODS.register
register_attack = ATTACKS.register
register_dataset = DATASETS.register
register_model = MODELS.register


def get_method(name: str) -> Any:
    return METHODS.get(name)


def get_attack(name: str) -> Any:
    return ATTACKS.get(name)


def get_dataset(name: str) -> Any:
    return DATASETS.get(name)


def list_methods() -> List[str]:
    return METHODS.names()


def list_attacks() -> List[str]:
    return ATTACKS.names()


def list_datasets() -> List[str]:
    return DATASETS.names()


def list_models() -> List[str]:
    return MODELS.names()


def load_plugin(module: str) -> None:
    """Import a plugin module (``--plugin MODULE``); its decorators register its entries."""
    if not isinstance(module, str) or not module.strip():
        raise UserError(f"--plugin needs a module name such as mypkg.plugins, got {module!r}")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"cannot import plugin module {module!r}: {exc}; give an importable module path") from None
    except Exception as exc:  # the module itself is broken: name it, not a traceback of its import
        raise UserError(f"plugin module {module!r} failed while being imported: {type(exc).__name__}: {exc}; "
                        "fix the module (python -c 'import MODULE' shows the traceback)") from None
