"""A run, described once: the frozen, JSON-serialisable RunSpec, and how it is resolved and checked.

Every command builds its runs as RunSpecs; compare's runs and tune's workers are started with a spec file,
never with a rebuilt command line, and each run's config.json holds its spec. Values are resolved once,
each from the highest of these layers that sets it (the spec's ``sources`` says which one did):

    1. default      the rule's Config defaults and the command line's defaults
    2. dataset      the dataset's preset (presets.DATASETS): model, epochs, batch size, augmentation, patience
    3. rule         the rule's own network kind (``default_model``), where it has one
    4. preset:*     the algorithm's preset for every dataset, then ``preset:DATASET`` for this one
    5. preset:N=V   the algorithm's presets for its final choices (``variant=local_activity``, ``model=cnn``)
    5b. recipe:R    a paper's comparison settings (``--recipe ccl_paper``, presets.RECIPES), where asked for
    6. params       tuned hyperparameters (``--params best`` or a JSON file)
    7. flag         the command line's options (--model, --epochs, --lr, ...)
    8. hp           ``--hp NAME=VALUE``

and the whole spec is validated before any data is loaded.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import models
from ..algorithms import HyperparameterError, check_hyperparameters, get_algorithm, hyperparameter_fields
from ..data import resolve_device
from ..parallel.layout import MODES as PARALLEL_MODES
from ..trainer import MONITORS
from . import presets

# The fields that say where a run reads, writes and how it shows itself: a run resumed with other values
# for these computes the same thing, so config.json keeps them apart ("invocation") and resume ignores them.
INVOCATION = ("data_dir", "cache_dir", "out", "name", "resume", "progress", "sources", "command")
# A layer-parallel run computes what the one-process run computes (localearn.parallel), so its layout is
# how the run is invoked, not what it is: a run may be resumed with another layout, or in one process.
INVOCATION += ("parallel", "world_size", "devices", "in_flight")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    dataset: str  # a dataset name, or a path to an ImageFolder tree
    algorithm: str
    model: str  # a model spec with its sizes written out, e.g. "mlp:1000,1000"
    hyperparameters: dict[str, Any]  # every field of the rule's Config
    epochs: int  # epoch cap (per stage for staged rules)
    batch_size: int
    patience: int | None  # None: no early stopping
    min_delta: float
    monitor: str
    augment: bool
    val_fraction: float
    seed: int
    device: str  # as asked for: "auto", "cpu", "cuda:0", ...
    energy: bool
    country: str  # the grid for CO2
    data_dir: str | None
    cache_dir: str | None
    out: str  # root of run directories
    name: str  # the run directory's name under ``out``
    resume: bool
    progress: bool
    sources: dict[str, str]  # which layer set each hyperparameter and run setting
    command: str = ""  # the command line that asked for the run, as it can be typed again
    recipe: str = ""  # a paper's comparison settings (presets.RECIPES); "": the presets alone
    parallel: str = ""  # "units": the rule's units in separate processes (localearn.parallel); "wavefront":
    # in one process on one device, a CUDA stream per stage; "": the one-process schedule
    world_size: int = 0  # stages of a parallel run (0: one per device of ``devices``; wavefront: per unit)
    devices: str = ""  # a parallel run's stage devices, comma-separated ("": every stage on ``device``)
    in_flight: int = 2  # batches that may wait between two stages

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        fields = {f.name for f in dataclasses.fields(cls)}
        # Specs written before a field with a default was recorded take its default.
        d = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING} | d
        if set(d) != fields:
            raise ValueError(
                f"not a run spec: missing {sorted(fields - set(d))}, unexpected {sorted(set(d) - fields)}"
            )
        return cls(**d).validated()

    def save(self, path: str | os.PathLike) -> Path:
        from ..rundir import atomic_write_json

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunSpec:
        """A spec file, or a run's config.json (which holds its spec)."""
        data = json.loads(Path(path).read_text())
        if "spec" in data and "invocation" in data:
            data = {**data["spec"], **data["invocation"]}
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> RunSpec:
        return dataclasses.replace(self, **changes).validated()

    # -- what config.json records ------------------------------------------------------------------------
    def computed(self) -> dict[str, Any]:
        """The fields that decide what the run computes (compared when a run is resumed)."""
        return {k: v for k, v in self.to_dict().items() if k not in INVOCATION}

    def invocation(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k in INVOCATION}

    @property
    def dataset_label(self) -> str:
        return dataset_label(self.dataset)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / self.name

    # -- checks ----------------------------------------------------------------------------------------
    def validated(self) -> RunSpec:
        """Check everything that can be checked without loading data; return self."""
        cls = get_algorithm(self.algorithm)
        check_hyperparameters(self.algorithm, self.hyperparameters)
        models.parse_spec(self.model)
        valid = [m for m in MONITORS if m in cls.monitors]
        if self.monitor not in valid:
            raise ValueError(
                f"monitor={self.monitor!r} is not valid for {self.algorithm}; "
                f"choose one of: {', '.join(valid)}" + (f" ({cls.monitor_note})" if cls.monitor_note else "")
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience={self.patience!r} must be >= 1, or None (0 on the command line)")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r} must lie in [0, 1)")
        resolve_device(self.device)
        self._check_parallel()
        countries = known_countries() if self.energy else None
        if countries is not None and self.country not in countries:
            raise ValueError(
                f"--country {self.country!r} is not an ISO 3166 alpha-3 code CodeCarbon has grid data for "
                f"(e.g. USA, FRA, DEU, GBR, JPN; {len(countries)} in all)"
            )
        return self

    def _check_parallel(self) -> None:
        if self.parallel not in ("", *PARALLEL_MODES):
            raise ValueError(
                f"--parallel {self.parallel!r} is not valid; choose one of: {', '.join(PARALLEL_MODES)}"
            )
        if not self.parallel:
            if self.world_size or self.devices:
                raise ValueError("--world-size and --devices need --parallel units (or wavefront)")
            return
        if self.parallel == "wavefront":
            if self.devices:
                raise ValueError("--parallel wavefront runs on one device: --device names it, not --devices")
            if self.world_size == 1 or self.world_size < 0:
                raise ValueError(f"--world-size {self.world_size}: the wavefront needs 2 stages or more")
            return
        devices = [d for d in self.devices.split(",") if d]
        for device in devices:
            resolve_device(device)
        if not devices and self.world_size < 2:
            raise ValueError(f"--parallel units needs --world-size K>=2 or --devices: got {self.world_size}")
        if self.in_flight < 1:
            raise ValueError(f"--in-flight {self.in_flight} must be >= 1")


