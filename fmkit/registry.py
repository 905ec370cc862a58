"""The plugin registry: discovery (entry-point group ``fmkit``, once per process), selection by name,
option validation, and the plugin manager of a run.

Every plugin, built-in or third-party, is found the same way: an entry point in the ``fmkit``
group naming a class with ``name``, ``stage``, an ``Options`` pydantic model and ``@fmkit.hookimpl``
methods. It is instantiated as ``cls(options)``; an optional ``check(config)`` method raises
FmkitError for settings it cannot serve, before any data or weights load, and an optional
``train_defaults`` dict changes ``train.*`` defaults the user did not set. Optional ``requires`` and
``provides`` name capabilities (``CAPABILITIES``) that one plugin needs from another, so that a
combination that cannot work fails before any weights load, without one plugin reading another's
options. A plugin that fails to import is recorded with its error and only matters when selected.
"""

from __future__ import annotations

import difflib
import functools
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Sequence

from pydantic import BaseModel, ValidationError

from fmkit.config import RunConfig, describe_validation_error
from fmkit.errors import FmkitError

ENTRY_POINT_GROUP = "fmkit"
STAGES: dict[str, str] = {
    "pretrain": "fmkit_pretrain",
    "data": "fmkit_data",
    "fuse": "fmkit_fuse",
    "adapt": "fmkit_adapt",
    "harden": "fmkit_harden",
    "combine": "fmkit_combine",
}
MULTI_PLUGIN_STAGES = {"data", "harden"}  # several plugins may serve these; one at most for the others
DEFAULTS = {"pretrain": "hf", "adapt": "full"}  # used when no plugin of the stage is selected
BUILTIN_DISTRIBUTION = "fmkit"
CAPABILITIES = {
    "merge": "members whose training folds into plain model weights",
}
"""What a plugin may declare in ``provides`` and ask for in ``requires``."""


@dataclass
class PluginInfo:
    """An installed plugin as discovery found it (the class, or why it could not be loaded)."""

    name: str
    target: str
    distribution: str
    version: str
    cls: type | None = None
    error: str | None = None

    @property
    def stage(self) -> str:
        return getattr(self.cls, "stage", "?")

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip() if self.cls else ""
        return doc.splitlines()[0] if doc else ""


@dataclass
class Selection:
    """The plugins taking part in one run, instantiated with validated options, and their manager."""

    plugins: list[Any]
    infos: dict[str, PluginInfo]
    manager: Any = field(repr=False)

    def by_stage(self, stage: str) -> list[Any]:
        return [p for p in self.plugins if p.stage == stage]

    def describe(self) -> dict[str, Any]:
        """Name, stage, package, version and resolved options of each plugin (for config.json)."""
        return {
            p.name: {
                "stage": p.stage,
                "package": self.infos[p.name].distribution,
                "version": self.infos[p.name].version,
                "options": p.options.model_dump(mode="json"),
            }
            for p in self.plugins
        }


def autoload_disabled() -> bool:
    return os.environ.get("FMKIT_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0", "false")


def discover() -> dict[str, PluginInfo]:
    """Every plugin installed in the ``fmkit`` entry-point group, loaded or with its import error.
    Read once per process (``refresh()`` forgets it, e.g. after installing a plugin in a test)."""
    return dict(_discover(autoload_disabled()))


def refresh() -> None:
    _discover.cache_clear()


@functools.cache
def _discover(builtin_only: bool) -> dict[str, PluginInfo]:
    found: dict[str, PluginInfo] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        if builtin_only and dist != BUILTIN_DISTRIBUTION:
            continue
        info = PluginInfo(ep.name, ep.value, dist, ep.dist.version if ep.dist else "?")
        other = found.get(ep.name)
        if other is not None and other.distribution != dist:  # ambiguous: neither is used, both are named
            other.cls = None
            other.error = f"name clash: {dist} {info.version} provides a plugin {ep.name!r} too; uninstall one of them"
            continue
        try:
            info.cls = ep.load()
            problem = _contract_problem(ep.name, info.cls)
        except (Exception, SystemExit) as exc:  # a broken third-party package must not break fmkit
            problem = f"{type(exc).__name__}: {exc}"
        if problem:
            info.cls, info.error = None, problem
        found[ep.name] = info
    return found


def _contract_problem(name: str, cls: Any) -> str | None:
    """Why ``cls`` is not a usable plugin, or None."""
    stage = getattr(cls, "stage", None)
    if stage not in STAGES:
        return f"stage {stage!r} is not one of {', '.join(STAGES)}"
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        return "has no Options pydantic model"
    if getattr(cls, "name", name) != name:
        return f"class name {cls.name!r} differs from its entry-point name {name!r}"
    if not callable(getattr(cls, STAGES[stage], None)):
        return f"does not implement the {STAGES[stage]} hook of its stage"
    return None


