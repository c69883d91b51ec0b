"""The command line: parsing only. Each command lives in a module of its own with no argparse in it.

    python -m localearn.experiments [train] DATASET --algo NAME [options]   one run (train is the default)
    python -m localearn.experiments train --spec FILE                     a run from a spec or config.json
    python -m localearn.experiments compare DATASET --algos a,b --seeds N  several runs, then the report
    python -m localearn.experiments tune DATASET --algo NAME --trials N    an Optuna study
    python -m localearn.experiments report RUNS_DIR [--baseline backprop]  the report of finished runs

Option abbreviations are off everywhere: ``--se`` is not ``--seeds``, and an option that a command sets
itself (compare's --seed) is refused in every spelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from ..algorithms import ALGORITHMS, HyperparameterError
from ..algorithms.config import OptimizerConfig
from ..data import DATASETS, DataError
from ..parallel import MODES as PARALLEL_MODES
from ..parallel import ParallelError
from ..rundir import check_writable
from ..trainer import MONITORS, DivergenceError
from . import compare, report, spec, train, tune, verdicts
from .presets import RECIPES

COMMANDS = ("train", "compare", "tune", "report")
# The run options and where each goes in spec.resolve (argparse dests; unset options are left out).
RUN_OPTIONS = (
    "model",
    "epochs",
    "batch_size",
    "lr",
    "hp",
    "params",
    "seed",
    "device",
    "data_dir",
    "cache_dir",
    "out",
    "name",
    "resume",
    "patience",
    "min_delta",
    "monitor",
    "val_fraction",
    "augment",
    "country",
    "energy",
    "progress",
    "recipe",
    "parallel",
    "world_size",
    "devices",
    "in_flight",
)
# Run options that a command sets itself (refused, in any spelling), and what to use instead.
SET_BY = {
    "compare": {
        "--algo": "use --algos",
        "--seed": "use --seeds and --first-seed",
        "--name": "compare names its runs ALGO-sSEED; --name names the comparison's directory",
        "--resume": "compare always continues where it stopped",
        "--spec": "compare writes a spec per run itself",
    },
    "tune": {"--name": "", "--resume": "", "--params": "", "--spec": ""},
}


class UsageError(ValueError):
    """A command line that names an option the command does not take."""


def _algorithms_help() -> str:
    common = {f.name: f.default for f in dataclasses.fields(OptimizerConfig)}
    lines = [
        "algorithms and their hyperparameters (set with --hp NAME=VALUE): the optimizer's, shared by the",
        "  rules, " + ", ".join(f"{k}={v!r}" for k, v in common.items()) + ", then each rule's own:",
    ]
    for name, cls in sorted(ALGORITHMS.items()):
        own = [f for f in dataclasses.fields(cls.Config) if common.get(f.name, object()) != f.default]
        lines.append(f"  {name:<17} " + (", ".join(f"{f.name}={f.default!r}" for f in own) or "(none)"))
    lines.append(f"datasets: {', '.join(DATASETS)}, or a path to an ImageFolder tree (train/ and test/)")
    lines.append(
        "example: python -m localearn.experiments mnist --algo mono_forward --hp schedule=sequential"
    )
    return "\n".join(lines)


def _add_run_options(p: argparse.ArgumentParser, command: str) -> None:
    """The options of one run; each command leaves out those it sets itself. Unset options stay out of the
    namespace (SUPPRESS), so that the presets below them show through (spec.py states the order)."""
    skip = set(SET_BY.get(command, {}))
    add = p.add_argument
    s = argparse.SUPPRESS
    add(
        "--model",
        default=s,
        help="mlp, mlp:H1,H2,..., cnn or cnn:C1,C2,..., then :activation, :nobias or :he (MLP)",
    )
    add("--epochs", type=int, default=s, help="epoch cap (per stage for staged schedules)")
    add("--batch-size", type=int, default=s)
    add("--lr", type=float, default=s, help="learning rate (default: the preset's)")
    add(
        "--recipe",
        default=s,
        metavar="NAME",
        help="a paper's comparison settings over the presets, for every rule that paper compared: "
        + "; ".join(f"{name}: {', '.join(sorted(rules))}" for name, rules in RECIPES.items()),
    )
    add("--hp", action="append", default=s, metavar="NAME=VALUE", help="any hyperparameter; repeatable")
    if "--params" not in skip:
        add(
            "--params",
            default=s,
            metavar="best|FILE",
            help="tuned hyperparameters: 'best' reads OUT/tuning/DATASET-ALGO.best.json (written by tune), "
            "or a JSON file; over the presets, under --lr and --hp",
        )
    if "--seed" not in skip:
        add("--seed", type=int, default=s, help="the run's seed (default 0)")
    add("--device", default=s, help="auto (default), cpu, cuda or cuda:N")
    add("--data-dir", default=s, help="where datasets are found (default: $LOCALEARN_DATA, else ./data)")
    add(
        "--cache-dir",
        default=s,
        help="decoded-image cache (default: $LOCALEARN_CACHE, else ~/.cache/localearn)",
    )
    add("--out", default=s, help="root of run directories (default: ./runs)")
    if "--name" not in skip:
        add("--name", default=s, help="run directory name under --out (default: DATASET-ALGO-MODEL-sSEED)")
    if "--resume" not in skip:
        add("--resume", action="store_true", default=s, help="continue the interrupted run in --out/--name")
    add("--patience", type=int, default=s, help="early-stopping patience in epochs (0 disables)")
    add("--min-delta", type=float, default=s)
    add("--monitor", default=s, choices=sorted(MONITORS))
    add("--val-fraction", type=float, default=s)
    aug = p.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment", dest="augment", action="store_true", default=s, help="crop + flip on the device"
    )
    aug.add_argument("--no-augment", dest="augment", action="store_false", default=s)
    add(
        "--country",
        default=s,
        help="ISO 3166 alpha-3 code of the grid for CO2 ($LOCALEARN_COUNTRY, else USA)",
    )
    add("--no-energy", dest="energy", action="store_false", default=s, help="meter time and memory only")
    add("--no-progress", dest="progress", action="store_false", default=s, help="no progress bar")
    add("-q", "--quiet", action="store_true", help="warnings and errors only")
    if command == "train":
        add(
            "--parallel",
            default=s,
            choices=list(PARALLEL_MODES),
            help="units: the rule's units in separate processes, each stage training on what the one "
            "below sends (bottom-up rules: mono_forward, forward_forward, forward_gradient local_activity); "
            "wavefront: the same in one process on --device, stage k on batch t-k, a CUDA stream each",
        )
        add(
            "--world-size",
            type=int,
            default=s,
            metavar="K",
            help="--parallel: the number of stages (wavefront: default one per unit)",
        )
        add("--devices", default=s, help="--parallel: one device per stage, e.g. cuda:0,cuda:1")
        add("--in-flight", type=int, default=s, help="--parallel: batches that may wait between stages (2)")


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    top = argparse.ArgumentParser(
        prog="python -m localearn.experiments",
        description="Train, compare and tune local-learning rules beside backprop under one protocol. "
        "train is the default command: `python -m localearn.experiments mnist --algo mono_forward`.",
        epilog=_algorithms_help(),
        formatter_class=raw,
        allow_abbrev=False,
    )
    sub = top.add_subparsers(dest="command", metavar="{train,compare,tune,report}")
    top.commands = sub.choices  # name -> the command's parser
    p = sub.add_parser(
        "train",
        help="one run (the default command)",
        description="Train one algorithm on one dataset under localearn's common protocol.",
        epilog=_algorithms_help(),
        formatter_class=raw,
        allow_abbrev=False,
    )
    p.add_argument("dataset", nargs="?", help=f"{', '.join(DATASETS)}, or a path to an ImageFolder tree")
    p.add_argument("--algo", metavar="NAME", help=f"one of: {', '.join(sorted(ALGORITHMS))}")
    p.add_argument("--spec", metavar="FILE", help="run the spec in FILE (a spec, or a run's config.json)")
    _add_run_options(p, "train")

    p = sub.add_parser(
        "compare",
        help="every algorithm with N seeds, then the report",
        description="Run each algorithm with N distinct seeds under the same stopping rule, then write the "
        "report. Any option of a single run (--model, --epochs, --patience, --device, ...) applies to all. "
        "Running the same command again continues where it stopped: finished runs are kept.",
        allow_abbrev=False,
    )
    p.add_argument("dataset")
    p.add_argument("--algos", required=True, help=f"comma-separated, from: {', '.join(sorted(ALGORITHMS))}")
    p.add_argument("--seeds", type=int, default=3, help="distinct seeds per algorithm (default 3)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--baseline", default="backprop")
    p.add_argument(
        "--name", dest="comparison", help="comparison directory under --out (default: compare-DATASET)"
    )
    _add_verdict_options(p)
    _add_run_options(p, "compare")

    p = sub.add_parser(
        "tune",
        help="tune an algorithm's hyperparameters with Optuna",
        description="Tune an algorithm's hyperparameters with Optuna: its search space, validation "
        "accuracy as the objective (never test), one median pruner for every algorithm, the sampler seeded "
        "from the study name. Any option of a single run (--model, --batch-size, --seed, ...) applies to "
        "every trial; a hyperparameter set with --lr or --hp is held fixed and left out of the search. "
        "Running the same command again continues the study; the best parameters go to "
        "OUT/tuning/STUDY.best.json.",
        allow_abbrev=False,
    )
    p.add_argument("dataset")
    p.add_argument("--algo", required=True, metavar="NAME", help=f"one of: {', '.join(sorted(ALGORITHMS))}")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    p.add_argument(
        "--storage", help="an Optuna storage URL, or a journal file (default: OUT/tuning/STUDY.journal)"
    )
    p.add_argument("--study", help="study name (default: DATASET-ALGO); it also seeds the sampler")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the study")
    p.add_argument(
        "--multi-objective", action="store_true", help="validation accuracy and joules (no pruning)"
    )
    _add_run_options(p, "tune")

    p = sub.add_parser(
        "report",
        help="the report of finished runs",
        description="Write a comparison report (Markdown, CSV, PNG plots, HTML page) from run directories.",
        allow_abbrev=False,
    )
    p.add_argument("runs_dir", help="a directory holding run directories (searched at any depth)")
    p.add_argument("--baseline", default="backprop", help="the variant that ratios are taken to")
    p.add_argument("--report-dir", help="where the report goes (default: RUNS_DIR/report)")
    _add_verdict_options(p)
    p.add_argument("-q", "--quiet", action="store_true")
    return top


def parse(argv: list[str]) -> argparse.Namespace:
    """The namespace of a command line; ``train`` is inserted where no command is named."""
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = ["train", *argv]
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    args.argv = argv
    if extras:
        refused = SET_BY.get(args.command, {})
        for token in (t for t in extras if t.startswith("-")):
            name = token.split("=", 1)[0]
            # Abbreviations are off, but a prefix of a refused option must still be refused by name.
            hit = next((o for o in refused if o.startswith(name) and len(name) > 2), None)
            if hit is not None:
                why = refused[hit]
                said = (
                    ""
                    if name == hit
                    else f"{token}: options are never abbreviated, and this reads as {hit}; "
                )
                if why:
                    raise UsageError(f"{said}{hit} is set by {args.command} itself; {why}")
                raise UsageError(f"{said}{hit} is not an option of {args.command}")
        # Anything else: argparse's own message, with the command's usage, and exit status 2.
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def run_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run options given on the command line, as spec.resolve's keywords (the grid for CO2 defaults to
    $LOCALEARN_COUNTRY), and the command line itself, as it can be typed again."""
    given = {k: v for k, v in vars(args).items() if k in RUN_OPTIONS}
    given["command"] = " ".join(
        ["python -m localearn.experiments", args.command, *map(shlex.quote, args.argv[1:])]
    )
    if "LOCALEARN_COUNTRY" in os.environ:
        given.setdefault("country", os.environ["LOCALEARN_COUNTRY"])
    return given


