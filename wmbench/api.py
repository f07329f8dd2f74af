"""The interfaces every watermark method and attack implements, and the records they exchange.

Lifecycle (WRT vocabulary): a :class:`WatermarkMethod` runs ``keygen`` (watermark samples for
training and the verification key set), ``embed`` (train the watermarked victim),
``finalize_keys`` (optional post-processing that needs the victim, e.g. key filtering) and
``verify`` (query a suspect with the keys, return :class:`~wmbench.verification.Evidence`).

An :class:`Attack` takes the victim — a :class:`~wmbench.blackbox.Blackbox` when it ``needs``
only queries, a private copy of the model when it needs weights — plus the attacker's data in
an :class:`AttackContext`, and returns an :class:`AttackOutcome` (the suspect model and its
metrics). Capability flags (``needs`` on attacks, ``exposes`` and ``min_classes`` on methods)
let the runner skip incompatible pairs with a recorded reason instead of crashing.
"""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from wmbench.blackbox import Blackbox
from wmbench.cache import ArtifactStore
from wmbench.config import TrainConfig, VerifyConfig
from wmbench.data import DataBundle
from wmbench.models import build_model
from wmbench.training import BatchSource, LossFn, cross_entropy, fit, predict_logits
from wmbench.utils import derive_seed, seed_everything
from wmbench.verification import Evidence, evaluate_evidence


@dataclass(frozen=True)
class KeySet:
    """Watermark samples of one method.

    ``embed_x/embed_y``: samples mixed into training (may be empty for fine-tuning methods).
    ``verify_x/verify_y``: the verification key set (queries and their watermark labels).
    ``meta``: JSON-able facts (target label, source classes, trigger source, sizes...).
    """

    embed_x: Tensor
    embed_y: Tensor
    verify_x: Tensor
    verify_y: Tensor
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embed_x.shape[0] != self.embed_y.shape[0] or self.verify_x.shape[0] != self.verify_y.shape[0]:
            raise ValueError("KeySet: samples and labels differ in length")

    def tensors(self) -> Dict[str, Tensor]:
        return {"embed_x": self.embed_x, "embed_y": self.embed_y, "verify_x": self.verify_x, "verify_y": self.verify_y}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> "KeySet":
        return cls(tensors["embed_x"], tensors["embed_y"], tensors["verify_x"], tensors["verify_y"], dict(meta))


