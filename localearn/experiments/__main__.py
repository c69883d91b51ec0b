"""The command line.

    python -m localearn.experiments DATASET --algo NAME [options]      one run
    python -m localearn.experiments compare DATASET --algos a,b --seeds N  several, then the report
    python -m localearn.experiments report RUNS_DIR [--baseline backprop]  the report of finished runs

One command gives a paper-grade run: the dataset's preset network and settings (experiments/presets.py),
the algorithm's preset hyperparameters, one stopping rule, and a run directory under --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from .. import models
from ..algorithms import ALGORITHMS, HyperparameterError, get_algorithm, hyperparameter_fields, make
from ..data import DATASETS, DataError, load_dataset, resolve_device
from ..energy import EnergyCallback, EnergyMeter
from ..trainer import MONITORS, DivergenceError, Trainer
from .presets import RUN_SETTINGS, preset_for
from .report import write_report

log = logging.getLogger("localearn.experiments")


def _algorithms_help() -> str:
    lines = ["algorithms and their hyperparameters (set with --hp NAME=VALUE):"]
    for name, cls in sorted(ALGORITHMS.items()):
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config))
        lines.append(f"  {name:<14} {fields}")
    lines.append(f"datasets: {', '.join(DATASETS)}, or a path to an ImageFolder tree (train/ and test/)")
    lines.append(
        "example: python -m localearn.experiments mnist --algo mono_forward --hp schedule=sequential"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localearn.experiments",
        description="Train one algorithm on one dataset under localearn's common protocol.",
        epilog=_algorithms_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", help=f"{', '.join(DATASETS)}, or a path to an ImageFolder tree")
    p.add_argument(
        "--algo",
        required=True,
        choices=sorted(ALGORITHMS),
        metavar="NAME",
        help=f"one of: {', '.join(sorted(ALGORITHMS))}",
    )
    p.add_argument("--model", help="mlp, mlp:H1,H2,..., cnn or cnn:C1,C2,... (default: the dataset's preset)")
    p.add_argument("--epochs", type=int, help="epoch cap (per stage for staged schedules)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate (default: the preset's)")
    p.add_argument(
        "--hp",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other hyperparameter of the algorithm; repeatable",
    )
    p.add_argument(
        "--params",
        metavar="best|FILE",
        help="tuned hyperparameters: 'best' reads OUT/tuning/DATASET-ALGO.best.json (written by tune), or "
        "a JSON file; over the presets, under --lr and --hp",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--data-dir", help="where datasets are found (default: $LOCALEARN_DATA, else ./data)")
    p.add_argument(
        "--cache-dir", help="decoded-image cache (default: $LOCALEARN_CACHE, else ~/.cache/localearn)"
    )
    p.add_argument("--out", default="runs", help="root of run directories (default: ./runs)")
    p.add_argument("--name", help="run directory name under --out (default: DATASET-ALGO-MODEL-sSEED)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out/--name")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (0 disables)")
    p.add_argument("--min-delta", type=float, default=0.0)
    p.add_argument("--monitor", default="val_accuracy", choices=sorted(MONITORS))
    p.add_argument("--val-fraction", type=float, default=0.1)
    aug = p.add_mutually_exclusive_group()
    aug.add_argument(
        "--augment",
        dest="augment",
        action="store_true",
        default=None,
        help="random crop + flip on the device (CIFAR presets turn it on)",
    )
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument(
        "--country",
        default=os.environ.get("LOCALEARN_COUNTRY", "USA"),
        help="ISO 3166 alpha-3 code of the grid for CO2 (default: $LOCALEARN_COUNTRY, else USA)",
    )
    p.add_argument("--no-energy", action="store_true", help="do not meter energy (time and memory only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    return p


def parse_hparams(algo: str, items: list[str]) -> dict[str, Any]:
    """NAME=VALUE strings -> typed values, checked against the algorithm's hyperparameters."""
    fields = hyperparameter_fields(algo)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise HyperparameterError(f"--hp {item!r}: expected NAME=VALUE")
        if key not in fields:
            raise HyperparameterError(
                f"unknown hyperparameter {key!r} for {algo}; valid: {', '.join(fields)}"
            )
        kind = type(fields[key].default)
        try:
            if kind is bool:
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                out[key] = raw.lower() in ("true", "1")
            else:
                out[key] = kind(raw)
        except ValueError:
            raise HyperparameterError(f"--hp {key}={raw!r}: expected a {kind.__name__}") from None
    return out


def run_dir_for(out: Path, name: str, resume: bool) -> Path:
    """--resume continues the named directory; otherwise a used name gets a numbered suffix."""
    path = out / name
    if resume or not path.exists():
        return path
    n = 2
    while (out / f"{name}-{n}").exists():
        n += 1
    return out / f"{name}-{n}"