def _add_verdict_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target",
        type=float,
        metavar="ACC",
        help=f"the validation accuracy that energy and time are counted to (default: "
        f"{verdicts.TARGET_FRACTION:.0%} of the baseline's mean best)",
    )
    p.add_argument(
        "--passes", type=int, metavar="N", help="the matched data passes (default: the smallest run's total)"
    )


def dispatch(args: argparse.Namespace) -> int:
    """Resolve the command line into specs and hand them to the command's module."""
    if args.command == "report":
        return report.main(
            args.runs_dir, args.baseline, args.report_dir, target=args.target, passes=args.passes
        )
    options = run_options(args)
    check_writable(options.get("out", "runs"))
    if args.command == "compare":
        algorithms = [a.strip() for a in args.algos.split(",") if a.strip()]
        root = Path(options.get("out", "runs")) / (args.comparison or f"compare-{Path(args.dataset).name}")
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        specs = compare.plan(
            algorithms, seeds, root, lambda algo, seed: spec.resolve(args.dataset, algo, **options, seed=seed)
        )
        return compare.main(
            specs, root, args.baseline, quiet=args.quiet, target=args.target, passes=args.passes
        )
    if args.command == "tune":
        run = spec.resolve(args.dataset, args.algo, **options)
        study = tune.resolve(
            run,
            trials=args.trials,
            workers=args.workers,
            study=args.study,
            storage=args.storage,
            multi_objective=args.multi_objective,
        )
        return tune.main(study, quiet=args.quiet)
    if args.spec is not None:
        given = {k for k in vars(args) if k in RUN_OPTIONS}
        extra = sorted(given - {"progress", "resume"}) + (["DATASET"] if args.dataset else [])
        if extra or args.algo:
            raise UsageError(f"--spec takes no other run options (got {', '.join(extra or ['--algo'])})")
        loaded = spec.RunSpec.load(args.spec)
        return train.main(
            loaded.replace(
                progress=options.get("progress", loaded.progress),
                resume=loaded.resume or options.get("resume", False),
            )
        )
    if args.dataset is None or args.algo is None:
        raise UsageError("train needs DATASET and --algo NAME (or --spec FILE)")
    run = spec.resolve(args.dataset, args.algo, **options)
    if run.resume and not (run.run_dir / "config.json").exists():
        raise UsageError(
            f"--resume: there is no run to continue in {run.run_dir}; leave out --resume to start it"
        )
    return train.main(run)


def resume_command(argv: list[str], run_dir: Path) -> str:
    """The command line that continues the run in ``run_dir``: the same options, its name, --resume."""
    if "--spec" in argv or any(a.startswith("--spec=") for a in argv):
        config = shlex.quote(str(run_dir / "config.json"))
        return f"python -m localearn.experiments train --spec {config} --resume"
    kept, skip = [], False
    for a in argv:
        if skip or a == "--resume" or a.startswith("--name="):
            skip = False
            continue
        skip = a == "--name"
        if not skip:
            kept.append(a)
    return " ".join(
        [
            "python -m localearn.experiments",
            *map(shlex.quote, kept),
            "--name",
            shlex.quote(run_dir.name),
            "--resume",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = None
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        return dispatch(args)
    except (DataError, HyperparameterError, KeyError, ValueError, OSError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except train.Interrupted as e:  # Ctrl-C during a run: one line, and how to go on
        print(f"interrupted: continue with {resume_command(args.argv, e.run_dir)}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # compare and tune continue where they stopped when run again
        again = f" (python -m localearn.experiments {shlex.join(args.argv)})" if args is not None else ""
        print(f"interrupted: continue with the same command{again}", file=sys.stderr)
        return 130
    except (DivergenceError, ParallelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