@dataclass
class Context:
    """What a method or attack may use inside one cell: data, schedule, device, seeds, cache.

    ``seed`` is the cell's seed; components derive their own streams with :meth:`seed_for`.
    """

    data: DataBundle
    arch: str
    train: TrainConfig
    verify: VerifyConfig
    seed: int
    device: torch.device
    store: ArtifactStore
    profile: str
    progress: Optional[bool] = None
    #: Returns the cell's benign model (same architecture, trained without a watermark, cached);
    #: set by the runner. Methods that select sources/targets with a benign model use it.
    benign_provider: Optional[Callable[[], nn.Module]] = None

    def benign_model(self) -> nn.Module:
        if self.benign_provider is None:
            raise RuntimeError("this context has no benign model provider")
        return self.benign_provider()

    @torch.no_grad()
    def features(self, model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
        """Penultimate features (``model.features``) of ``x``, batched, on CPU."""
        model.eval()
        model.to(self.device)
        outs = [model.features(x[i : i + batch_size].to(self.device)).float()
                for i in range(0, x.shape[0], batch_size)]
        return torch.cat(outs).cpu() if outs else torch.empty(0)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        return (self.data.channels, self.data.size, self.data.size)

    def seed_for(self, *labels: object) -> int:
        return derive_seed(self.seed, *labels)

    def new_model(self, arch: Optional[str] = None, seed: Optional[int] = None) -> nn.Module:
        """A freshly initialised model (seeded) for this dataset's shape."""
        if seed is not None:
            seed_everything(seed)
        return build_model(
            arch or self.arch,
            in_channels=self.data.channels,
            num_classes=self.data.num_classes,
            input_size=self.data.size,
            mean=self.data.mean,
            std=self.data.std,
        )

    def fit(
        self,
        model: nn.Module,
        data: BatchSource | Sequence[Tensor],
        *,
        cfg: Optional[TrainConfig] = None,
        loss_fn: LossFn = cross_entropy,
        seed: int = 0,
        desc: str = "train",
        **kwargs: Any,
    ) -> list:
        """Train with the shared engine (:func:`wmbench.training.fit`)."""
        return fit(model, data, cfg or self.train, loss_fn=loss_fn, device=self.device, seed=seed,
                   desc=desc, progress=self.progress, **kwargs)

    def predict(self, model: nn.Module, x: Tensor) -> Tensor:
        return predict_logits(model, x, device=self.device)


@dataclass
class AttackContext(Context):
    """A :class:`Context` for attacks.

    ``data`` is the attacker's view: its ``owner`` and ``test`` splits are empty, so an attack
    can use only ``data.attacker`` (plus public datasets it loads itself, e.g. a cross-dataset
    query set through ``data_root``). ``victim_arch`` is known only to attacks that assume
    architecture knowledge; stealing attacks default to it for the stolen model."""

    victim_arch: str = ""
    data_root: Optional[str] = None
    download: bool = False
    #: What an *adaptive* adversary knows about the watermark: ``{"method": name,
    #: "method_config": {...}, "keys_meta": {...}}``. Filled only for attacks whose class sets
    #: ``knows_watermark = True`` (e.g. adaptive attacks that know DeepTracer's source classes);
    #: empty for every other attack.
    watermark: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class AttackOutcome:
    """An attack's result: the suspect model and its own metrics (queries, wall seconds...)."""

    model: nn.Module
    queries: int = 0
    metrics: Dict[str, float] = field(default_factory=dict)
    #: Intermediate models along the attack's strength axis, ``(step_name, step, model)`` — e.g.
    #: ``("epoch", 3, model)`` for fine-tuning or ``("rate", 0.5, model)`` for pruning. The runner
    #: evaluates each (accuracy, fidelity, WSR, verdict) into the cell's ``curve`` rows.
    snapshots: List[Tuple[str, float, nn.Module]] = field(default_factory=list)


class Component(abc.ABC):
    """Shared metadata of methods and attacks (shown by ``wmbench list``)."""

    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    year: ClassVar[int] = 0
    category: ClassVar[str] = ""
    Config: ClassVar[type]
    hidden: ClassVar[bool] = False  # left out of ``all``

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()


class WatermarkMethod(Component):
    """A black-box (trigger-set) watermark. Subclasses implement ``keygen`` and ``embed``."""

    #: What the deployed victim offers a suspect-side attacker.
    exposes: ClassVar[FrozenSet[str]] = frozenset({"probs", "labels", "weights"})
    #: Fewest classes the construction needs (e.g. sources + a distinct target).
    min_classes: ClassVar[int] = 2
    #: Key-set post-processing used when the run does not set ``keys.filter``
    #: ("none" or "two_stage", see :mod:`wmbench.methods.keyfilter`).
    default_key_filter: ClassVar[str] = "none"

    @abc.abstractmethod
    def keygen(self, ctx: Context) -> KeySet:
        """Build the watermark samples and the verification key set."""

    @abc.abstractmethod
    def embed(self, ctx: Context, keys: KeySet) -> nn.Module:
        """Train and return the watermarked victim."""

    def finalize_keys(self, ctx: Context, victim: nn.Module, keys: KeySet) -> KeySet:
        """Post-process keys once the victim exists (default: unchanged)."""
        return keys

    def verify(
        self,
        suspect: nn.Module | Blackbox,
        keys: KeySet,
        *,
        num_classes: int,
        verify: VerifyConfig,
        device: torch.device,
        benign_hits: Optional[int] = None,
    ) -> Evidence:
        """Hard-label verification: WSR of the suspect's top-1 labels on the key set."""
        hits = count_hits(suspect, keys.verify_x, keys.verify_y, device=device)
        n = int(keys.verify_y.shape[0])
        return evaluate_evidence(
            hits, n, num_classes=num_classes, threshold=verify.threshold,
            benign_hits=benign_hits, benign_n=n if benign_hits is not None else None, alpha=verify.alpha,
        )


def count_hits(suspect: nn.Module | Blackbox, x: Tensor, y: Tensor, *, device: torch.device) -> int:
    """How many of ``x`` the suspect labels as ``y`` (top-1)."""
    if x.shape[0] == 0:
        return 0
    if isinstance(suspect, Blackbox):
        out = suspect(x)
        labels = out if suspect.hard_label else out.argmax(1)
    else:
        labels = predict_logits(suspect, x, device=device).argmax(1)
    return int((labels == y).sum().item())


class Attack(Component):
    """An attack on a (watermarked or stolen) model.

    ``needs``: victim access required — ``{"probs"}`` (soft-label queries), ``{"labels"}``
    (hard-label queries) or ``{"weights"}`` (white-box). Attacks whose ``Config`` has a
    ``labels`` field ("soft"/"hard") are expanded into one cell per label mode unless the
    user fixes it; :meth:`needs_for` then gives the access of each variant.
    """

    needs: ClassVar[FrozenSet[str]] = frozenset({"probs"})
    label_modes: ClassVar[Tuple[str, ...]] = ()
    #: Whether the suspect model is cached in the artifact store. Attacks whose suspect is not a
    #: plain :class:`~wmbench.models.Classifier` (input preprocessing, query-detection wrappers)
    #: set this to False and are recomputed with their cell.
    cacheable: ClassVar[bool] = True
    #: Adaptive attacks that assume knowledge of the watermark set this; the runner then fills
    #: :attr:`AttackContext.watermark`.
    knows_watermark: ClassVar[bool] = False

    @classmethod
    def needs_for(cls, config: Any) -> FrozenSet[str]:
        labels = getattr(config, "labels", None)
        if labels == "hard":
            return frozenset({"labels"})
        if labels == "soft":
            return frozenset({"probs"})
        return cls.needs

    def incompatibility(self, method: type, data: DataBundle) -> Optional[str]:
        """A reason why this attack cannot run against ``method`` on ``data``, or None."""
        return None

    @abc.abstractmethod
    def run(self, target: Blackbox | nn.Module, ctx: AttackContext) -> AttackOutcome:
        """Attack ``target`` and return the suspect model."""


def private_copy(model: nn.Module) -> nn.Module:
    """A deep copy, so white-box attacks never modify their input model."""
    return copy.deepcopy(model)