def tuned_params(args: argparse.Namespace) -> dict[str, Any]:
    """--params: the hyperparameters a tune study found best (its best.json, or any JSON file)."""
    study = f"{Path(args.dataset).name}-{args.algo}"
    path = Path(args.out) / "tuning" / f"{study}.best.json" if args.params == "best" else Path(args.params)
    if not path.is_file():
        hint = f" (run: python -m localearn.experiments tune {args.dataset} --algo {args.algo} ...)"
        raise ValueError(
            f"--params {args.params}: {path} does not exist" + (hint if args.params == "best" else "")
        )
    data = json.loads(path.read_text())
    if "pareto_front" in data:
        raise ValueError(
            f"--params {path}: a multi-objective study has no single best; copy one trial's params from its "
            "pareto_front into a file and pass that"
        )
    params = data.get("params", data)
    fields = hyperparameter_fields(args.algo)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise HyperparameterError(
            f"--params {path}: {', '.join(unknown)} are not hyperparameters of {args.algo}"
        )
    return params


def resolve_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run settings, hyperparameters): presets overridden by the command line, checked before any work."""
    cli_hparams = parse_hparams(args.algo, args.hp)
    settings, hparams = preset_for(args.dataset, args.algo, cli_hparams.get("variant"))
    for key in RUN_SETTINGS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if args.params:
        hparams.update(tuned_params(args))
    if args.lr is not None:
        hparams["lr"] = args.lr
    hparams.update(cli_hparams)
    get_algorithm(args.algo).Config(**hparams)  # bad values fail here, before any data is loaded
    if settings["model"] == "mlp":  # the preset's MLP sizes, written out so that the result names them
        preset_model = preset_for(args.dataset, args.algo, cli_hparams.get("variant"))[0]["model"]
        settings["model"] = preset_model if preset_model.startswith("mlp:") else "mlp:1000,1000"
    elif settings["model"] == "cnn":
        settings["model"] = "cnn:64,128,256"
    return settings, hparams


def load_splits(args: argparse.Namespace, settings: dict[str, Any], device: torch.device) -> tuple:
    """train, val, test for a run's options (a single run, or every trial of a study)."""
    return load_dataset(
        args.dataset,
        data_dir=args.data_dir,
        device=device,
        val_fraction=args.val_fraction,
        seed=args.seed,
        augment=settings["augment"],
        cache_dir=args.cache_dir,
    )


def build_algorithm(
    args: argparse.Namespace,
    settings: dict[str, Any],
    hparams: dict[str, Any],
    train: Any,
    device: torch.device,
) -> Any:
    """The seeded network of the run's model spec, and the algorithm on it."""
    torch.manual_seed(args.seed)
    net = models.from_spec(settings["model"], train.input_shape, train.num_classes).to(device)
    return make(args.algo, net, train.num_classes, input_shape=train.input_shape, **hparams)


def stopping_options(args: argparse.Namespace, settings: dict[str, Any]) -> dict[str, Any]:
    """The Trainer's loop and stopping-rule settings: one place, so runs and trials share the rule."""
    return {
        "epochs": settings["epochs"],
        "batch_size": settings["batch_size"],
        "patience": settings["patience"] or None,
        "min_delta": args.min_delta,
        "monitor": args.monitor,
        "seed": args.seed,
    }


def train_command(args: argparse.Namespace) -> int:
    settings, hparams = resolve_settings(args)
    device = resolve_device(args.device)
    train, val, test = load_splits(args, settings, device)
    algo = build_algorithm(args, settings, hparams, train, device)
    dataset_label = Path(args.dataset).name if Path(args.dataset).is_dir() else args.dataset
    model_label = settings["model"].replace(":", "", 1).replace(":", "-").replace(",", "x")  # mlp256x256-tanh
    name = args.name or f"{dataset_label}-{args.algo}-{model_label}-s{args.seed}"
    run_dir = run_dir_for(Path(args.out), name, args.resume)
    meter = None if args.no_energy else EnergyMeter(device, country_iso_code=args.country)
    try:
        trainer = Trainer(
            algo,
            train,
            val,
            test,
            **stopping_options(args, settings),
            run_dir=run_dir,
            resume=args.resume,
            progress=not args.no_progress,
            callbacks=[EnergyCallback(meter)] if meter else [],
            run_info={
                "dataset": dataset_label,
                "model": settings["model"],
                "val_fraction": args.val_fraction,
            },
        )
        result = trainer.fit()
    finally:
        if meter:
            meter.close()
    joules = result.extra.get("energy_joules")
    print(
        f"{result.algorithm} on {result.dataset} ({result.model}): test accuracy {result.test_accuracy:.4f}, "
        f"best val accuracy {result.best_val_accuracy}, {result.epochs} epochs, "
        f"{result.train_seconds:.1f} s"
        + (f", {joules:.0f} J ({result.extra['energy_source']})" if joules is not None else "")
        + f" on {result.device} -> {run_dir}"
    )
    return 0


