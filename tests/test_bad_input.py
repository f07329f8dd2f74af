"""The bad-input matrix (RELIABILITY.md): every command and the Python API against values that are
NaN, infinite, negative, zero, out of range, of the wrong type, repeated or empty, against paths
that are files, missing, unwritable or on a full disk, and against corrupt inputs of every kind
wmbench reads (config files, idx / CIFAR / ImageFolder data, plugins, cell records, result tables,
artifacts).

Bad input must give exit code 2, exactly one non-empty ``wmbench: error: ...`` line on stderr
that says what was wrong (and, where there is a list, what is accepted), nothing on stdout and no
change to any folder; the API raises :class:`UserError` with a one-line message. Errors inside a
cell (a plugin raising, a full artifact disk) record that cell as failed with its reason while the
rest of the grid completes. Almost every case fails at validation, before anything trains.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple, Union

import pytest

import wmbench
from conftest import PLUGIN_DIR
from wmbench import cache
from wmbench.cli import main
from wmbench.errors import CorruptArtifact, UserError
from wmbench.spec import GridSpec

TINY = ["--set", "datasets.synthetic.train_size=300", "--set", "datasets.synthetic.test_size=100",
        "--set", "train.epochs=1"]
# "{out}" is the case's output folder; argparse keeps the last of repeated options, so a case
# (or a special test's own --out) overrides any of these by appending it.
RUN = ["run", "--methods", "badnets", "--attacks", "none", "--datasets", "synthetic", "--profile", "smoke",
       "--executor", "serial", "--no-progress", "--out", "{out}"]
GRID = ["--methods", "badnets", "--datasets", "synthetic", "--profile", "smoke", "--out", "{out}"]


def _cli(argv: Sequence[str]) -> Tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured (also the log lines of cells)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def _tree(root: Path) -> Dict[str, int]:
    """Every path under ``root`` with its modification time: the folder's snapshot."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def _one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and err.endswith("\n"), f"expected one line, got {err!r}"
    assert lines[0].startswith("wmbench: error: ") and len(lines[0]) > len("wmbench: error: ") + 10, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------------------------------
# Inputs built per case (under ctx.tmp / "in"; the output folder is ctx.out, never created)
# ------------------------------------------------------------------------------------------
@dataclass
class Ctx:
    tmp: Path
    out: Path
    mp: pytest.MonkeyPatch
    request: pytest.FixtureRequest

    def path(self, name: str) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def folder(self, name: str) -> Path:
        path = self.path(name)
        path.mkdir()
        return path

    def run_copy(self) -> Path:
        """A copy of the module's finished run folder (ok and failed cells, artifacts, tables)."""
        return Path(shutil.copytree(self.request.getfixturevalue("plugin_run")["out"], self.path("run")))

    def cell(self, run: Path, status: str = "ok") -> Path:
        return next(p for p in sorted((run / "cells").glob("*.json")) if json.loads(p.read_text())["status"] == status)


def _file(name: str, content: Union[str, bytes]) -> Callable[[Ctx], Path]:
    def make(ctx: Ctx) -> Path:
        path = ctx.path(name)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path
    return make


def _config(name: str, text: Union[str, bytes]) -> Callable[[Ctx], List[str]]:
    return lambda ctx: [*RUN, "--config", _file(name, text)(ctx)]


