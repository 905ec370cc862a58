"""The six stages of a run, declared as pluggy hooks.

A run calls them in this order: ``fmkit_pretrain`` -> ``fmkit_data`` -> ``fmkit_fuse`` -> ``fmkit_harden``
-> ``fmkit_combine``, whose ``fit`` callback calls ``fmkit_adapt`` and the training loop once per member.
Only the plugins selected for the run (and the defaults of the stages left empty) are registered,
so a hook body never has to check whether it was asked for. The core registers its own fallbacks
last (``fmkit.defaults``): a text-only model when no fuse plugin answers, one member when no combine
plugin does. The ``*_load`` hooks rebuild what ``adapt`` and ``combine`` produced from a saved run
directory, for ``fmkit eval`` and ``fmkit predict``; ``fmkit_adapt_share`` and ``fmkit_adapt_merge``
are what the adapt stage tells the combine stage about its models, and ``fmkit_adapt_base`` what the run
directory saves beside an adapter. ``fmkit_event`` is no stage: it tells listeners (trackers, callbacks,
early-stopping rules) what happens while the stages run.

Every hook receives the ``Run``: what one stage hands a later one travels on it (``run.foundation``,
``run.data``, ``run.plugin_state``), never on plugin instances, so a Ray worker that rebuilds the run
sees exactly what the driver saw. The objects the hooks exchange are defined in ``fmkit.types`` and
exported, with the helpers plugins may use, by ``fmkit.plugin``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from fmkit.types import (Ensemble, Event, Example, FitCallback, Foundation, Hardener, Member, ModelBuilder, Run,
                             SharedBackbone)

hookspec = pluggy.HookspecMarker("fmkit")


@hookspec(firstresult=True)
def fmkit_pretrain(run: Run) -> Foundation:
    """Provide the foundation: where the backbone's weights are, and its tokenizer.

    Called once per run, before anything else loads weights. One loader answers (the built-in
    ``hf`` when no other pretrain plugin is selected). A continuation such as masked-LM pretraining
    implements this hook with ``@fmkit.hookimpl(wrapper=True)``: it receives the loaded foundation
    from ``yield`` and returns it further pretrained (weights saved under ``run.directory``).
    The core then sets ``run.foundation``.
    """


@hookspec
def fmkit_data(run: Run, train: Sequence[Example]) -> Sequence[Example] | None:
    """Return the training examples this plugin wants instead of ``train``, or None to leave them.

    Called once per run, after pretrain (``run.foundation`` is set) and before anything is encoded:
    the place to add rows (a transfer set, augmentation), transform or drop them. Several plugins may
    answer; each receives the previous one's rows, in the order of the plugins' names (never the
    order of ``--plugins``). Only training rows change: dev and test (``run.data.dev``/``.test``) are
    the yardstick. Afterwards ``run.data`` is read-only to every hook, and Ray workers receive it as
    it is then. Anything computed here for a later stage goes in ``run.plugin_state[plugin name]``.
    """


@hookspec(firstresult=True)
def fmkit_fuse(run: Run, foundation: Foundation) -> ModelBuilder:
    """Return a ModelBuilder that turns the foundation into a task model for ``run.task``.

    Called once per run, after the data stage. A fusion plugin combines the text encoder with other
    modalities (image, tabular); with none selected the core builds a text-only model
    (a transformers ``AutoModelFor{Token,Sequence}Classification`` head on the backbone).
    """


@hookspec(firstresult=True)
def fmkit_adapt(run: Run, model: nn.Module) -> nn.Module:
    """Prepare a freshly built task model for training and return it.

    Called once per ensemble member, on a new model from the ModelBuilder. Decides which
    parameters train (everything for ``full``; an adapter for PEFT methods; the head for a probe)
    and may wrap the model (e.g. in a ``peft.PeftModel``). The returned module is trained by the
    core loop and saved with its own ``save_pretrained``.
    """


@hookspec(firstresult=True)
def fmkit_adapt_load(run: Run, builder: ModelBuilder, directory: Path) -> nn.Module:
    """Rebuild a member that this adapt plugin prepared and the core saved to ``directory``.

    Called by ``fmkit eval`` / ``fmkit predict``, once per saved member. ``full`` loads the whole
    model from the directory; an adapter method builds the base model and loads the adapter on it.
    """


@hookspec(firstresult=True)
def fmkit_adapt_share(run: Run, model: nn.Module) -> SharedBackbone | None:
    """Offer a SharedBackbone on which ensemble members become parts of ``model``, or None.

    Called by the core when a combine plugin asks for member models (``fit.new_model``) and when a
    saved ensemble is reloaded, with the first model this adapt plugin prepared (or reloaded). An
    adapter method returns one so that k members hold one frozen backbone between them; plugins whose
    members are whole models (``full``) leave it: each member is then a model of its own.
    """


@hookspec(firstresult=True)
def fmkit_adapt_merge(run: Run, model: nn.Module) -> nn.Module:
    """Return ``model`` as one plain task model of the builder's kind, its adaptation folded into its
    weights, without changing ``model``.

    For whatever needs weights rather than a prediction: a soup averages them, an export saves them.
    The core's fallback returns ``model`` itself (a full fine-tune already is one); an adapter merges
    its update into a copy of the backbone. A method whose training merges into no weight (prompt or
    prefix tuning) raises FmkitError, and its plugin does not list ``merge`` in ``provides``.
    """


@hookspec(firstresult=True)
def fmkit_adapt_base(run: Run, model: nn.Module) -> nn.Module | None:
    """Return the plain task model under ``model``'s adaptation (the frozen backbone and a head, the
    adapter taken out), without changing ``model``; or None when ``model`` saves whole.

    The core saves it beside what ``model.save_pretrained`` writes (in ``model/``, or ``model/base/`` once
    for all the members of an ensemble), so the standard transformers call loads an adapter run with its
    label maps and without the foundation, and ``fmkit_adapt_load`` later receives a builder whose
    ``build()`` returns it. An adapter returns its backbone unloaded (PEFT ``unload``); a full fine-tune
    leaves it (no plugin answers: None); a method transformers cannot load beside its base (prompt or
    prefix tuning) returns None too, and its runs reload on the foundation.
    """


@hookspec
def fmkit_harden(run: Run) -> Hardener:
    """Return a Hardener that makes training adversarial and attacks models for robust evaluation.

    Called once per run. Several harden plugins may be selected; their Hardeners act in the order of
    the plugins' names, each on every training batch with ``backward`` scaling its loss by 1/n, so the
    step trains on their mean (the gradients add, whatever the order; what differs with the order is
    only which random numbers each draws, hence the fixed one). Robust evaluation scores the model
    under each attack separately. With none, training is clean.
    """


@hookspec(firstresult=True)
def fmkit_combine(run: Run, fit: FitCallback) -> Ensemble:
    """Train ensemble members through ``fit`` and return the Ensemble that combines them.

    Called once per run. ``fit(spec)`` builds a model, adapts it, trains it (with the harden
    stage) on the rows/weights/seed that ``spec`` names and returns the trained Member with its
    dev metrics. With no combine plugin the run has one member trained on all the data.
    ``fit.new_model(name, seed, copy_of)`` returns the model a member trains (passed back as
    ``spec.model``): on one shared backbone when the adapt stage offers it (``fmkit_adapt_share``),
    else a model of its own; ``copy_of`` starts it from another model's weights (a common start, a
    trained trunk). ``fit.probabilities(predict, split, rows)`` gives per-example probabilities of
    any predictor on a split (out-of-fold predictions, boosting errors, soups); the training split is
    scored in ``train.batch_size`` batches, so scoring it between members costs no more memory than
    training them. ``fit.map(specs)`` trains members that do not depend on each other, as Ray tasks
    under ``--executor ray`` (one after another otherwise); members given a ``spec.model`` train here.
    """


@hookspec(firstresult=True)
def fmkit_combine_load(run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Ensemble:
    """Rebuild the Ensemble from its reloaded members and the state its ``Ensemble.state()`` saved.

    Called by ``fmkit eval`` / ``fmkit predict`` for runs that had a combine plugin. ``directory`` is
    the run's ``model/`` folder, where the optional ``Ensemble.save`` wrote its files. Members that
    share a backbone in training share one again here.
    """


@hookspec
def fmkit_plan(run: Run) -> list[str]:
    """Say what this plugin will do in this run, as a few lines for ``fmkit run --dry-run``.

    Called instead of the stages, before any weights load (``run.foundation`` is None; ``run.data`` is
    the data as read, before the data stage). A combine plugin lists its members: what each trains on,
    which epochs, from where; other plugins the cost or choice a user should know of (ascent steps per
    batch, the adapter's size). Optional: the core plans the stages and the training schedule itself.
    """


@hookspec
def fmkit_event(run: Run, event: Event) -> None:
    """React to ``event``: a member's training began or ended, an optimizer step or an epoch (scored on dev)
    ended, or the run was evaluated (``fmkit.types.Event`` lists what each carries).

    Called by the training loop and the pipeline on every listener: any selected plugin that implements it,
    the trackers of ``train.report_to``, and the objects passed as ``fmkit.run(..., callbacks=[...])``. Keep it
    cheap: ``step`` comes after every optimizer step. Raising ``StopTraining`` at ``step`` or ``epoch_end``
    ends that member's training as patience does (the epoch is scored on dev, the best epoch's weights are
    kept); under ``accelerate launch`` one process asking is enough. Members trained as Ray tasks
    (``--executor ray``) emit in their worker, where only the selected plugins listen.
    """