def is_wrapper(plugin_cls: type, hook: str) -> bool:
    """Whether the class implements ``hook`` as a pluggy wrapper (a continuation, not a provider)."""
    opts = getattr(getattr(plugin_cls, hook, None), "fmkit_impl", None) or {}
    return bool(opts.get("wrapper") or opts.get("hookwrapper"))


def lookup(name: str, available: dict[str, PluginInfo]) -> PluginInfo:
    """The installed plugin called ``name``, or a one-line error listing what is there."""
    info = available.get(name)
    if info is None:
        hint = difflib.get_close_matches(name, list(available), n=1)
        listing = ", ".join(sorted(available)) or "none"
        raise FmkitError(
            f"unknown plugin {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; installed: {listing}"
        )
    if info.cls is None:
        raise FmkitError(f"plugin {name!r} from {info.distribution} {info.version} cannot be used: {info.error}")
    return info


def select(config: RunConfig, available: dict[str, PluginInfo] | None = None, check: bool = True,
           callbacks: Sequence[Any] = ()) -> Selection:
    """Choose, validate and instantiate the run's plugins; register them, then the core's fallbacks
    (``fmkit.defaults``), in a fresh plugin manager. ``check=False`` skips the plugins' ``check`` of the
    training inputs (a saved run reloads elsewhere, without the foundation or files it was trained on), and
    of the trackers of ``train.report_to``. ``callbacks``: objects with ``@fmkit.hookimpl`` methods (usually
    ``fmkit_event`` listeners) registered beside the plugins, for this run only.

    Fails (FmkitError) before any weights load: unknown or broken plugin, two plugins for a stage
    that takes one, options for a plugin that is not selected, options that do not validate, or a
    capability one plugin requires that no other provides. The plugins are held, registered and called
    in the order of their names, so a run never depends on the order of ``--plugins``.
    """
    available = discover() if available is None else available
    names = list(dict.fromkeys(config.plugins))
    if len(names) != len(config.plugins):
        raise FmkitError(f"--plugins names a plugin twice: {','.join(config.plugins)}")
    infos = {name: lookup(name, available) for name in names}

    for stage, hook in STAGES.items():
        providers = [n for n in names if infos[n].stage == stage and not is_wrapper(infos[n].cls, hook)]
        if stage not in MULTI_PLUGIN_STAGES and len(providers) > 1:
            raise FmkitError(
                f"plugins {providers[0]!r} and {providers[1]!r} both serve the {stage} stage, which takes one"
            )
        if not providers and stage in DEFAULTS:
            default = DEFAULTS[stage]
            infos[default] = lookup(default, available)
            names.insert(0, default)
        if stage == "fuse" and not providers and config.task == "multimodal":
            fusers = sorted(n for n, i in available.items() if i.cls is not None and i.stage == "fuse")
            raise FmkitError("--task multimodal needs a fuse plugin in --plugins: "
                             + (", ".join(fusers) if fusers else "none is installed"))

    for name in config.plugin_options:
        if name not in infos:
            raise FmkitError(f"options given for plugin {name!r}, which is not selected (add it to --plugins)")

    plugins = [instantiate(infos[name], config.plugin_options.get(name, {})) for name in sorted(names)]
    check_capabilities(plugins)
    for plugin in plugins:  # optional early checks against the whole config (paths, combinations)
        if check and callable(getattr(plugin, "check", None)):
            plugin.check(config)
    if check and config.train.report_to:
        from fmkit.trackers import check as check_trackers

        check_trackers(config.train.report_to)
    return Selection(plugins=plugins, infos=infos, manager=plugin_manager(plugins, callbacks))


def instantiate(info: PluginInfo, options: dict[str, Any], prefix: str | None = None) -> Any:
    """The plugin of ``info`` with its options validated (errors name ``prefix``, default its name)."""
    cls = info.cls
    try:
        validated = cls.Options.model_validate(options)
    except ValidationError as exc:
        raise FmkitError(describe_validation_error(exc, prefix=prefix or info.name, model=cls.Options)) from None
    plugin = cls(validated)
    plugin.name, plugin.stage = info.name, cls.stage
    return plugin