def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localearn.experiments report",
        description="Write a comparison report (Markdown, CSV, PNG plots, HTML page) from run directories.",
    )
    p.add_argument("runs_dir", help="a directory holding run directories (searched at any depth)")
    p.add_argument("--baseline", default="backprop", help="the variant that ratios are taken to")
    p.add_argument("--report-dir", help="where the report goes (default: RUNS_DIR/report)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


def report_command(args: argparse.Namespace) -> int:
    runs_dir = Path(args.runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"runs directory {runs_dir} does not exist")
    out = write_report(runs_dir, baseline=args.baseline, out=args.report_dir)
    print(f"report: {out / 'report.md'}, {out / 'report.html'}, {out / 'report.csv'}")
    return 0


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localearn.experiments compare",
        allow_abbrev=False,  # --seed must not pass for --seeds
        description="Run each algorithm with N distinct seeds under the same stopping rule, then write the "
        "report. Any option of a single run (--model, --epochs, --patience, --device, ...) applies to all. "
        "Running the same command again continues where it stopped: finished runs are kept.",
    )
    p.add_argument("dataset")
    p.add_argument("--algos", required=True, help=f"comma-separated, from: {', '.join(sorted(ALGORITHMS))}")
    p.add_argument("--seeds", type=int, default=3, help="distinct seeds per algorithm (default 3)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--baseline", default="backprop")
    p.add_argument("--out", default="runs", help="root of run directories (default: ./runs)")
    p.add_argument("--name", help="comparison directory under --out (default: compare-DATASET)")
    return p


def compare_command(args: argparse.Namespace, run_options: list[str]) -> int:
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    for algo in algos:
        get_algorithm(algo)
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: need at least one seed per algorithm")
    for forbidden in ("--algo", "--seed", "--name", "--resume", "--out"):
        if forbidden in run_options:
            raise ValueError(
                f"{forbidden} is set by compare itself; use --algos, --seeds, --first-seed, --name"
            )
    root = Path(args.out) / (args.name or f"compare-{Path(args.dataset).name}")

    def options_for(algo: str) -> list[str]:
        # --params best: each algorithm's own study under the run root (each run's --out is the comparison's).
        best = str(Path(args.out) / "tuning" / f"{Path(args.dataset).name}-{algo}.best.json")
        options = [o if o != "--params=best" else f"--params={best}" for o in run_options]
        return [
            best if i and options[i - 1] == "--params" and o == "best" else o for i, o in enumerate(options)
        ]

    seeds = range(args.first_seed, args.first_seed + args.seeds)
    argvs = [
        [
            args.dataset,
            "--algo",
            algo,
            "--seed",
            str(seed),
            "--out",
            str(root),
            "--name",
            f"{algo}-s{seed}",
            "--resume",
            *options_for(algo),
        ]
        for algo in algos
        for seed in seeds
    ]
    for argv in argvs:  # every run's settings are checked before the first one starts
        resolve_settings(build_parser().parse_args(argv))
    # Each run in a process of its own: no run inherits another's caches, allocator state or peak memory
    # (a process's peak RSS only ever grows).
    for i, argv in enumerate(argvs, 1):
        log.info("compare: run %d of %d: %s", i, len(argvs), " ".join(argv))
        done = subprocess.run([sys.executable, "-m", "localearn.experiments", *argv])
        if done.returncode != 0:
            raise RuntimeError(
                f"run {i} of {len(argvs)} failed (exit code {done.returncode}): {' '.join(argv)}"
            )
    out = write_report(root, baseline=args.baseline)
    print(f"report: {out / 'report.md'}, {out / 'report.html'}, {out / 'report.csv'}")
    return 0


def tune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m localearn.experiments tune",
        allow_abbrev=False,
        description="Tune an algorithm's hyperparameters with Optuna: its search space, validation "
        "accuracy as the objective (never test), one median pruner for every algorithm, the sampler seeded "
        "from the study name. Any option of a single run (--model, --batch-size, --seed, --hp, ...) "
        "applies to every trial. Running the same command again continues the study; the best parameters "
        "go to OUT/tuning/STUDY.best.json.",
    )
    p.add_argument("dataset")
    p.add_argument("--algo", required=True, help=f"one of: {', '.join(sorted(ALGORITHMS))}")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    p.add_argument("--epochs", type=int, help="epoch cap per trial (default: the preset's)")
    p.add_argument(
        "--storage", help="an Optuna storage URL, or a journal file (default: OUT/tuning/STUDY.journal)"
    )
    p.add_argument("--study", help="study name (default: DATASET-ALGO); it also seeds the sampler")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine sharing the study")
    p.add_argument(
        "--multi-objective", action="store_true", help="validation accuracy and joules (no pruning)"
    )
    p.add_argument("--out", default="runs", help="run root (default: ./runs)")
    p.add_argument("--worker-trials", type=int, help=argparse.SUPPRESS)  # set for the workers it starts
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    return p


