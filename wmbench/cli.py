"""The ``wmbench`` command line: ``run``, ``calibrate``, ``tune``, ``report``, ``show``, ``list``.

Bad input (unknown names, malformed ``--set``, missing data, no runnable cell, corrupt result
files) prints one line ``wmbench: error: ...`` saying what was wrong and what is accepted, and
exits with code 2 before anything is written.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, NoReturn, Optional, Sequence

from wmbench.version import __version__
from wmbench.config import PROFILE_NAMES, config_to_dict, resolve
from wmbench.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from wmbench.spec import GridSpec

log = logging.getLogger("wmbench")

RESULTS_ROOT = "results"
#: Errors of the file system, not of wmbench: one ``wmbench: error:`` line, exit 2.
_WRITE_ERRORS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS, errno.EDQUOT})


def _add_plugin(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE first so its methods/attacks register (repeatable)")


def _add_grid_args(p: argparse.ArgumentParser) -> None:
    """The grid and scheduling options shared by ``run`` and ``tune``."""
    p.add_argument("--methods", default="badnets", help="comma-separated method names, or 'all' (default: badnets)")
    p.add_argument("--attacks", default="none", help="comma-separated attack names, or 'all' (default: none)")
    p.add_argument("--datasets", default="fmnist", help="comma-separated dataset names (default: fmnist)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--profile", default="quick", choices=PROFILE_NAMES, help="budget profile (default: quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. train.epochs=3 or attacks.knockoff.budget=5000 (repeatable)")
    p.add_argument("--config", help="YAML or TOML file with the same sections as --set")
    p.add_argument("--data-root", help="data folder (default: $WMBENCH_DATA, then system paths)")
    p.add_argument("--download", action="store_true", help="allow torchvision downloads (needs network)")
    p.add_argument("--out", help="run folder (default: results/<datasets>-<profile>); on a cluster, a folder every "
                                 "node can reach")
    p.add_argument("--cache-dir", help="artifact cache (default: <out>/artifacts)")
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS"),
                   help="join an existing Ray cluster (default: $RAY_ADDRESS; none: an embedded local instance)")
    p.add_argument("--cpus-per-cell", type=float, default=1.0,
                   help="CPUs per task under Ray; torch uses as many threads (default: 1)")
    p.add_argument("--spare-cpus", default="share", choices=("share", "none"),
                   help="share: a task starting while fewer tasks can run than there are CPU slots also gets the "
                        "idle CPUs (more torch threads); none: exactly --cpus-per-cell each (default: share)")
    p.add_argument("--gpus-per-cell", type=float, default=None,
                   help="GPUs per task under Ray, fractions allowed (default: 1 where the cluster has GPUs, else 0)")
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop a task (a cell, or a model it needs) that runs longer and record it failed with the "
                        "reason; it is not retried (default: no limit)")
    p.add_argument("--retries", type=int, default=1, help="retries of a failed cell before it is recorded failed "
                                                           "(default: 1)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N] (default: auto)")
    p.add_argument("--compile", action="store_true",
                   help="train through torch.compile (pays off on long schedules; results within float tolerance)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_plugin(p)


class _Parser(argparse.ArgumentParser):
    """argparse with the house rule for bad input: one ``wmbench: error:`` line, exit 2 (no usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"wmbench: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wmbench",
        description="Benchmark DNN black-box watermarks against stealing, removal and evasion attacks.",
    )
    parser.add_argument("--version", action="version", version=f"wmbench {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train, attack and verify a method × attack × dataset × seed grid")
    _add_grid_args(p)
    p.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="KEY=V1,V2",
                   help="run one set of cells per value, e.g. attacks.knockoff.budget=1000,5000 (repeatable: grid)")
    p.add_argument("--executor", default=None, choices=("ray", "serial", "auto"),
                   help="cell scheduler: ray, serial (in this process, for debugging) or auto (ray when installed; "
                        "the default, or $WMBENCH_EXECUTOR)")
    p.add_argument("--overwrite", action="store_true", help="rerun finished cells and rebuild their models")
    p.add_argument("--track", choices=("mlflow", "tensorboard"), default=None,
                   help="also log every finished cell to MLflow (<out>/mlruns) or TensorBoard (<out>/tensorboard); "
                        "local files, no server (default: off)")

    p = sub.add_parser("calibrate", help="train N null models (never shown the victim) per dataset and seed and verify "
                                         "every method's keys on them: false-positive rates and calibrated thresholds")
    _add_grid_args(p)
    p.add_argument("--null-models", type=int, default=10, metavar="N",
                   help="null models per dataset and seed, cycling clean, mixup, cutmix, half the epochs, another "
                        "architecture, another method's watermark (default: 10)")
    p.add_argument("--null-arch", default=None, help="architecture of the 'another architecture' recipe "
                                                     "(default: alexnet_cifar, or cwnet for AlexNet victims)")
    p.add_argument("--null-method", default="noise", help="method of the 'watermarked by another method' recipe "
                                                          "(default: noise)")
    p.add_argument("--sweep", dest="sweeps", action="append", default=[], metavar="KEY=V1,V2",
                   help="also cross the null models with these settings (repeatable)")
    p.add_argument("--executor", default=None, choices=("ray", "serial", "auto"), help="as for run")
    p.add_argument("--overwrite", action="store_true", help="rerun finished cells and rebuild their models")

    p = sub.add_parser("tune", help="Ray Tune grid search over method/attack settings (same cells, same results store)")
    _add_grid_args(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", required=True,
                   help="one Tune grid_search axis, e.g. methods.deeptracer.lambda3=0.001,0.01,0.1 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="rerun finished cells and rebuild their models")

    p = sub.add_parser("report", help="print and write paper-style tables for a run folder")
    p.add_argument("run_dir", metavar="DIR", help="a run folder written by `wmbench run`")
    p.add_argument("--format", default="md", choices=("md", "latex", "csv", "html"), help="printed format (default: md)")
    p.add_argument("--compare", choices=("paper",), help="put the DeepTracer paper's Table 1/2 figures beside ours")
    p.add_argument("--no-write", action="store_true", help="print only; do not write report files into DIR")
    p.add_argument("--theft-tolerance", type=float, default=0.1, metavar="T",
                   help="a stolen model counts as a successful theft when its accuracy is at least (1 - T) x the "
                        "victim's; only then does its WSR count as detected or evaded (default: 0.1, in [0, 1))")
    _add_plugin(p)

    p = sub.add_parser("show", help="show one cell: its config, metrics, status and log")
    p.add_argument("cell_id", metavar="CELL_ID", help="a cell id or a unique prefix of one")
    p.add_argument("--out", help=f"run folder to search (default: every folder under {RESULTS_ROOT}/)")
    _add_plugin(p)

    p = sub.add_parser("list", help="list registered methods, attacks, datasets or models, or audit the settings "
                                    "against the paper")
    p.add_argument("what", choices=("methods", "attacks", "datasets", "models", "settings"),
                   help="settings: every setting the DeepTracer paper states, where, and ours at --profile")
    p.add_argument("--profile", default="quick", choices=PROFILE_NAMES, help="profile whose defaults are shown")
    p.add_argument("--format", default="table", choices=("table", "md", "csv"),
                   help="settings only: a terminal table, the Markdown document (docs/paper-settings.md) or CSV")
    _add_plugin(p)
    return parser


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------

def _pct(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if number != number else f"{100 * number:.2f}"


def summary_table(frame) -> str:
    """A compact per-cell table of the main figures."""
    from tabulate import tabulate

    from wmbench.report.calibration import is_null_attack
    from wmbench.report.verdicts import DEFAULT_THEFT_TOLERANCE, outcome
    from wmbench.results import wide

    table = wide(frame)
    lines = []
    if not table.empty:
        rows = []
        for _, r in table.sort_values(["dataset", "method", "attack", "labels", "sweep", "seed"]).iterrows():
            rows.append([
                r["dataset"], r["method"], r["attack"] + (f" [{r['sweep']}]" if r["sweep"] else ""), r["labels"], r["seed"],
                _pct(r.get("benign_acc")), _pct(r.get("benign_wsr")), _pct(r.get("victim_acc")), _pct(r.get("victim_wsr")),
                _pct(r.get("attack_acc")), _pct(r.get("attack_fidelity")), _pct(r.get("attack_wsr")),
                "" if r.get("attack_queries") != r.get("attack_queries") else int(r.get("attack_queries", 0)),
                "" if r["attack"] == "none" or is_null_attack(r["attack"]) else
                outcome(r.get("attack_acc"), r.get("victim_acc"), r.get("attack_detected")),
            ])
        lines.append(tabulate(rows, headers=["dataset", "method", "attack", "labels", "seed", "benign acc", "benign wsr",
                                             "victim acc", "victim wsr", "suspect acc", "fidelity", "suspect wsr",
                                             "queries", "outcome"], tablefmt="github"))
        lines.append(f"outcome: detected = a working copy (accuracy ≥ {100 * (1 - DEFAULT_THEFT_TOLERANCE):.0f} % of the "
                     "victim's) verified by the watermark; evaded = a working copy not verified; theft failed = not a "
                     "working copy (no claim)")
    other = frame[frame["status"] != "ok"].drop_duplicates("cell_id")
    for _, r in other.iterrows():
        lines.append(f"{r['status']}: {r['method']} × {r['attack']}[{r['labels']}] on {r['dataset']} seed {r['seed']}"
                     f" ({r['cell_id']}){': ' + r['skipped_reason'] if r['skipped_reason'] else ''}")
    return "\n".join(lines) if lines else "no cells"


def grid_spec(args: argparse.Namespace, **fields: Any) -> "GridSpec":
    """The :class:`~wmbench.spec.GridSpec` of a ``run`` or ``tune`` command line."""
    from wmbench.spec import GridSpec

    return GridSpec.of(
        args.methods, args.attacks, args.datasets, seeds=args.seeds, profile=args.profile, overrides=args.overrides,
        config=args.config, data_root=args.data_root, download=args.download, out=args.out, cache_dir=args.cache_dir,
        ray_address=args.ray_address, cpus_per_cell=args.cpus_per_cell, gpus_per_cell=args.gpus_per_cell,
        retries=args.retries, overwrite=args.overwrite, plugins=args.plugin, device=args.device,
        spare_cpus=args.spare_cpus, compile=args.compile, cell_timeout=args.cell_timeout, progress=False if args.no_progress else None, **fields)


def cmd_run(args: argparse.Namespace) -> int:
    from wmbench.plan import run_dir_of
    from wmbench.runner import run
    from wmbench.spec import default_executor

    spec = grid_spec(args, sweeps=args.sweeps, executor=args.executor or default_executor(cli=True))
    on_record = _announce
    if args.track:
        from wmbench.tracking import tracking_callback

        track = tracking_callback(args.track, run_dir_of(spec))

        def on_record(record: Dict[str, Any]) -> None:
            _announce(record)
            track(record)
    frame = run(spec, on_record=on_record)
    print(summary_table(frame))
    out = run_dir_of(spec)
    print(f"\nresults: {out}/results.parquet (and .csv); tables: wmbench report {out}")
    return 1 if (frame["status"] == "failed").any() else 0


def _announce(record: Dict[str, Any]) -> None:
    """One line per finished cell on stderr (above the live progress bar, if any)."""
    from tqdm.auto import tqdm

    cell = record["cell"]
    reused = ", reused" if record.get("reused") else ""
    error = f": {record.get('error')}" if record.get("status") == "failed" else ""
    tqdm.write(f"[{record['status']}] {cell['method']} × {cell['attack']}{'[' + cell['labels'] + ']' if cell['labels'] else ''}"
               f" on {cell['dataset']} seed {cell['seed']} ({record['cell_id']}, {record.get('wall_s', 0):.0f}s{reused}){error}",
               file=sys.stderr)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from wmbench.calibrate import calibrate
    from wmbench.plan import run_dir_of
    from wmbench.spec import default_executor

    spec = grid_spec(args, sweeps=args.sweeps, executor=args.executor or default_executor(cli=True))
    frame = calibrate(spec, args.null_models, null_arch=args.null_arch, null_method=args.null_method)
    from tabulate import tabulate

    from wmbench.report import calibration

    print(tabulate(calibration(frame), headers="keys", tablefmt="github", showindex=False, floatfmt=".4g"))
    out = run_dir_of(spec)
    print(f"\nnull models: {out}; false-positive rates and calibrated thresholds: wmbench report {out}")
    return 1 if (frame["status"] == "failed").any() else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from wmbench.plan import run_dir_of
    from wmbench.tune import tune

    spec = grid_spec(args, sweeps=args.grid)
    trials, frame = tune(spec)
    shown = trials.copy()
    for col in shown.columns:
        if col.endswith(("_acc", "_wsr", "_fidelity", "_detected")):
            shown[col] = shown[col].map(_pct)
    print(tabulate(shown, headers="keys", tablefmt="github", showindex=False))
    out = run_dir_of(spec)
    print(f"\ntrials: {out}/tune/ (percent: mean over each trial's cells); tables and figures: wmbench report {out}")
    failed = (frame["status"] == "failed").any() or ("error" in trials.columns and trials["error"].notna().any())
    return 1 if failed else 0


def cmd_report(args: argparse.Namespace) -> int:
    from wmbench import report
    from wmbench.results import load

    tolerance = report.check_theft_tolerance(args.theft_tolerance)  # bad input: nothing read or written
    frame = load(args.run_dir)
    print(report.render(frame, fmt=args.format, compare=args.compare, theft_tolerance=tolerance))
    if not args.no_write:
        paths = report.write_report(frame, args.run_dir, compare=args.compare, theft_tolerance=tolerance)
        print("\nwritten: " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


def _find_cell(cell_id: str, out: Optional[str]) -> Path:
    if not cell_id or cell_id.strip("0123456789abcdef"):
        raise UserError(f"malformed cell id {cell_id!r}; give a cell id or a prefix of one (hexadecimal, e.g. 3fa2c1)")
    roots = [Path(out)] if out else sorted(p for p in Path(RESULTS_ROOT).glob("*") if p.is_dir())
    if out and not Path(out).is_dir():
        raise UserError(f"run folder {out} does not exist or is not a folder; give the --out folder of `wmbench run`")
    matches = [p for root in roots for p in (root / "cells").glob(f"{cell_id}*.json")]
    if not matches:
        raise UserError(f"no cell {cell_id!r} in {', '.join(map(str, roots)) or RESULTS_ROOT + '/ (empty)'}; "
                        f"cell ids are listed by `wmbench run` and in results.csv")
    if len({m.stem for m in matches}) > 1:
        raise UserError(f"cell id prefix {cell_id!r} is ambiguous: {', '.join(sorted({m.stem for m in matches}))}")
    return matches[0]


def cmd_show(args: argparse.Namespace) -> int:
    from wmbench.records import read_cell

    path = _find_cell(args.cell_id, args.out)
    record = read_cell(path)
    cell = record.get("cell", {})
    print(f"cell {record['cell_id']}  status: {record['status']}  ({path})")
    print(f"{cell.get('method')} × {cell.get('attack')}{'[' + cell.get('labels', '') + ']' if cell.get('labels') else ''}"
          f" on {cell.get('dataset')} ({cell.get('arch')}), seed {cell.get('seed')}, profile {cell.get('profile')}")
    if record.get("skipped_reason"):
        print(f"skipped: {record['skipped_reason']}")
    if record.get("error"):
        attempts = f" (after {record['attempts']} attempts)" if record.get("attempts") else ""
        print(f"error{attempts}: {record['error']}")
    if record.get("watermark"):
        print("watermark: " + ", ".join(f"{k}={v}" for k, v in record["watermark"].items()))
    for stage, metrics in (record.get("metrics") or {}).items():
        print(f"  {stage}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if record.get("traceback"):
        print("\ntraceback:\n" + record["traceback"])
    print("\nconfig:\n" + json.dumps(cell, indent=1, sort_keys=True))
    print("\nprovenance: " + json.dumps(record.get("provenance", {}), sort_keys=True))
    log_path = path.parent.parent / "logs" / f"{record['cell_id']}.log"
    if log_path.exists():
        print(f"\nlog ({log_path}):\n" + log_path.read_text()[-4000:])
    return 0


def _defaults(cls: Any, profile: str) -> str:
    config = resolve(cls.Config, profile)
    return ", ".join(f"{k}={v}" for k, v in config_to_dict(config).items())


def cmd_list(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from wmbench.registry import ATTACKS, DATASETS, METHODS, MODELS

    if args.what == "settings":
        from wmbench.audit import audit_table, render_markdown

        table = audit_table(args.profile)
        if args.format == "md":
            print(render_markdown(table), end="")
        elif args.format == "csv":
            print(table.reset_index().to_csv(index=False), end="")
        else:
            print(tabulate(table, headers="keys", tablefmt="github", showindex=False))
        return 0
    rows: List[List[Any]] = []
    if args.what in ("methods", "attacks"):
        registry = METHODS if args.what == "methods" else ATTACKS
        for name in registry.names():
            cls = registry.get(name)
            rows.append([name, cls.paper, cls.year or "", cls.category, _defaults(cls, args.profile)])
        headers = ["name", "paper", "year", "category", f"defaults ({args.profile})"]
    elif args.what == "datasets":
        for name in DATASETS.names():
            cls = DATASETS.get(name)
            shape = f"{getattr(cls, 'channels', '?')}×{getattr(cls, 'size', '?')}²"
            rows.append([name, getattr(cls, "paper", ""), getattr(cls, "num_classes", ""), shape,
                         (getattr(cls, "description", "") or "").split("\n")[0]])
        headers = ["name", "paper", "classes", "shape", "description"]
    else:
        for name in MODELS.names():
            fn = MODELS.get(name)
            rows.append([name, (fn.__doc__ or "").strip().split("\n")[0]])
        headers = ["name", "description"]
    print(tabulate(rows, headers=headers, tablefmt="github", maxcolwidths=[None, 40, None, 30, 70]
                   if args.what in ("methods", "attacks") else None))
    return 0


COMMANDS = {"run": cmd_run, "calibrate": cmd_calibrate, "tune": cmd_tune, "report": cmd_report, "show": cmd_show, "list": cmd_list}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed on one line
        return exc.code if isinstance(exc.code, int) else 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.INFO if args.verbose else logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)  # removed again below: repeated calls (tests, notebooks) add no copies
    try:
        from wmbench.registry import load_plugin

        for module in getattr(args, "plugin", []) or []:
            load_plugin(module)
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"wmbench: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, always
        return 2
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        print(f"wmbench: error: cannot write {exc.filename or 'a file'}: {exc.strerror}; free some space or give a "
              "writable folder (run: --out, --cache-dir, then rerun to resume; report: DIR or --no-write)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wmbench: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        logging.getLogger().removeHandler(handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
