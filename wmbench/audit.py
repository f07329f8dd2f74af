"""The ``paper`` profile, audited: every setting the paper states, where, and the value we run.

One job: compare :data:`PAPER_SETTINGS` — the settings of the DeepTracer paper
(shared/seeds/deeptracer-paper.txt) and of the baselines and attacks it "tuned per their original
papers" (official values: shared/reference/methods.md, attacks.md), keyed in ``--set`` syntax — with
the values the code resolves at a profile. docs/paper-settings.md is its output (``wmbench list
settings --profile paper --format md > docs/paper-settings.md``, legend inside); ``tests/test_audit.py`` keeps it true.
A scope, ``key (scope)``, is a dataset for ``model.arch`` (what ``arch=None`` picks), a method for
``keys.filter`` (its default) or an item of a mapping; otherwise it only labels the row.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import pandas as pd

from wmbench.config import PROFILE_NAMES, build_settings, parse_set, resolve
from wmbench.errors import UserError
from wmbench.registry import ATTACKS, DATASETS, METHODS, MODELS

__all__ = ["PaperSetting", "PAPER_SETTINGS", "audit_table", "render_markdown"]

COLUMNS = ("setting", "paper", "where", "ours", "status", "note")


@dataclass(frozen=True)
class PaperSetting:
    """One setting. ``match``: "eq", "set" (same members), "range" (ours spans ``paper`` = (low, high)) or
    "sweep" (every value accepted); ``shown``: the printed paper value; ``section``: the heading."""

    key: str
    paper: Any = None
    where: str = ""
    status: str = "stated"
    note: str = ""
    match: str = "eq"
    shown: str = ""
    scope: str = ""
    section: str = ""


# Builders: S = stated (status="gap" for a gap), O = open, W = the values a sweep runs; many / opens = several.
def S(key: str, paper: Any, where: str, note: str = "", status: str = "stated", **kw: Any) -> PaperSetting:
    return PaperSetting(key, paper, where, status, note, **kw)


def O(key: str, note: str, where: str = "not stated", **kw: Any) -> PaperSetting:  # noqa: E743
    return PaperSetting(key, None, where, "open", note, shown="—", **kw)


def W(key: str, values: Sequence[Any], where: str, note: str = "", status: str = "stated", **kw: Any) -> PaperSetting:
    return PaperSetting(key, tuple(values), where, status, note, match="sweep", **kw)


def many(prefix: str, values: Mapping[str, Any], where: str, note: str = "") -> List[PaperSetting]:
    return [S(f"{prefix}.{k}", v, where, note) for k, v in values.items()]


def opens(prefix: str, notes: Mapping[str, str], where: str = "not stated") -> List[PaperSetting]:
    return [O(f"{prefix}.{k}", note, where) for k, note in notes.items()]


IMPL = "Paper: Implementation Details"
HYP = IMPL + "; App. Hyperparameter Selection"
ARCH = "Paper: Experimental Setup, Model Architectures"
T2 = "Paper: Table 2 (soft and hard label); App. (3) Hard Label Stealing"
REMOVAL = "Paper: App. Watermark Removal Attack Methods"
SCEN = "Paper: App. Robustness against Various Scenarios, Table 13"
SCHEDULE = ("DeepTracer trains 'all victim models' with one schedule (Implementation Details); wmbench trains "
            "every victim with the shared train.* section, comparable with the benign model")
NO_DATA = "not bundled offline (download-only); an ImageFolder copy works via imagefolder + datasets.imagefolder.path"
LABELS = dict(match="set", shown="soft and hard")

PAPER_SETTINGS: Tuple[PaperSetting, ...] = (
    # --- the shared schedule, data, verification, architectures --------------------------------------
    *many("train", {"optimizer": "adam", "lr": 1e-3, "lr_step": 10, "lr_gamma": 0.5}, IMPL,
          "'Adam optimizer (initial learning rate 0.001, halved every 10 epochs)'"),
    S("train.epochs", 100, IMPL, "'two 100-epoch phases': DeepTracer runs two phases of train.epochs each"),
    *opens("train", {"batch_size": "128, as MEA-Defender's code (the lineage the paper's schedule matches, methods.md §2)",
                     "weight_decay": "0: plain Adam"}),
    *opens("data", {"attacker_fraction": "the attacker's disjoint third of the training set (WRT, attacks.md §0)",
                    "split_seed": "1337, fixed across run seeds so every seed sees the same split (WRT)"}),
    S("verify.threshold", 0.2, IMPL + "; App. Proof of Guarantees", "'a 20% watermark success rate'; T = 0.2"),
    O("verify.alpha", "level of wmbench's Clopper–Pearson interval; the paper reports no interval"),
    S("model.arch", "naivenet", ARCH, "'NaiveNet … two convolutional and two fully connected layers'", scope="fmnist"),
    S("model.arch", "cwnet", ARCH, "'VGG-like … four convolutional and three fully connected'", scope="cifar10"),
    S("model.arch", "resnet18_cifar", ARCH, "ResNet18 (CIFAR stem)", scope="cifar100"),
    W("model.arch", ("resnet50", "densenet161", "efficientnet_b2"), ARCH + "; App. Table 16", scope="imagefolder"),
    # --- DeepTracer ------------------------------------------------------------------------------------
    S("methods.deeptracer.n_sources", 4, "Paper: Watermark Samples Construction; App. Table 20", "2×2 tiles"),
    S("methods.deeptracer.selection", "adaptive", "Paper: Source Classes Selection, Eqs. 1–2", "K-Means, K = 4"),
    S("methods.deeptracer.target", None, "Paper: Target Label Selection, Eqs. 3–4",
      "None = the least likely class under the benign model", shown="least likely class"),
    S("methods.deeptracer.sources", (), "Paper: Source Classes Selection, Eqs. 1–2",
      "empty = chosen by selection; a fixed list is a wmbench diagnostic (same composite across budgets)",
      shown="chosen by Eqs. 1–2"),
    *many("methods.deeptracer", {"phase1_ratio": 0.01, "phase2_ratio": 0.1}, IMPL, "'1% and 10% … in the first and "
          "second phases'"),
    S("methods.deeptracer.phase2_lr", 1e-3, IMPL, "both phases: Adam 1e-3 halved every 10 epochs"),
    S("methods.deeptracer.losses", "wm+intra+inter", "Paper: Eq. 6; Table 4", "all three terms"),
    *many("methods.deeptracer", {"lambda1": 1.0, "lambda2": 1.0, "lambda3": 0.01, "lambda4": 3.0}, HYP),
    O("methods.deeptracer.margin", "1.0, the Composite/MEA-Defender margin (methods.md §2.3)", "Paper: Eq. 5, no value"),
    O("methods.deeptracer.coupling_space", "logits: 'output feature vector … at the last layer'", "Paper: Eq. 5"),
    *opens("methods.deeptracer", {
        "centroid_momentum": "detached EMA of the clean samples' class means (methods.md §2.3)",
        "feature_space": "penultimate features of the benign model for the centroids",
        "pattern": "fixed quadrant order (sources in cluster order)",
        "target_pool": "1,000 training composites choose the target (methods.md §2.2)",
        "n_candidates": "|S_0| = 20,000 test composites before filtering (methods.md §2.4)",
        "min_wm_per_batch": "a floor so every batch holds watermark samples (methods.md §2.3)"}),
    W("methods.deeptracer.n_sources", (2, 4, 6, 8), "Paper: App. Table 20", scope="Table 20"),
    W("methods.deeptracer.selection", ("adaptive", "random"), "Paper: Fig. 5", scope="Fig. 5"),
    W("methods.deeptracer.losses", ("wm", "intra", "inter", "wm+intra", "wm+inter", "intra+inter", "wm+intra+inter"),
      "Paper: Table 4", scope="Table 4"),
    # --- key filtering ---------------------------------------------------------------------------------
    S("keys.filter", "two_stage", "Paper: Watermark Key Samples Generation, Eqs. 7–8", scope="deeptracer"),
    S("keys.top_m", 2000, HYP, "M = 2000"),
    S("keys.min_keys", 0, "Paper: Eq. 8", "S_K = TopK(S_1, M): no fallback key set", shown="no fallback"),
    S("keys.surrogate_arch", "alexnet_cifar", ARCH, "AlexNet (knockoffnets' CIFAR AlexNet, methods.md §2.1)"),
    S("keys.surrogate_arch", "resnet18", ARCH, "one surrogate for every dataset and no ImageNet ResNet18 registered "
      "(resnet18_cifar has the CIFAR stem); set keys.surrogate_arch for ImageNet runs", "gap", scope="ImageNet"),
    S("keys.surrogate_query_set", "tinyimagenet", ARCH, "'the training set for surrogate model is TinyImageNet': "
      f"{NO_DATA}; None = the owner's own training images", "gap"),
    *opens("keys", {"surrogate_epochs": "the victim's schedule length (methods.md §2.4)",
                    "surrogate_lr": "Adam 1e-3, constant", "surrogate_batch_size": "128, as train.batch_size",
                    "surrogate_budget": "every query image once"}),
    W("keys.surrogate_arch", ("alexnet_cifar", "cwnet", "resnet18_cifar", "mobilenet_v2"), "Paper: Table 21",
      scope="Table 21"),
    W("keys.filter", ("none", "two_stage"), "Paper: App. Table 22", "filter on other methods' keys", scope="Table 22"),
    # --- stealing attacks ------------------------------------------------------------------------------
    S("attacks.knockoff.labels", ("soft", "hard"), T2, **LABELS),
    *many("attacks.knockoff", {"epochs": 100, "batch_size": 64, "optimizer": "sgd", "lr": 0.01, "momentum": 0.5,
                               "weight_decay": 0.0, "lr_step": 60, "lr_gamma": 0.1}, "attacks.md §2.2 (knockoffnets)"),
    O("attacks.knockoff.policy", "random: the official code has no other policy (attacks.md §2.2); policy=adaptive "
      "is the bandit", "Paper: App. (3) describes Knockoff's RL selection, not the run"),
    O("attacks.knockoff.budget", "None = each pool image once (Table 18 sweep below)", "Paper: Table 2: not stated"),
    O("attacks.knockoff.query_set", "None = the attacker's split", "Paper: Table 2: not stated (attacks.md §1)"),
    W("attacks.knockoff.budget", (100_000, 200_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 20_000_000, 40_000_000),
      "Paper: App. Table 18", scope="Table 18"),
    W("attacks.knockoff.arch", ("cwnet", "alexnet_cifar", "vgg16", "resnet18_cifar", "densenet161"), "Paper: Table 6",
      scope="Table 6"),
    W("attacks.knockoff.query_set", ("cifar10", "cifar100", "fmnist", "nico", "tinyimagenet"), "Paper: App. Table 5",
      f"NICO and TinyImageNet: {NO_DATA}", status="gap", scope="Table 5"),
    W("attacks.knockoff.adv_eps", (0.01, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 1.0), SCEN + "a",
      scope="adversarial training"),
    W("attacks.knockoff.query_noise", (0.001, 0.005, 0.01, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0), SCEN + "b",
      scope="noisy inputs"),
    W("attacks.knockoff.query_sets", (("cifar100", "stl10", "fmnist", "gtsrb"),), SCEN + "c",
      f"STL10 and GTSRB: {NO_DATA}", status="gap", scope="distribution shift"),
    W("attacks.knockoff.optimizer", ("adagrad", "adamax", "rmsprop"), SCEN + "d", scope="optimizers"),
    W("attacks.knockoff.lr", (0.001, 0.003, 0.004, 0.005, 0.008, 0.01, 0.03, 0.05), SCEN + "d", scope="optimizers"),
    W("model.arch", ("squeezenet", "mobilenet_v2", "shufflenet", "densenet161", "vit_b_16", "resnet50"),
      "Paper: App. Table 14", "SqueezeNet and ShuffleNet are not registered models", status="gap", scope="Table 14",
      section="attacks.knockoff"),
    S("attacks.jbda.labels", ("soft", "hard"), T2, **LABELS),
    *many("attacks.jbda", {"seed_size": 100, "step": 0.1, "sigma": 3, "epochs": 20, "optimizer": "sgd", "lr": 0.1,
                           "momentum": 0.9, "batch_size": 64, "final_epochs": 100, "final_lr": 0.01},
          "attacks.md §2.1 (prediction-poisoning jacobian.py)"),
    O("attacks.jbda.tau", "3, Papernot et al.'s period (jbda.py)", "attacks.md §2.1: the reference code's τ is 5"),
    O("attacks.jbda.kappa", "400, Papernot et al.'s reservoir (jbda.py)", "attacks.md §2.1: 'with κ set'"),
    O("attacks.jbda.lr_step", "StepLR(30, 0.1) as knockoffnets' train_model", "attacks.md §2.1: 'StepLR'"),
    *opens("attacks.jbda", {"rounds": "ρ = 6 (Papernot's MNIST run, attacks.md §2.1 'recalled')",
                            "budget": "None = the rounds decide (100·2³ + 3·400 = 2,000 queries)"}),
    S("attacks.dfme.labels", ("soft", "hard"), T2, **LABELS),
    *many("attacks.dfme", {"budget": 20_000_000, "batch_size": 256, "nz": 256, "ngf": 64, "grad_m": 1,
                           "grad_epsilon": 1e-3, "d_iter": 5, "g_iter": 1, "loss": "l1", "optimizer": "sgd", "lr": 0.1,
                           "momentum": 0.9, "weight_decay": 5e-4, "lr_g": 1e-4, "iters_per_epoch": 50,
                           "milestones": (0.1, 0.3, 0.5), "lr_gamma": 0.3},
          "attacks.md §2.3 (datafree-model-extraction, CIFAR-10 run)"),
    O("attacks.dfme.div_weight", "hard label: the generator's class-diversity weight (attacks.md §2.5)"),
    S("attacks.dfms_hl.labels", "hard", "Paper: Related Work, Data-Free", "not in the paper's tables"),
    *many("attacks.dfms_hl", {"budget": 8_000_000, "nz": 100, "ngf": 64, "gan_lr": 2e-4, "gan_beta1": 0.5,
                              "gan_epochs": 200, "warmup_epochs": 200, "warmup_lr": 0.1},
          "attacks.md §2.4 (Hard-Label-Model-Stealing, CIFAR-10)"),
    O("attacks.dfms_hl.proxy_set", "synthetic images", "attacks.md §2.4: synthetic shapes or CIFAR-100 classes"),
    O("attacks.dfms_hl.div_weight", "500 on the generator's diversity term", "attacks.md §2.4: 10 (G), 500 (rounds)"),
    O("attacks.dfms_hl.lr", "SGD 0.01 in the alternating stage, constant (no cosine)"),
    S("attacks.distill.labels", "soft", "Paper: App. (4) Distillation-Based", "KL on soft labels, hard-label weight 0"),
    O("attacks.distill.temperature", "3 (WRT); sweep 1,3,5,7", "Paper: Fig. 8 sweeps T, values not listed"),
    S("attacks.distill.query_set", "all training data", "Paper: App. (3) Distillation-Based Stealing",
      "the attacker never gets the owner's data; None = the attacker's third", "gap"),
    *opens("attacks.distill", {"epochs": "100 as MEA-Defender's model_distillation.py (attacks.md §2.6)",
                               "optimizer": "Adam as MEA-Defender's script", "lr": "1e-3 as MEA-Defender's script",
                               "t2_scale": "Hinton's T² factor (MEA-Defender omits it)"}),
    # --- removal attacks -------------------------------------------------------------------------------
    *[s for name in ("ftll", "ftal", "rtll", "rtal") for s in [
        *many(f"attacks.{name}", {"epochs": 20, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "weight_decay": 5e-4,
                                  "batch_size": 100}, "attacks.md §3.1 (Adi et al., WatermarkNN fine-tune.py)",
              "variant defined in " + REMOVAL),
        O(f"attacks.{name}.targets", "ground-truth labels of the attacker's split (WRT: victim labels for RT*)",
          REMOVAL + ": 'original training data or query data'"),
        *([O(f"attacks.{name}.restore_head", "measured as is (black box, WRT); Adi swaps the head back "
             "(attacks.md §3.1)")] if name.startswith("rt") else [])]],
    S("attacks.transfer.epochs", 100, "Paper: App. Transfer Learning results", "'after 100 epochs'"),
    W("attacks.transfer.mode", ("ftll", "ftal", "rtll", "rtal"), "Paper: Fig. 12", "the four fine-tuning methods"),
    S("attacks.transfer.target_dataset", "mnist", REMOVAL, f"{NO_DATA}; digits stands in (STL10, ImageNet100 likewise)",
      "gap", scope="fmnist"),
    O("attacks.transfer.lr", "SGD 0.001, WRT's transfer-learning rate (attacks.md §3.5)"),
    O("attacks.transfer.head", "through the original head", "attacks.md §3.5: 'tested in the original label space'"),
    S("attacks.prune.rates", (0.0, 1.0), REMOVAL + "; Figs. 4, 11", "'from 0% to 100%'", match="range", shown="0 → 1"),
    *opens("attacks.prune", {"scope": "magnitude pruning per layer (torch l1_unstructured); scope=global ranks all",
                             "finetune_epochs": "0: the paper mentions no fine-tuning after pruning",
                             "include_bias": "weights only (WRT prunes biases too)"}),
    S("attacks.fineprune.rate", 0.8, "attacks.md §3.3 (Liu et al.)", "not in the paper"),
    O("attacks.fineprune.finetune_epochs", "10 (WRT)"),
    S("attacks.quantize.bits_list", (16, 8, 6, 4, 3, 2, 1), REMOVAL + "; Tables 3, 11"),
    O("attacks.quantize.granularity", "uniform per-tensor quantiser (attacks.md §3.4)", REMOVAL + ": scheme not stated"),
    O("attacks.quantize.finetune_epochs", "0: no fine-tuning after quantizing (WRT: 1)"),
    # --- evasion, ambiguity, adaptive, null models -----------------------------------------------------
    *[O(f"attacks.{name}.strengths", "attacks.md §3.7 ranges, extended towards collapse",
        "Paper: App. Fig. 9, strengths not stated") for name in ("pre_blur", "pre_noise", "pre_quant", "pre_crop")],
    *[s for name in ("detect_lof", "detect_if") for s in opens(f"attacks.{name}", {
        "features": "standardised penultimate features (attacks.md §4)",
        "response": "a uniformly random label (fits Tables 9–10, attacks.md §4)",
        "contamination": "1 % false positives on clean queries"}, "Paper: App. Tables 9–10, not stated")],
    S("attacks.ambiguity.method_config", 0.2, "Paper: App. Ambiguity Attacks, Table 12", "'20% of training samples to "
      "embed their counterfeit watermark'; the 80 % stealing part is the chain knockoff+ambiguity", scope="poison_rate"),
    *opens("attacks.ambiguity", {"method": "BadNets with another target and corner than the owner's",
                                 "epochs": "20 epochs of SGD 0.01 fine-tuning"}),
    *[s for name in ("adaptive_pattern", "adaptive_sources") for s in (
        S(f"attacks.{name}.n_tiles", 4, "Paper: App. Adaptive Attacks", "'composed of four primary task classes'"),
        O(f"attacks.{name}.epochs", "20 (SGD 0.01)", "Paper: Fig. 13 axis only"),
        O(f"attacks.{name}.composite_ratio", "composites 1:1 with clean samples (attacks.md §5)"))],
    W("attacks.independent.variant", ("clean", "mixup", "cutmix", "augmix", "method:composite", "method:mea_defender"),
      "Paper: App. Evaluation of False Positives, Table 17", "AugMix is not implemented", status="gap"),
    # --- baselines (methods.md: official code) ---------------------------------------------------------
    S("methods.badnets.position", "bottom_right", "Paper: App. (2) Compared Watermarking Methods"),
    *many("methods.badnets", {"patch_size": 3, "poison_rate": 0.05, "target": 1, "color": (1.0,)},
          "methods.md §3 (BackdoorBox BadNets.py)"),
    *many("methods.composite", {"class_a": 0, "class_b": 1, "target": 2, "normal_rate": 0.5, "mix_rate": 0.5,
                                "poison_rate": 0.1, "jitter": 3, "margin": 1.0, "contrastive_weight": 1.0},
          "methods.md §4 (composite-attack)"),
    O("train.epochs", SCHEDULE, "methods.md §4: 50 epochs", scope="composite", section="methods.composite"),
    *many("methods.abstract", {"n_generated": 100, "wm_per_batch": 2, "labels_file": "labels-cifar.txt"},
          "methods.md §5 (WatermarkNN)"),
    O("methods.abstract.preprocess", "the whole image resized (methods.md §5); official_centercrop as Adi's loader"),
    O("train.epochs", SCHEDULE, "methods.md §5: SGD 0.1, 60 epochs", scope="abstract", section="methods.abstract"),
    S("methods.content.text", "TEST", "Paper: App. (2) Compared Watermarking Methods"),
    S("methods.content.font_size", 10, "methods.md §6 (sbaresearch protecting_ip.py)"),
    *opens("methods.content", {"target": "1 for all three Zhang methods (one target, methods.md §6)",
                               "wm_rate": "1 % of the owner's data appended (DeepTracer's phase-1 share)"}),
    S("methods.noise.sigma", 0.4, "methods.md §6 (WRT zhang.py)"),
    O("methods.unrelated.source_dataset", "digits (sbaresearch: MNIST, WRT: Omniglot)", "methods.md §6; Paper: 'OOD'"),
    *many("methods.ewe", {"source": 8, "target": 0, "ratio": 2.0, "w_epochs": 10.0, "factors": (32.0, 32.0, 32.0),
                          "temperatures": (1.0, 1.0, 1.0), "metric": "cosine", "w_lr": 0.01, "max_lower_steps": 50,
                          "final_lower_steps": 5}, "methods.md §7 (entangled-watermark, FMNIST defaults)"),
    S("methods.ewe.ood_dataset", "mnist", "methods.md §7 (FMNIST)", f"MNIST: {NO_DATA}; digits stands in", "gap"),
    *opens("methods.ewe", {k: f"{v}, the official CIFAR-10 default (methods.md §7 lists no FMNIST value)"
                           for k, v in (("temp_lr", 0.1), ("threshold", 0.1), ("maxiter", 10))}),
    O("methods.ewe.pretrain_epochs", SCHEDULE, "methods.md §7: FMNIST 10 clean epochs"),
    *many("methods.margin", {"n_queries": 100, "wm_batch": 25, "pga_steps": 5, "step_size": 1 / 255, "weight": 0.1,
                             "discretize": True}, "methods.md §8 (margin-based-watermarking)"),
    O("train.epochs", SCHEDULE, "methods.md §8: SGD 0.1, 200 epochs", scope="margin", section="methods.margin"),
    *many("methods.mea_defender", {
        "class_a": 0, "class_b": 1, "target": 2, "mixer": "half", "jitter": 3, "phase1_poison_rate": 0.01,
        "phase2_lr": 1e-4, "phase2_epochs": 100, "phase2_normal_rate": 0.45, "phase2_poison_rate": 0.2,
        "evasion_rate": 0.008, "pool_size_phase1": 600, "pool_size_phase2": 1000, "kl_weight": 2.0,
        "kl_weight_boost": 12.0, "boost_every": 10, "contrastive_margin": 1.0, "contrastive_weight": 1.0,
        "weighting": "mgda", "mgda_normalization": "loss+", "n_keys": 1000}, "methods.md §9 (MEA-Defender code)"),
    *many("methods.fcw", {"sources": (0, 3), "target": 1, "fusion": "invisible", "alpha": 0.5, "mask_ratio": 0.002,
                          "mask_interval": 10, "wm_per_batch": 10}, "methods.md §10 (released configuration)",
          "not in the paper"),
    O("methods.fcw.n_triggers", "100 random fusions (methods.md §10 rec)", "methods.md §10: code takes the first 30"),
    O("methods.t2s.rehearsal_weight", "a reconstruction: no settings published (methods.md §11)"),
)

#: A ``None`` for these keys means the value of another key.
INHERITS = {"methods.deeptracer.phase2_lr": "train.lr", "keys.surrogate_epochs": "train.epochs",
            "methods.mea_defender.phase2_epochs": "train.epochs", "methods.ewe.pretrain_epochs": "train.epochs"}
#: Fields that name a registered model or dataset (a sweep value must exist there).
NAMED = {**dict.fromkeys(("arch", "surrogate_arch", "thief_arch"), MODELS), **dict.fromkeys(("query_set", "query_sets",
         "target_dataset", "ood_dataset", "proxy_set", "source_dataset", "surrogate_query_set"), DATASETS)}


class _Resolver:
    """The configs of one profile (no overrides), each resolved once."""

    def __init__(self, profile: str):
        self.profile, self.settings = profile, build_settings(profile)
        self.components: Dict[str, Tuple[Any, Any]] = {}

    def config(self, key: str) -> Tuple[Any, str, Any]:
        """(config, field, component class or None) of ``key``; UserError on a typo."""
        parse_set([f"{key}=0"])  # a known section, the right number of parts
        parts = key.split(".")
        config, cls = getattr(self.settings, parts[0], None), None
        if parts[0] in ("methods", "attacks"):
            prefix = ".".join(parts[:2])
            if prefix not in self.components:
                cls = (METHODS if parts[0] == "methods" else ATTACKS).get(parts[1])
                self.components[prefix] = (self.settings.component(parts[0], parts[1], cls.Config), cls)
            config, cls = self.components[prefix]
        if parts[-1] not in {f.name for f in dataclasses.fields(config)}:
            raise UserError(f"unknown setting {key!r}: no field {parts[-1]!r} there")
        return config, parts[-1], cls

    def value(self, entry: PaperSetting) -> Tuple[Any, str]:
        """Our effective value for ``entry`` and how to print it."""
        config, name, cls = self.config(entry.key)
        value = getattr(config, name)
        shown = None
        if entry.key == "model.arch" and entry.scope in DATASETS:
            value = config.arch_for(entry.scope)
        elif entry.key == "keys.filter" and entry.scope in METHODS and value is None:
            value = METHODS.get(entry.scope).default_key_filter
            shown = f"None (= {value})"
        elif isinstance(value, Mapping) and entry.scope:
            value = value.get(entry.scope)
            shown = f"{entry.scope}={_fmt(value)}"
        elif name == "labels" and getattr(cls, "label_modes", ()):  # the plan runs a cell per label mode
            value = tuple(cls.label_modes)
            shown = f"{', '.join(value)} (a cell each)"
        elif value is None and entry.key in INHERITS:
            value, _ = self.value(PaperSetting(INHERITS[entry.key]))
            shown = f"None (= {INHERITS[entry.key]} = {_fmt(value)})"
        return value, shown or _fmt(value)

    def rejected(self, entry: PaperSetting) -> List[str]:
        """The values of a sweep entry the config refuses, or that name nothing registered."""
        config, name, _ = self.config(entry.key)
        out = []
        for value in entry.paper:
            try:
                resolve(type(config), self.profile, {name: value}, section=entry.key)
                names = value if isinstance(value, (list, tuple)) else (value,)
                ok = name not in NAMED or all(n in NAMED[name] or n == "attacker" for n in names)
            except UserError:
                ok = False
            if not ok:
                out.append(_fmt(value))
        return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _norm(value: Any) -> Any:
    """Comparable form: sequences as lists, numbers as floats to 12 digits, booleans kept apart."""
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, bool):
        return ("bool", value)
    return float(f"{value:.12g}") if isinstance(value, (int, float)) else value


def _holds(entry: PaperSetting, ours: Any, rejected: List[str]) -> bool:
    if entry.match == "sweep":
        return not rejected
    if entry.match == "set":
        return isinstance(ours, (list, tuple)) and sorted(map(str, ours)) == sorted(map(str, entry.paper))
    if entry.match == "range":
        return isinstance(ours, (list, tuple)) and bool(ours) and _norm((min(ours), max(ours))) == _norm(entry.paper)
    return _norm(ours) == _norm(entry.paper)


def audit_table(profile: str = "paper") -> pd.DataFrame:
    """One row per entry of :data:`PAPER_SETTINGS` resolved at ``profile``: setting, paper, where, ours, status
    (stated / open / gap / MISMATCH), note; the index ("section") is each row's heading."""
    if profile not in PROFILE_NAMES:
        raise UserError(f"unknown profile {profile!r}; available: {', '.join(PROFILE_NAMES)}")
    resolver = _Resolver(profile)
    rows, sections = [], []
    for entry in PAPER_SETTINGS:
        ours, shown = resolver.value(entry)
        rejected = resolver.rejected(entry) if entry.match == "sweep" else []
        note = entry.note
        if entry.match == "sweep":
            shown += " (default)"
            run = f"--sweep {entry.key}=" + ",".join(_fmt(v).replace(" ", "") for v in entry.paper)
            note = "; ".join(n for n in (note, f"not accepted: {', '.join(rejected)}" if rejected else run) if n)
        held = entry.status != "open" and _holds(entry, ours, rejected)
        status = "open" if entry.status == "open" else "stated" if held else "gap" if entry.status == "gap" else "MISMATCH"
        parts = entry.key.split(".")
        sections.append(entry.section or ".".join(parts[:2] if parts[0] in ("methods", "attacks") else parts[:1]))
        rows.append(dict(setting=entry.key + (f" ({entry.scope})" if entry.scope else ""), where=entry.where,
                         paper=entry.shown or _fmt(entry.paper), ours=shown, status=status, note=note))
    table = pd.DataFrame(rows, columns=list(COLUMNS), index=pd.Index(sections, name="section"))
    table.attrs["profile"] = profile
    return table


