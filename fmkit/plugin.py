"""The public API for plugin authors: everything a plugin may import from fmkit, in one module.

Built-in plugins and ``contrib/`` use nothing else, as a third-party package must (a test enforces
it); what is not exported here may change without notice. ``docs/plugin-authors.md`` documents each
name (generated from this module). Importing it stays cheap: torch, transformers and peft load only
inside the functions that need them, so ``fmkit plugins`` stays fast however many plugins it lists.

    from fmkit.plugin import FmkitError, Run, hookimpl, task_loss
"""

from fmkit import __version__, hookimpl
from fmkit.artifacts import LoadedRun, load as load_run
from fmkit.assess import Scorer
from fmkit.config import DEFAULT_MODEL, RunConfig, TrainConfig
from fmkit.data import load_task_data, read_examples, read_unlabeled
from fmkit.data.batching import prediction_batches
from fmkit.data.encode import IGNORE, Feature, encode
from fmkit.data.readers import Sentence, TextExample
from fmkit.errors import FmkitError, first_line
from fmkit.evaluate import (example_probs, gold_labels, labels_from_probs, member_probabilities, model_inputs,
                            scores, softmax_predictor)
from fmkit.hub import cached_id as hub_cached_id, snapshot as hub_snapshot
from fmkit.model import TextModelBuilder, count_parameters, mark_new, output_layer, quiet_transformers
from fmkit.registry import create as create_plugin
from fmkit.train import accelerator_for, forward_logits, task_loss
from fmkit.types import (Batch, Ensemble, Event, Example, FitCallback, Foundation, Hardener, Member, MemberSpec,
                         ModelBuilder, Run, SharedBackbone, StopTraining, Task, TaskData)

__all__ = [
    # marking hooks, and user errors
    "hookimpl", "FmkitError", "first_line", "__version__",
    # what the stages exchange (fmkit.hookspecs declares the stages)
    "Run", "Task", "TaskData", "Example", "Sentence", "TextExample", "Foundation", "ModelBuilder", "Hardener",
    "SharedBackbone", "FitCallback", "MemberSpec", "Member", "Ensemble", "Batch", "RunConfig", "TrainConfig",
    # what the training loop and the pipeline tell fmkit_event listeners, and how a listener stops training
    "Event", "StopTraining",
    # data: reading, encoding and batching as the core does
    "load_task_data", "read_examples", "read_unlabeled", "encode", "Feature", "IGNORE", "prediction_batches",
    # models and training
    "TextModelBuilder", "DEFAULT_MODEL", "count_parameters", "mark_new", "output_layer", "quiet_transformers",
    "accelerator_for", "forward_logits", "task_loss", "model_inputs",
    # prediction and metrics
    "softmax_predictor", "member_probabilities", "example_probs", "labels_from_probs", "gold_labels", "scores",
    "Scorer",
    # other runs and plugins
    "load_run", "LoadedRun", "create_plugin",
    # the Hugging Face Hub, through huggingface_hub
    "hub_snapshot", "hub_cached_id",
]