def tune_command(args: argparse.Namespace, run_options: list[str], argv: list[str]) -> int:
    from .. import tuning

    for forbidden in ("--name", "--resume", "--epochs", "--params"):
        if forbidden in run_options:
            raise ValueError(f"{forbidden} is not an option of tune")
    if args.multi_objective and "--no-energy" in run_options:
        raise ValueError("--multi-objective minimises joules: it cannot run with --no-energy")
    if args.trials < 1 or args.workers < 1:
        raise ValueError(f"--trials {args.trials} and --workers {args.workers} must be at least 1")
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    run_args = build_parser().parse_args([args.dataset, "--algo", args.algo, *run_options, *epochs])
    settings, hparams = resolve_settings(run_args)
    cls = get_algorithm(args.algo)
    study_name = args.study or f"{Path(args.dataset).name}-{args.algo}"
    root = Path(args.out) / "tuning"
    storage, journal = tuning.open_storage(args.storage, root, study_name)
    study = tuning.load_study(study_name, storage, args.multi_objective, worker=args.worker_index)

    if args.worker_trials is not None:  # a worker started by the command below
        _tune_worker(study, run_args, settings, hparams, cls, args.worker_trials, args.multi_objective)
        return 0
    if journal:  # trials a killed worker left running can never finish
        tuning.fail_stale_trials(study)
    remaining = args.trials - tuning.finished_trials(study)
    if remaining > 0 and args.workers == 1:
        _tune_worker(study, run_args, settings, hparams, cls, remaining, args.multi_objective)
    elif remaining > 0:
        shares = [remaining // args.workers + (i < remaining % args.workers) for i in range(args.workers)]
        storage_args = ["--storage", args.storage or str(root / f"{study_name}.journal")]
        command = [sys.executable, "-m", "localearn.experiments", *argv, *storage_args]
        workers = [  # worker i: n trials, and a sampler stream of its own
            subprocess.Popen([*command, "--worker-trials", str(n), "--worker-index", str(i + 1)])
            for i, n in enumerate(shares)
            if n > 0
        ]
        codes = [w.wait() for w in workers]
        if any(codes):
            raise RuntimeError(f"tune: workers exited with {codes}; run the same command again to continue")
    best = tuning.write_best(study, root / f"{study_name}.best.json", hparams)
    print(
        f"tune {study_name}: {tuning.finished_trials(study)} finished trials; best -> "
        f"{root / f'{study_name}.best.json'}: {json.dumps(best.get('params', best.get('pareto_front')))}"
    )
    return 0


def _tune_worker(
    study: Any,
    run_args: argparse.Namespace,
    settings: dict[str, Any],
    hparams: dict[str, Any],
    cls: type,
    n_trials: int,
    multi_objective: bool,
) -> None:
    from .. import tuning

    device = resolve_device(run_args.device)
    train, val, _ = load_splits(run_args, settings, device)  # the test split never enters a trial
    meter = None if run_args.no_energy else EnergyMeter(device, country_iso_code=run_args.country)

    def build_trainer(params: dict[str, Any], callbacks: list[Any]) -> Trainer:
        algo = build_algorithm(run_args, settings, {**hparams, **params}, train, device)
        return Trainer(
            algo,
            train,
            val,
            val,  # the Trainer scores a "test" split at the end: here the validation set again
            **stopping_options(run_args, settings),
            progress=False,
            callbacks=([EnergyCallback(meter)] if meter else []) + callbacks,
        )

    try:
        tuning.run_trials(study, build_trainer, cls.search_space, n_trials, multi_objective)
    finally:
        if meter:
            meter.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = argv[0] if argv and argv[0] in ("report", "compare", "tune") else "train"
    if command == "report":
        args, rest = report_parser().parse_args(argv[1:]), []
    elif command in ("compare", "tune"):
        args, rest = (compare_parser() if command == "compare" else tune_parser()).parse_known_args(argv[1:])
    else:
        args, rest = build_parser().parse_args(argv), []
    logging.basicConfig(
        level=logging.WARNING if getattr(args, "quiet", False) or "-q" in rest else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        if command == "report":
            return report_command(args)
        if command == "compare":
            return compare_command(args, rest)
        if command == "tune":
            return tune_command(args, rest, argv)
        return train_command(args)
    except (DataError, HyperparameterError, KeyError, ValueError, FileExistsError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