@functools.cache
def known_countries() -> frozenset[str] | None:
    """The countries CodeCarbon's bundled tables can turn joules into CO2 for; None without CodeCarbon."""
    try:
        from codecarbon.input import DataSource
    except ImportError:
        return None
    return frozenset(DataSource().get_global_energy_mix_data())


def parse_hparams(algorithm: str, items: Sequence[str]) -> dict[str, Any]:
    """NAME=VALUE strings -> typed values, checked against the algorithm's hyperparameters."""
    fields = hyperparameter_fields(algorithm)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise HyperparameterError(f"--hp {item!r}: expected NAME=VALUE")
        if key not in fields:
            raise HyperparameterError(
                f"unknown hyperparameter {key!r} for {algorithm}; valid: {', '.join(fields)}"
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


def tuned_params(path: str | os.PathLike, algorithm: str, hint: str = "") -> dict[str, Any]:
    """The hyperparameters of a tune study's best.json (or of any JSON file of NAME: VALUE)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--params: {path} does not exist{hint}")
    data = json.loads(path.read_text())
    if "pareto_front" in data:
        raise ValueError(
            f"--params {path}: a multi-objective study has no single best; copy one trial's params from its "
            "pareto_front into a file and pass that"
        )
    params = data.get("params", data)
    unknown = sorted(set(params) - set(hyperparameter_fields(algorithm)))
    if unknown:
        raise HyperparameterError(
            f"--params {path}: {', '.join(unknown)} are not hyperparameters of {algorithm}"
        )
    return params


def best_params_path(out: str | os.PathLike, dataset: str, algorithm: str) -> Path:
    """Where ``tune`` leaves a study's best parameters (the default study name is DATASET-ALGO)."""
    return Path(out) / "tuning" / f"{Path(dataset).name}-{algorithm}.best.json"


def resolve(
    dataset: str,
    algorithm: str,
    *,
    hp: Sequence[str] = (),
    params: str | None = None,
    out: str = "runs",
    name: str | None = None,
    seed: int = 0,
    device: str = "auto",
    data_dir: str | None = None,
    cache_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    energy: bool = True,
    country: str = "USA",
    min_delta: float = 0.0,
    monitor: str = "val_accuracy",
    val_fraction: float = 0.1,
    command: str = "",
    recipe: str = "",
    parallel: str = "",
    world_size: int = 0,
    devices: str = "",
    in_flight: int = 2,
    **flags: Any,
) -> RunSpec:
    """The RunSpec of one run. ``flags`` are the command line's run settings and ``lr`` (None: not given);
    ``hp`` the ``--hp NAME=VALUE`` strings; ``params`` "best" or a JSON file of tuned values; ``recipe`` a
    paper's comparison settings, over the presets."""
    cls = get_algorithm(algorithm)
    unknown = sorted(set(flags) - {*presets.RUN_SETTINGS, "lr"})
    if unknown:
        raise TypeError(f"resolve() got unknown run settings {unknown}")
    flags = {k: v for k, v in flags.items() if v is not None}
    from_hp = parse_hparams(algorithm, hp)
    tuned: dict[str, Any] = {}
    if params is not None:
        where = best_params_path(out, dataset, algorithm) if params == "best" else Path(params)
        hint = f" (run: python -m localearn.experiments tune {dataset} --algo {algorithm} ...)"
        tuned = tuned_params(where, algorithm, hint if params == "best" else "")

    # Layers 1-4 and the choices that key layer 5 (a choice's final value, from any layer above 4).
    defaults = {f: v.default for f, v in hyperparameter_fields(algorithm).items()}
    label = dataset_label(dataset)
    layers: list[tuple[str, dict[str, Any]]] = [
        ("default", defaults),
        ("dataset", presets.dataset_preset(label)),
    ]
    if cls.default_model is not None:
        layers.append(("rule", {"model": cls.default_model}))
    recipe_layers = presets.recipe_layers(recipe, algorithm, label) if recipe else []
    upper = [*recipe_layers, ("params", tuned), ("flag", flags), ("hp", from_hp)]
    base = presets.algorithm_layers(algorithm, label, {})
    choices = {}
    for _, layer in [*layers, *base, *upper]:
        choices.update({k: v for k, v in layer.items() if isinstance(defaults.get(k), str)})
        if "model" in layer:  # the network's kind keys presets too (model=cnn)
            choices["model"] = models.parse_spec(layer["model"])[0]
    layers += presets.algorithm_layers(algorithm, label, choices) + upper

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, layer in layers:
        for key, value in layer.items():
            values[key], sources[key] = value, source
    # A bare kind on the command line (--model mlp) takes the sizes of the model the presets give, or, for
    # another kind, the sizes a rule's preset gives that kind on this dataset (backprop on --model resmlp
    # gets DiffusionBlocks' backbone), so that every rule of a comparison has the same network.
    preset = [layer["model"] for source, layer in layers if source not in ("flag", "hp") and "model" in layer]
    like = preset[-1] if preset else None
    kind = models.parse_spec(values["model"])[0]
    if like is None or models.parse_spec(like)[0] != kind:
        like = presets.preset_model_of_kind(kind, label) or like
    model = models.canonical_spec(values["model"], like=like)
    return RunSpec(
        dataset=dataset,
        algorithm=algorithm,
        model=model,
        hyperparameters={k: values[k] for k in defaults},
        epochs=values["epochs"],
        batch_size=values["batch_size"],
        patience=values["patience"] or None,
        min_delta=min_delta,
        monitor=monitor,
        augment=values["augment"],
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        energy=energy,
        country=country,
        data_dir=data_dir,
        cache_dir=cache_dir,
        out=str(out),
        name=name or default_name(label, algorithm, model, seed, recipe),
        resume=resume,
        progress=progress,
        sources=sources,
        command=command,
        recipe=recipe,
        parallel=parallel,
        world_size=world_size,
        devices=devices,
        in_flight=in_flight,
    ).validated()


def dataset_label(dataset: str) -> str:
    """A dataset's name in run names and presets: a named dataset as is, an ImageFolder tree by its folder."""
    return Path(dataset).name if Path(dataset).is_dir() else dataset


def default_name(dataset_label: str, algorithm: str, model: str, seed: int, recipe: str = "") -> str:
    """DATASET-ALGO-MODEL[-RECIPE]-sSEED, the model spec made path-friendly (mlp:256,256:tanh ->
    mlp256x256-tanh)."""
    model_label = model.replace(":", "", 1).replace(":", "-").replace(",", "x")
    return f"{dataset_label}-{algorithm}-{model_label}{f'-{recipe}' if recipe else ''}-s{seed}"