def create(name: str, options: dict[str, Any], stage: str, option: str, options_option: str) -> Any:
    """Another installed plugin of ``stage``, instantiated with validated ``options``, for a plugin whose
    technique wraps it (a distillation student prepared by an adapt plugin). Errors name the wrapping
    plugin's options: ``option`` holds the name, ``options_option`` the options."""
    info = lookup(name, discover())
    if info.stage != stage:
        raise FmkitError(f"{option}: {name!r} serves the {info.stage} stage, not the {stage} stage")
    return instantiate(info, options, prefix=options_option)


def check_capabilities(plugins: list[Any]) -> None:
    """Every capability a plugin ``requires`` is in another selected plugin's ``provides``."""
    provided = {c for p in plugins for c in getattr(p, "provides", ())}
    for plugin in plugins:
        for capability in getattr(plugin, "requires", ()):
            if capability not in provided:
                others = ", ".join(p.name + _set_options(p) for p in plugins if p is not plugin)
                raise FmkitError(f"plugin {plugin.name!r} requires {CAPABILITIES.get(capability, capability)} "
                                 f"({capability!r}), which none of {others} provides")


def _set_options(plugin: Any) -> str:
    """`` (name.option=value, ...)`` for the options the user set, or nothing."""
    chosen = [f"{plugin.name}.{k}={getattr(plugin.options, k)}" for k in sorted(plugin.options.model_fields_set)]
    return f" ({', '.join(chosen)})" if chosen else ""


def plugin_manager(plugins: list[Any], callbacks: Sequence[Any] = ()) -> Any:
    """A pluggy manager holding ``plugins``, ``callbacks`` and, last, the core's fallbacks."""
    import pluggy

    from fmkit import hookspecs
    from fmkit.defaults import CoreDefaults

    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    manager.register(CoreDefaults(), name="fmkit-core")
    for plugin in plugins:
        manager.register(plugin, name=plugin.name)
    for callback in callbacks:
        manager.register(callback)
    return manager


def train_default_sources(config: RunConfig, selection: Selection) -> dict[str, tuple[Any, str]]:
    """``{option: (value, who)}`` for every ``train.*`` option: set by the user ("you"), brought by
    plugins (``train_defaults``: "plugin NAME", or "plugins A, B" when they agree) or fmkit's default.

    The composition rule: a plugin's default applies only where the user set nothing; plugins that bring
    the same value agree; two plugins that bring different values for an option the user did not set are
    an error naming both and the option, before any weights load. Never the order of ``--plugins``."""
    brought: dict[str, dict[str, Any]] = {}
    for plugin in sorted(selection.plugins, key=lambda p: p.name):
        for key, value in getattr(plugin, "train_defaults", {}).items():
            brought.setdefault(key, {})[plugin.name] = value
    sources: dict[str, tuple[Any, str]] = {}
    for key in type(config.train).model_fields:
        if key in config.train.model_fields_set:
            sources[key] = (getattr(config.train, key), "you")
        elif key in brought:
            values = brought[key]
            if len(set(map(repr, values.values()))) > 1:
                (a, va), (b, vb) = list(values.items())[:2]
                raise FmkitError(f"plugins {a!r} and {b!r} bring different defaults for train.{key} ({va!r} and {vb!r}): "
                                 f"choose one, e.g. --set train.{key}={va!r}")
            names = ", ".join(values)
            sources[key] = (next(iter(values.values())), f"plugin{'s' if len(values) > 1 else ''} {names}")
        else:
            sources[key] = (getattr(config.train, key), "default")
    return sources


def with_train_defaults(config: RunConfig, selection: Selection) -> RunConfig:
    """``config`` with the plugins' training defaults applied by the composition rule of
    ``train_default_sources`` (what the user set wins; disagreeing plugins are an error)."""
    update = {key: value for key, (value, who) in train_default_sources(config, selection).items()
              if who.startswith("plugin")}
    if not update:
        return config
    return config.model_copy(update={"train": config.train.model_copy(update=update)})


def options_table(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) for each field of a plugin's Options model (or of a pydantic
    model such as ``TrainConfig``, for the docs)."""
    model = cls if issubclass(cls, BaseModel) else cls.Options
    rows = []
    for field_name, f in model.model_fields.items():
        default = f.default_factory() if f.default_factory else f.default
        rows.append((field_name, type_name(f.annotation), repr(default), f.description or ""))
    return rows


def type_name(annotation: Any) -> str:
    """How an option's type reads for a user: a fixed set of values as its choices (``lora | ia3``), not
    ``Literal[...]``; ``int | None`` for optional ones; a class by its name."""
    import types
    import typing

    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(map(str, arguments))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in arguments)
    return str(annotation).replace("typing.", "") if arguments else getattr(annotation, "__name__", str(annotation))