def _idx(images_magic: int = 2051, labels_magic: int = 2049, n: int = 4, cut: int = 0, label: int = 1,
         n_labels: int = -1, gz: bool = False) -> Callable[[Ctx], List[str]]:
    """Fashion-MNIST idx files (all four; train and test the same) spoiled as asked."""
    def make(ctx: Ctx) -> List[str]:
        root = ctx.path("fmnist")
        root.mkdir()
        images = struct.pack(">IIII", images_magic, n, 28, 28) + bytes(n * 28 * 28)
        labels = struct.pack(">II", labels_magic, n if n_labels < 0 else n_labels) + bytes([label]) * (
            n if n_labels < 0 else n_labels)
        for stem, data in (("train-images-idx3-ubyte", images[:len(images) - cut]), ("train-labels-idx1-ubyte", labels),
                           ("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
            (root / (stem + (".gz" if gz else ""))).write_bytes(data)  # gz: plain bytes under a .gz name
        return [*RUN, "--datasets", "fmnist", "--data-root", root]
    return make


def _cifar(content: bytes, trust: bool) -> Callable[[Ctx], List[str]]:
    """A torchvision-format CIFAR-10 folder of garbage; ``trust``: skip torchvision's md5 check."""
    def make(ctx: Ctx) -> List[str]:
        import torchvision

        folder = ctx.path("cifar/cifar-10-batches-py")
        folder.mkdir(parents=True)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
            (folder / name).write_bytes(content)
        if trust:
            ctx.mp.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
        return [*RUN, "--datasets", "cifar10", "--data-root", folder.parent]
    return make


def _images(bad: bool = False, empty_class: bool = False, val: Sequence[str] = ()) -> Callable[[Ctx], List[str]]:
    """An ImageFolder tree (two classes of three PNGs) with a fake .jpg, an empty class or val/ classes."""
    def make(ctx: Ctx) -> List[str]:
        from PIL import Image

        root = ctx.path("images")
        for cls in ("a", "b"):
            (root / "train" / cls).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / "train" / cls / f"{i}.png")
        if bad:
            (root / "train" / "a" / "broken.jpg").write_text("not an image")
        if empty_class:
            (root / "train" / "c").mkdir()
        for cls in val:
            (root / "val" / cls).mkdir(parents=True)
        return [*RUN, "--datasets", "imagefolder", "--data-root", root]
    return make


def _plugin(name: str, source: str) -> Callable[[Ctx], List[str]]:
    def make(ctx: Ctx) -> List[str]:
        _file(f"plugins/{name}.py", source)(ctx)
        ctx.mp.setattr(sys, "dont_write_bytecode", True)  # no __pycache__ in the snapshot
        ctx.mp.syspath_prepend(str(ctx.tmp / "in" / "plugins"))
        return [*RUN, "--plugin", name]
    return make


def _spoiled_cell(command: str, spoil: Callable[[Dict[str, Any]], Any]) -> Callable[[Ctx], List[str]]:
    """The finished run with its ok cell record spoiled (``spoil`` returns the new JSON value)."""
    def make(ctx: Ctx) -> List[str]:
        run = ctx.run_copy()
        cell = ctx.cell(run)
        record = json.loads(cell.read_text())
        new = spoil(record)
        cell.write_text(new if isinstance(new, str) else json.dumps(new))
        return ["report", run] if command == "report" else ["show", cell.stem, "--out", run]
    return make


def _metric(value: Any) -> Callable[[Dict[str, Any]], Dict[str, Any]]:
    return lambda r: {**r, "metrics": {**r["metrics"], "victim": {**r["metrics"]["victim"], "acc": value}}}


def _table(name: str, content: Union[str, bytes]) -> Callable[[Ctx], List[str]]:
    """A folder holding only a results table (a committed reference report) with ``content``."""
    return lambda ctx: ["report", _file(f"ref/{name}", content)(ctx).parent]


def _bad_seed_csv(ctx: Ctx) -> List[str]:
    lines = (ctx.request.getfixturevalue("plugin_run")["out"] / "results.csv").read_text().splitlines()
    column = lines[0].split(",").index("seed")
    rows = [",".join("x" if i == column else v for i, v in enumerate(line.split(","))) for line in lines[1:]]
    return _table("results.csv", "\n".join([lines[0], *rows]) + "\n")(ctx)


# ------------------------------------------------------------------------------------------
# The command-line matrix: (id, argv or a builder of it, fragments the one error line must hold)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    argv: Union[Tuple[str, ...], Callable[[Ctx], Sequence[Any]]]
    expect: Tuple[str, ...]


def C(id: str, argv: Union[Sequence[str], Callable[[Ctx], Sequence[Any]]], *expect: str) -> Case:
    return Case(id, argv if callable(argv) else tuple(argv), expect)


def run(*extra: str) -> List[str]:
    return [*RUN, *extra]


def sets(item: str) -> List[str]:
    return run("--set", item)


CLI_CASES = [
    # --set: NaN, infinite, negative, zero, out of range, wrong type, unknown, malformed
    C("set-lr-nan", sets("train.lr=nan"), "train.lr must be a finite number"),
    C("set-lr-inf", sets("train.lr=inf"), "train.lr must be a finite number"),
    C("set-lr-negative", sets("train.lr=-0.1"), "train.lr must be > 0"),
    C("set-epochs-zero", sets("train.epochs=0"), "train.epochs must be >= 1"),
    C("set-epochs-fraction", sets("train.epochs=1.5"), "train.epochs must be an integer"),
    C("set-batch-size-zero", sets("train.batch_size=0"), "train.batch_size must be >= 1"),
    C("set-weight-decay-negative", sets("train.weight_decay=-0.1"), "train.weight_decay must be >= 0"),
    C("set-momentum-negative", sets("train.momentum=-1"), "train.momentum must be >= 0"),
    C("set-lr-step-negative", sets("train.lr_step=-1"), "train.lr_step must be >= 0"),
    C("set-lr-gamma-zero", sets("train.lr_gamma=0"), "train.lr_gamma must be > 0"),
    C("set-optimizer-unknown", sets("train.optimizer=adamw9"), "train.optimizer must be one of adam, sgd"),
    C("set-amp-not-bool", sets("train.amp=maybe"), "train.amp must be true or false"),
    C("set-attacker-fraction-above-1", sets("data.attacker_fraction=1.5"), "data.attacker_fraction must be in (0, 1)"),
    C("set-owner-size-zero", sets("data.owner_size=0"), "data.owner_size must be a positive integer"),
    C("set-split-seed-negative", sets("data.split_seed=-1"), "data.split_seed must be a non-negative integer"),
    C("set-threshold-zero", sets("verify.threshold=0"), "verify.threshold must be in (0, 1]"),
    C("set-threshold-above-1", sets("verify.threshold=1.5"), "verify.threshold must be in (0, 1]"),
    C("set-alpha-nan", sets("verify.alpha=nan"), "verify.alpha must be a finite number"),
    C("set-top-m-zero", sets("keys.top_m=0"), "keys.top_m must be >= 1"),
    C("set-key-filter-unknown", sets("keys.filter=three_stage"), "keys.filter must be none or two_stage"),
    C("set-surrogate-lr-negative", sets("keys.surrogate_lr=-1"), "keys.surrogate_lr must be > 0"),
    C("set-surrogate-budget-zero", sets("keys.surrogate_budget=0"), "keys.surrogate_budget must be a positive"),
    C("set-surrogate-arch-unknown", sets("keys.surrogate_arch=alexnet9"), "unknown model 'alexnet9'; available:"),
    C("set-surrogate-query-set-unknown", sets("keys.surrogate_query_set=tiny9"), "unknown dataset 'tiny9'; available:"),
    C("set-arch-unknown", sets("model.arch=resnet9000"), "unknown model 'resnet9000'; available:"),
    C("set-key-unknown", sets("train.epoch=3"), "unknown key 'epoch' for train; accepted: epochs"),
    C("set-section-unknown", sets("bogus.key=1"), "unknown section 'bogus'", "accepted: data, train"),
    C("set-no-equals", sets("train.lr"), "malformed --set 'train.lr'; expected section.key=value"),
    C("set-component-too-short", sets("methods.badnets=3"), "expected methods.NAME.key=value"),
    C("set-poison-rate-above-1", sets("methods.badnets.poison_rate=1.5"), "methods.badnets.poison_rate must be in (0, 1)"),
    C("set-poison-rate-nan", sets("methods.badnets.poison_rate=nan"), "methods.badnets.poison_rate must be a finite"),
    C("set-target-out-of-range", sets("methods.badnets.target=99"), "methods.badnets.target must be a class index 0..9"),
    C("set-target-negative", sets("methods.badnets.target=-1"), "methods.badnets.target must be a class index 0..9"),
    C("set-margin-negative", sets("methods.badnets.margin=-1"), "methods.badnets.margin must be >= 0"),
    C("set-budget-fraction", sets("attacks.knockoff.budget=1.5"), "attacks.knockoff.budget must be an integer"),
    C("set-budget-zero", sets("attacks.knockoff.budget=0"), "attacks.knockoff.budget must be a positive integer"),
    C("set-attack-weight-decay-negative", sets("attacks.knockoff.weight_decay=-1"),
      "attacks.knockoff.weight_decay must be >= 0"),
    C("set-attack-labels-unknown", sets("attacks.knockoff.labels=both"), "attacks.knockoff.labels must be 'soft' or 'hard'"),
    C("set-attack-unknown", sets("attacks.knockof.budget=1"), "unknown attack 'knockof'; available:"),
    C("set-dataset-classes-one", sets("datasets.synthetic.num_classes=1"), "option num_classes must be >= 2"),
    C("set-dataset-noise-nan", sets("datasets.synthetic.noise=nan"), "option noise must be >= 0.0"),
    C("set-dataset-option-unknown", sets("datasets.synthetic.colour=1"), "does not accept option(s) colour; accepted:"),
    # grid options: repeated, empty, negative, unknown, malformed
    C("seeds-repeated", run("--seeds", "0,0"), "--seeds repeats 0; give each seed once"),
    C("seeds-empty", run("--seeds", ""), "--seeds needs one or more non-negative integers"),
    C("seeds-negative", run("--seeds", "-1"), "--seeds needs one or more non-negative integers"),
    C("seeds-not-numbers", run("--seeds", "a,b"), "malformed --seeds 'a,b'; expected comma-separated integers"),
    C("methods-unknown", run("--methods", "nope"), "unknown method 'nope'; available: abstract, badnets"),
    C("methods-repeated", run("--methods", "badnets,badnets"), "--methods repeats badnets; give each name once"),
    C("methods-empty", run("--methods", ""), "--methods needs at least one name"),
    C("attacks-unknown", run("--attacks", "knockof"), "unknown attack 'knockof'; available:"),
    C("attacks-repeated", run("--attacks", "none,none"), "--attacks repeats none"),
    C("attacks-chain-malformed", run("--attacks", "knockoff+"), "malformed attack chain 'knockoff+'"),
    C("attacks-chain-with-none", run("--attacks", "none+ftal"), "'none' cannot be part of an attack chain"),
    C("datasets-unknown", run("--datasets", "mnist9"), "unknown dataset 'mnist9'; available: cifar10"),
    C("datasets-repeated", run("--datasets", "synthetic,synthetic"), "--datasets repeats synthetic"),
    C("profile-unknown", run("--profile", "huge"), "invalid choice: 'huge'", "'smoke', 'quick', 'paper'"),
    C("executor-unknown", run("--executor", "slurm"), "invalid choice: 'slurm'"),
    C("device-unknown", run("--device", "tpu"), "unknown --device 'tpu'; accepted: auto, cpu, cuda or cuda:N"),
    C("device-cuda-absent", run("--device", "cuda:99"), "--device cuda:99 asks for CUDA device 99", "use --device auto"),
    C("cpus-per-cell-zero", run("--cpus-per-cell", "0"), "--cpus-per-cell must be a finite number above 0"),
    C("cpus-per-cell-nan", run("--cpus-per-cell", "nan"), "--cpus-per-cell must be a finite number above 0"),
    C("cpus-per-cell-inf", run("--cpus-per-cell", "inf"), "--cpus-per-cell must be a finite number above 0"),
    C("gpus-per-cell-negative", run("--gpus-per-cell", "-1"), "--gpus-per-cell must be a finite number at least 0"),
    C("retries-negative", run("--retries", "-1"), "--retries must be a whole number, 0 or more"),
    C("retries-not-int", run("--retries", "x"), "argument --retries: invalid int value: 'x'"),
    C("sweep-no-equals", run("--sweep", "train.epochs"), "malformed --sweep 'train.epochs'; expected section.key=v1,v2"),
    C("sweep-no-section", run("--sweep", "epochs=1,2"), "malformed --sweep 'epochs=1,2'"),
    C("sweep-value-repeated", run("--sweep", "train.epochs=1,1"), "--sweep train.epochs repeats 1; give each value once"),
    C("sweep-key-repeated", run("--sweep", "train.epochs=1,2", "--sweep", "train.epochs=3"),
      "--sweep train.epochs given twice; give all its values in one"),
    C("sweep-value-zero", run("--sweep", "train.epochs=0,1"), "train.epochs must be >= 1"),
    C("sweep-key-unknown", run("--sweep", "train.epoch=1,2"), "unknown key 'epoch' for train; accepted:"),
    # paths: files where folders belong, missing
    C("out-is-a-file", lambda ctx: run("--out", _file("afile", "x")(ctx) / "run"), "afile is a file; give a folder"),
    C("cache-dir-is-a-file", lambda ctx: run("--cache-dir", _file("afile", "x")(ctx)), "afile is a file; give a folder"),
    C("config-missing", run("--config", "/nonexistent/wmbench.yaml"), "does not exist or is not a file; give a YAML or TOML"),
    C("config-is-a-folder", lambda ctx: run("--config", _file("dir/x", "")(ctx).parent), "is not a file"),
    C("data-root-missing", run("--datasets", "fmnist", "--data-root", "/nonexistent/data"),
      "data root /nonexistent/data for dataset 'fmnist' does not exist"),
    C("data-root-is-a-file", lambda ctx: run("--datasets", "fmnist", "--data-root", _file("afile", "x")(ctx)),
      "does not exist or is not a directory"),
    # corrupt config files
    C("config-yaml-garbage", _config("bad.yaml", "train: [1,\n  lr: ]]\n"), "cannot parse config file", "bad.yaml"),
    C("config-yaml-a-list", _config("list.yaml", "- 1\n- 2\n"), "must hold a mapping of sections"),
    C("config-yaml-section-scalar", _config("scalar.yaml", "train: 5\n"), "section train must be a mapping",
      "accepted keys: epochs"),
    C("config-yaml-lr-nan", _config("nan.yaml", "train: {lr: .nan}\n"), "train.lr must be a finite number"),
    C("config-yaml-binary", _config("binary.yaml", b"\xff\xfe\x00garbage"), "cannot parse config file"),
    C("config-yaml-section-unknown", _config("unknown.yaml", "training: {lr: 1}\n"), "unknown section(s) training",
      "accepted: data"),
    C("config-toml-garbage", _config("bad.toml", "[train\nlr = "), "cannot parse config file", "bad.toml"),
    C("config-toml-section-scalar", _config("scalar.toml", "train = 5\n"), "section train must be a mapping"),
    # corrupt Fashion-MNIST idx files
    C("idx-truncated", _idx(cut=100), "is truncated or corrupt: header says 4x28x28"),
    C("idx-header-only", _idx(cut=4 * 28 * 28 + 10), "is truncated (6 bytes, header needs 16)"),
    C("idx-images-wrong-magic", _idx(images_magic=1234), "is not an idx image file (magic 1234, expected 2051)"),
    C("idx-labels-wrong-magic", _idx(labels_magic=99), "is not an idx label file (magic 99, expected 2049)"),
    C("idx-label-out-of-range", _idx(label=12), "holds label 12, expected 0..9"),
    C("idx-count-mismatch", _idx(n_labels=3), "holds 4 images but", "the files do not belong together"),
    C("idx-not-gzip", _idx(gz=True), "cannot read idx file", "truncated or corrupt, replace it"),
    C("idx-zero-images", _idx(n=0), "dataset 'fmnist' has no train images", "at least one training and one test image"),
    # corrupt CIFAR-10 batches
    C("cifar-garbage", _cifar(b"garbage", trust=False), "CIFAR-10 in", "is incomplete or corrupt"),
    C("cifar-garbage-pickle", _cifar(b"garbage", trust=True), "is corrupt (UnpicklingError", "torchvision-format"),
    C("cifar-wrong-pickle", _cifar(b"\x80\x04}\x94.", trust=True), "is corrupt (KeyError", "torchvision-format"),
    C("cifar-missing", lambda ctx: run("--datasets", "cifar10", "--data-root", ctx.folder("empty")),
      "expected folder", "cifar-10-batches-py"),
    # corrupt ImageFolder trees
    C("imagefolder-fake-jpg", _images(bad=True), "cannot read image", "broken.jpg", "remove or replace the file"),
    C("imagefolder-empty-class", _images(empty_class=True), "train/c hold no images", "add images or remove the folder"),
    C("imagefolder-empty-val", _images(val=("a", "b")), "dataset 'imagefolder' has no test images"),
    C("imagefolder-val-class-unknown", _images(val=("zzz",)), "val/zzz is not among the training classes"),
    C("imagefolder-no-train", lambda ctx: run("--datasets", "imagefolder", "--data-root", ctx.folder("empty")),
      "has no training folder"),
    # plugin modules
    C("plugin-missing", run("--plugin", "wmb_no_such_module"), "cannot import plugin module 'wmb_no_such_module'"),
    C("plugin-raises-on-import", _plugin("wmb_bad_raises", "raise RuntimeError('plugin is broken')\n"),
      "plugin module 'wmb_bad_raises' failed while being imported: RuntimeError: plugin is broken"),
    C("plugin-syntax-error", _plugin("wmb_bad_syntax", "def broken(:\n"), "plugin module 'wmb_bad_syntax' failed",
      "SyntaxError"),
    # calibrate
    C("calibrate-null-models-zero", ["calibrate", *GRID, "--null-models", "0"], "--null-models must be a whole number, 2"),
    C("calibrate-null-models-one", ["calibrate", *GRID, "--null-models", "1"], "--null-models must be a whole number, 2"),
    C("calibrate-null-method-unknown", ["calibrate", *GRID, "--null-method", "nope"], "unknown method 'nope'"),
    C("calibrate-null-arch-unknown", ["calibrate", *GRID, "--null-arch", "nope"], "unknown model 'nope'; available:"),
    C("calibrate-seeds-repeated", ["calibrate", *GRID, "--seeds", "1,1"], "--seeds repeats 1"),
    # tune
    C("tune-grid-missing", ["tune", *GRID], "the following arguments are required: --grid"),
    C("tune-grid-malformed", ["tune", *GRID, "--grid", "lambda3"], "malformed --sweep 'lambda3'"),
    C("tune-grid-twice", ["tune", *GRID, "--grid", "train.epochs=1,2", "--grid", "train.epochs=3"],
      "--grid train.epochs given twice"),
    C("tune-grid-nan", ["tune", *GRID, "--grid", "train.lr=nan,0.1"], "train.lr must be a finite number"),
    C("tune-cpus-per-cell-zero", ["tune", *GRID, "--grid", "train.epochs=1,2", "--cpus-per-cell", "0"],
      "--cpus-per-cell must be a finite number above 0"),
    # report
    C("report-missing-folder", ["report", "/nonexistent/run"], "is not a wmbench run folder", "give the --out folder"),
    C("report-a-file", lambda ctx: ["report", _file("afile", "x")(ctx)], "is not a wmbench run folder"),
    C("report-tolerance-one", ["report", "{out}", "--theft-tolerance", "1"], "theft tolerance must be a number in [0, 1)"),
    C("report-tolerance-nan", ["report", "{out}", "--theft-tolerance", "nan"], "theft tolerance must be a number in [0, 1)"),
    C("report-tolerance-negative", ["report", "{out}", "--theft-tolerance", "-0.1"], "theft tolerance must be"),
    C("report-format-unknown", ["report", "{out}", "--format", "pdf"], "invalid choice: 'pdf'", "'md', 'latex'"),
    C("report-cell-not-json", _spoiled_cell("report", lambda r: "{not json"), "corrupt result file",
      "delete it and rerun `wmbench run`"),
    C("report-cell-a-list", _spoiled_cell("report", lambda r: [1, 2]), "corrupt result file", "missing cell_id/status"),
    C("report-cell-metric-text", _spoiled_cell("report", _metric("high")), "metric victim.acc is 'high', not a number"),
    C("report-cell-metrics-list", _spoiled_cell("report", lambda r: {**r, "metrics": [1]}), "'metrics' is not an object"),
    C("report-cell-config-text", _spoiled_cell("report", lambda r: {**r, "cell": "x"}), "'cell' is not an object"),
    C("report-cell-seed-text", _spoiled_cell("report", lambda r: {**r, "cell": {**r["cell"], "seed": "0"}}),
      "the cell's seed is '0', not a whole number"),
    C("report-table-garbage", _table("results.csv", b'\x00\xffgarbage\n"unterminated'), "cannot read the results table"),
    C("report-table-empty", _table("results.csv", ""), "cannot read the results table", "No columns to parse"),
    C("report-table-wrong-columns", _table("results.csv", "a,b\n1,2\n"), "is not a wmbench results table",
      "no cell_id, stage, metric, value, status column"),
    C("report-table-seed-text", _bad_seed_csv, "column seed must hold whole numbers, got 'x'"),
    C("report-parquet-only-garbage", _table("results.parquet", b"PAR1garbage"), "is not a wmbench run folder"),
    # show
    C("show-out-missing", ["show", "abc", "--out", "/nonexistent/run"], "run folder /nonexistent/run does not exist"),
    C("show-out-a-file", lambda ctx: ["show", "abc", "--out", _file("afile", "x")(ctx)], "is not a folder"),
    C("show-cell-unknown", lambda ctx: ["show", "deadbeef", "--out", ctx.run_copy()], "no cell 'deadbeef'"),
    C("show-cell-id-empty", lambda ctx: ["show", "", "--out", ctx.run_copy()], "malformed cell id ''; give a cell id"),
    C("show-cell-id-glob", lambda ctx: ["show", "*", "--out", ctx.run_copy()], "malformed cell id '*'", "hexadecimal"),
    C("show-cell-not-json", _spoiled_cell("show", lambda r: "{not json"), "corrupt result file"),
    C("show-cell-metric-text", _spoiled_cell("show", _metric("high")), "metric victim.acc is 'high', not a number"),
    # list
    C("list-unknown", ["list", "plugins"], "invalid choice: 'plugins'", "'methods', 'attacks'"),
    C("list-profile-unknown", ["list", "methods", "--profile", "huge"], "invalid choice: 'huge'"),
    C("list-format-unknown", ["list", "settings", "--format", "pdf"], "invalid choice: 'pdf'"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case: Case, tmp_path, monkeypatch, request):
    ctx = Ctx(tmp_path, tmp_path / "out", monkeypatch, request)
    argv = case.argv(ctx) if callable(case.argv) else case.argv
    argv = [str(a).replace("{out}", str(ctx.out)) for a in argv]
    before = _tree(tmp_path)
    code, out, err = _cli(argv)
    line = _one_line(err)
    assert code == 2, err
    for fragment in case.expect:
        assert fragment in line, line
    assert out == ""
    assert _tree(tmp_path) == before and not ctx.out.exists()


# ------------------------------------------------------------------------------------------
# The Python API: UserError with a one-line message, nothing written
# ------------------------------------------------------------------------------------------
S = dict(profile="smoke", executor="serial", progress=False)


def _run(**fields: Any) -> Callable[[Ctx], Any]:
    return lambda ctx: wmbench.run("badnets", "none", "synthetic", **{"out": ctx.out, **S, **fields})


API_CASES = [
    C("spec-methods-int", lambda ctx: GridSpec.of(5), "--methods needs a string or a list of strings, got 5"),
    C("spec-methods-repeated", lambda ctx: GridSpec.of(["badnets", "badnets"]), "--methods repeats badnets"),
    C("spec-overrides-int", lambda ctx: GridSpec.of(overrides=5), "--set needs a string or a list of strings"),
    C("spec-out-int", lambda ctx: GridSpec.of(out=5), "--out must be a path"),
    C("spec-download-text", lambda ctx: GridSpec.of(download="no"), "download must be True or False, got 'no'"),
    C("spec-field-unknown", lambda ctx: GridSpec.of(epochs=3), "unknown grid option(s) epochs; accepted: attacks"),
    C("spec-seeds-bool", lambda ctx: GridSpec.of(seeds=True), "--seeds needs whole numbers, got True"),
    C("spec-seeds-fraction", lambda ctx: GridSpec.of(seeds=[0.5]), "--seeds needs whole numbers"),
    C("spec-seeds-repeated", lambda ctx: GridSpec.of(seeds=[1, 1]), "--seeds repeats 1"),
    C("spec-cpus-nan", lambda ctx: GridSpec.of(cpus_per_cell=float("nan")), "--cpus-per-cell must be a finite number"),
    C("spec-cpus-text", lambda ctx: GridSpec.of(cpus_per_cell="2"), "--cpus-per-cell must be a finite number"),
    C("spec-gpus-inf", lambda ctx: GridSpec.of(gpus_per_cell=float("inf")), "--gpus-per-cell must be a finite number"),
    C("spec-retries-bool", lambda ctx: GridSpec.of(retries=True), "--retries must be a whole number"),
    C("spec-retries-fraction", lambda ctx: GridSpec.of(retries=1.5), "--retries must be a whole number"),
    C("spec-device-int", lambda ctx: GridSpec.of(device=0), "unknown --device 0; accepted: auto, cpu"),
    C("spec-profile-none", lambda ctx: GridSpec.of(profile=None), "unknown profile None; available: smoke"),
    C("spec-executor-unknown", lambda ctx: GridSpec.of(executor="slurm"), "unknown executor 'slurm'; accepted: ray"),
    C("spec-spare-cpus-unknown", lambda ctx: GridSpec.of(spare_cpus="all"), "--spare-cpus must be one of share, none"),
    C("run-spec-and-unknown-field", lambda ctx: wmbench.run(GridSpec.of(**S), epochs=3), "unknown grid option(s) epochs"),
    C("run-spec-and-positional", lambda ctx: wmbench.run(GridSpec.of(**S), "knockoff"), "either a GridSpec or"),
    C("run-override-nan", _run(overrides=["train.lr=nan"]), "train.lr must be a finite number"),
    C("run-override-not-text", _run(overrides=[5]), "--set needs a string or a list of strings"),
    C("run-sweep-not-text", _run(sweeps=[5]), "--sweep needs a string or a list of strings"),
    C("run-plugin-not-text", _run(plugins=[5]), "--plugin needs a string or a list of strings"),
    C("run-out-is-a-file", lambda ctx: _run(out=_file("afile", "x")(ctx))(ctx), "is a file; give a folder"),
    C("results-load-missing", lambda ctx: wmbench.results.load(ctx.tmp / "nope"), "is not a wmbench run folder"),
    C("results-load-corrupt-cell", lambda ctx: wmbench.results.load(_spoiled_cell("report", _metric(None))(ctx)[1]),
      "metric victim.acc is None, not a number"),
    C("report-render-tolerance", lambda ctx: wmbench.report.render(wmbench.results.load(ctx.run_copy()),
                                                                    theft_tolerance=2), "theft tolerance must be"),
]


@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_bad_input(case: Case, tmp_path, monkeypatch, request):
    ctx = Ctx(tmp_path, tmp_path / "out", monkeypatch, request)
    before = _tree(tmp_path)
    with pytest.raises(UserError) as info:
        case.argv(ctx)
    message = str(info.value)
    assert message and "\n" not in message
    for fragment in case.expect:
        assert fragment in message, message
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("in")} == \
        {k: v for k, v in before.items() if not k.startswith("in")} and not ctx.out.exists()


# ------------------------------------------------------------------------------------------
# Special cases: unwritable and full disks, failures inside cells, corrupt artifacts
# ------------------------------------------------------------------------------------------
def _failing_writer(code: int, under: Path = Path("/")) -> Callable[[Path, bytes], None]:
    """``cache.atomic_write_bytes`` raising ``OSError(code)`` for paths under ``under``
    (root ignores permission bits, so an unwritable folder and a full disk are simulated)."""
    real = cache.atomic_write_bytes

    def write(path: Path, data: bytes) -> None:
        if Path(path).is_relative_to(under):
            raise OSError(code, os.strerror(code), str(path))
        real(path, data)
    return write


@pytest.mark.parametrize("code, words", [(errno.EACCES, "Permission denied"), (errno.ENOSPC, "No space left")])
def test_unwritable_or_full_run_folder_is_one_line_and_leaves_nothing(code, words, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "atomic_write_bytes", _failing_writer(code))
    out = tmp_path / "a" / "b" / "run"  # parents that do not exist yet are removed again too
    rc, stdout, err = _cli([*RUN, "--out", out, *TINY])
    line = _one_line(err)
    assert rc == 2 and f"cannot write the run folder {out}: {words}" in line and "give a writable --out" in line
    assert stdout == "" and list(tmp_path.iterdir()) == []
    with pytest.raises(UserError, match=words):  # the API says the same
        wmbench.run("badnets", "none", "synthetic", out=out, **S)
    assert list(tmp_path.iterdir()) == []


def test_report_into_unwritable_folder_is_one_line_and_changes_nothing(plugin_run, tmp_path, monkeypatch):
    run_dir = Path(shutil.copytree(plugin_run["out"], tmp_path / "run"))
    before = _tree(run_dir)
    monkeypatch.setattr(cache, "atomic_write_bytes", _failing_writer(errno.EACCES))
    code, _, err = _cli(["report", run_dir])
    line = _one_line(err)
    assert code == 2 and f"cannot write {run_dir}/report.md: Permission denied" in line and "--no-write" in line
    assert _tree(run_dir) == before


def test_corrupt_results_parquet_is_never_read(plugin_run, tmp_path):
    """results.parquet is an output: a corrupt one is neither read nor an error (the table is
    rebuilt from the cell records), and `report --no-write` leaves it as it is."""
    run_dir = Path(shutil.copytree(plugin_run["out"], tmp_path / "run"))
    (run_dir / "results.parquet").write_bytes(b"PAR1 garbage")
    before = _tree(run_dir)
    code, out, err = _cli(["report", run_dir, "--no-write"])
    assert code == 0 and "Table 1" in out and "BadNets" in out and "Traceback" not in err
    assert _tree(run_dir) == before


def test_full_artifact_disk_fails_the_cells_with_the_reason(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    monkeypatch.setattr(cache, "atomic_write_bytes", _failing_writer(errno.ENOSPC, cache_dir))
    out = tmp_path / "run"
    code, _, err = _cli([*RUN, "--out", out, "--cache-dir", cache_dir, "--retries", "0", *TINY])
    assert code == 1  # a failed cell, not bad input
    records = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "failed"
    assert "No space left on device" in records[0]["error"] and "[failed] badnets × none" in err
    assert not [p for p in cache_dir.rglob("*") if p.suffix in (".pt", ".json")]
    assert (out / "results.parquet").exists()  # the rest of the run completed


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> Dict[str, Any]:
    """One tiny grid with the test plugin (tests/plugins/wmb_grid.py): badnets and a method whose
    embedding raises, × none and an attack that raises; 1 ok cell and 3 failed ones."""
    out = tmp_path_factory.mktemp("plugin-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGIN_DIR))
        mp.delenv("WMB_GRID_LOG", raising=False)
        code, stdout, err = _cli([*RUN, "--out", out, "--methods", "badnets,grid_broken", "--attacks",
                                  "none,grid_failing", "--plugin", "wmb_grid", "--retries", "0", *TINY])
    records = {(r["cell"]["method"], r["cell"]["attack"]): r
               for r in (json.loads(p.read_text()) for p in (out / "cells").glob("*.json"))}
    return {"out": out, "code": code, "stdout": stdout, "err": err, "records": records}


def test_plugin_raising_at_run_time_fails_only_its_cells(plugin_run):
    records = plugin_run["records"]
    assert plugin_run["code"] == 1 and len(records) == 4
    assert records[("badnets", "none")]["status"] == "ok"
    failing = records[("badnets", "grid_failing")]
    assert failing["status"] == "failed" and "RuntimeError: grid_failing: planned failure" in failing["error"]
    for attack in ("none", "grid_failing"):
        broken = records[("grid_broken", attack)]
        assert broken["status"] == "failed" and "embedding failed" in broken["error"]
    assert "[failed] badnets × grid_failing" in plugin_run["err"] and "planned failure" in plugin_run["err"]
    assert "results:" in plugin_run["stdout"]  # the grid completed and its table was written


def test_corrupt_artifact_fails_its_checksum_and_is_rebuilt(tmp_path):
    import torch

    store = cache.ArtifactStore(tmp_path)
    spec = {"what": "weights"}
    store.save("victim", spec, {"w": torch.ones(3)})
    pt, _ = store.paths("victim", store.key(spec))
    pt.write_bytes(pt.read_bytes()[:-4] + b"junk")
    with pytest.raises(CorruptArtifact, match="checksum mismatch"):
        store.load("victim", spec)
    built = []
    tensors, _ = store.get_or_build("victim", spec, lambda: built.append(1) or ({"w": torch.zeros(3)}, {}))
    assert built == [1] and torch.equal(tensors["w"], torch.zeros(3))
    assert torch.equal(store.load("victim", spec)[0]["w"], torch.zeros(3))  # the rebuilt file verifies


def test_rerun_recomputes_a_corrupt_cell_record_and_rebuilds_a_corrupt_artifact(plugin_run, tmp_path):
    run_dir = Path(shutil.copytree(plugin_run["out"], tmp_path / "run"))
    cell = next(p for p in (run_dir / "cells").glob("*.json") if json.loads(p.read_text())["status"] == "ok")
    cell.write_text("{not json")
    victim = next((run_dir / "artifacts" / "victim").glob("*.pt"))
    victim.write_bytes(victim.read_bytes()[:100])  # truncated: checksum mismatch
    code, _, err = _cli([*RUN, "--out", run_dir, *TINY])
    assert code == 0, err
    assert "corrupt result file" in err and "recomputing" in err and "checksum mismatch" in err
    assert json.loads(cell.read_text())["status"] == "ok"
    meta = json.loads(victim.with_suffix(".json").read_text())
    assert meta["sha256"] == cache._sha256(victim)


def test_image_tree_with_a_constant_channel_builds_a_model(tmp_path):
    """A degenerate ImageFolder tree (its green and blue channels never vary): the loader's
    per-channel std must stay positive, or every model of it fails to build."""
    from PIL import Image

    from wmbench.data import load_data
    from wmbench.models import build_model

    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i + (cls == "b") * 100, 0, 0)).save(tmp_path / "train" / cls / f"{i}.png")
    data = load_data("imagefolder", root=tmp_path, options={"size": 8})
    assert data.std[0] > 0.1 and data.std[1:] == (1e-4, 1e-4)
    model = build_model("naivenet", in_channels=3, num_classes=2, input_size=8, mean=data.mean, std=data.std)
    assert model.std.min() > 0
