"""The five stages of a run, declared as pluggy hooks.

A run calls them in this order: ``fmkit_pretrain`` -> ``fmkit_fuse`` -> ``fmkit_harden`` ->
``fmkit_combine``, whose ``fit`` callback calls ``fmkit_adapt`` and the training loop once per member.
Only the plugins selected for the run (and the defaults of the stages left empty) are registered,
so a hook body never has to check whether it was asked for. The two ``*_load`` hooks rebuild what
``adapt`` and ``combine`` produced from a saved run directory, for ``fmkit eval`` and ``fmkit predict``.

The objects the hooks exchange (``Run``, ``Foundation``, ``ModelBuilder``, ``Hardener``,
``MemberSpec``, ``Member``, ``Ensemble``) are defined in ``fmkit.types``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pluggy

if TYPE_CHECKING:
    from torch import nn

    from fmkit.types import Ensemble, Foundation, Hardener, Member, MemberSpec, ModelBuilder, Run

hookspec = pluggy.HookspecMarker("fmkit")


@hookspec(firstresult=True)
def fmkit_pretrain(run: Run) -> Foundation:
    """Provide the foundation: where the backbone's weights are, and its tokenizer.

    Called once per run, before anything else loads weights. One loader answers (the built-in
    ``hf`` when no other pretrain plugin is selected). A continuation such as masked-LM pretraining
    implements this hook with ``@fmkit.hookimpl(wrapper=True)``: it receives the loaded foundation
    from ``yield`` and returns it further pretrained (weights saved under ``run.directory``).
    """


@hookspec(firstresult=True)
def fmkit_fuse(run: Run, foundation: Foundation) -> ModelBuilder:
    """Return a ModelBuilder that turns the foundation into a task model for ``run.task``.

    Called once per run, after pretrain. A fusion plugin combines the text encoder with other
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


@hookspec
def fmkit_harden(run: Run) -> Hardener:
    """Return a Hardener that makes training adversarial and attacks models for robust evaluation.

    Called once per run. Several harden plugins may be selected; their Hardeners act in selection
    order, each on every training batch (their gradients add up). With none, training is clean.
    """


@hookspec(firstresult=True)
def fmkit_combine(run: Run, fit: Callable[[MemberSpec], Member]) -> Ensemble:
    """Train ensemble members through ``fit`` and return the Ensemble that combines them.

    Called once per run. ``fit(spec)`` builds a model, adapts it, trains it (with the harden
    stage) on the rows/weights/seed that ``spec`` names and returns the trained Member with its
    dev metrics. With no combine plugin the run has one member trained on all the data.
    ``fit.model(seed)`` returns a fresh adapted model (to share or copy before training, passed back
    as ``spec.model``) and ``fit.probabilities(predict, split, rows)`` gives per-example
    probabilities of any predictor on a split (out-of-fold predictions, boosting errors, soups); the
    training split is scored in ``train.batch_size`` batches, so scoring it between members costs no
    more memory than training them.
    ``fit.map(specs)`` trains members that do not depend on each other, as Ray tasks under
    ``--executor ray`` (one after another otherwise); members given a ``spec.model`` train here.
    """


@hookspec(firstresult=True)
def fmkit_combine_load(run: Run, members: list[Member], state: dict[str, Any], directory: Path) -> Ensemble:
    """Rebuild the Ensemble from its reloaded members and the state its ``Ensemble.state()`` saved.

    Called by ``fmkit eval`` / ``fmkit predict`` for runs that had a combine plugin. ``directory`` is
    the run's ``model/`` folder, where the optional ``Ensemble.save`` wrote its files.
    """