def render_markdown(table: pd.DataFrame) -> str:
    """The audit as a Markdown document: how to regenerate it, sources, legend, counts, one table per section."""
    profile = table.attrs.get("profile", "paper")
    counts = table["status"].value_counts()
    summary = ", ".join(f"{int(counts[s])} {s}" for s in ("stated", "open", "gap", "MISMATCH") if s in counts)
    lines = [
        f"# The paper's settings, audited (profile `{profile}`)", "",
        "Generated by `wmbench/audit.py` from `PAPER_SETTINGS` and the configs the code resolves; do not edit by "
        f"hand. Regenerate: `wmbench list settings --profile {profile} --format md > docs/paper-settings.md`; `tests/test_audit.py` "
        "fails when this file is stale.", "",
        "Sources: *Paper* = DeepTracer (AAAI 2026; shared/seeds/deeptracer-paper.txt), by its section, equation, "
        "table and figure names; *methods.md* / *attacks.md* = shared/reference/, the official code of the baselines "
        "and attacks, which the paper follows ('tuned per their original papers', Implementation Details).", "",
        "Status: **stated** — ours equals the source's value; **open** — the source is silent or ambiguous, the note "
        "gives our choice; **gap** — the value needs what wmbench lacks, the note says what stands in; **MISMATCH** — "
        "a stated value differs from ours. `key (scope)`: one dataset, method or table of a key; sweep rows list the "
        "values a table or figure runs (stated = `--sweep` runs them all).", "",
        f"{len(table)} settings: {summary}.",
    ]
    previous = None
    for section, row in zip(table.index, table.itertuples(index=False)):
        if section != previous:
            lines += ["", f"## `{section}`", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
            previous = section
        lines.append("| " + " | ".join(str(getattr(row, c)).replace("|", "\\|") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"

