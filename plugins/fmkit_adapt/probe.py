"""``probe``: the frozen foundation as a feature extractor, the cheapest baseline of a task. Backbone
outputs are cached per input (``CachedBackbone``); the head trains in the core loop on them, or is a
scikit-learn logistic regression written into the head's last linear layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fmkit.plugin import (IGNORE, FmkitError, ModelBuilder, Run, count_parameters, encode, hookimpl, model_inputs,
                          output_layer, prediction_batches, quiet_transformers)
from fmkit_adapt.parts import backbone, head_modules

SKLEARN_OPTIONS = ("C", "max_iter")


class Probe:
    """Frozen foundation, trained head: a linear probe on cached backbone features, or scikit-learn's LogisticRegression.

    The backbone runs once per distinct input; every later epoch trains only the head on the
    stored features. The saved model is an ordinary transformers checkpoint.
    """

    name, stage = "probe", "adapt"
    provides = frozenset({"merge"})  # the trained head is part of an ordinary task model
    # A lone linear head on fixed features takes large steps, and its epochs are cheap (cached
    # features): tuned on WNUT-16 dev (docs/adapt.md).
    train_defaults = {"lr": 5e-2, "epochs": 30}

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        head: Literal["linear", "sklearn"] = Field(
            "linear", description="linear: the task model's head trains on cached features in the core loop; "
                                  "sklearn: LogisticRegression fitted on them and written into the head's output "
                                  "layer (no training loop; always on all training rows)")
        C: float = Field(1.0, gt=0, description="sklearn: inverse regularisation strength of LogisticRegression")
        max_iter: int = Field(1000, ge=1, description="sklearn: solver iterations")

    def __init__(self, options: Options):
        self.options = options

    def check(self, config: Any) -> None:
        unused = [f"probe.{o}" for o in SKLEARN_OPTIONS if o in self.options.model_fields_set]
        if unused and self.options.head != "sklearn":
            raise FmkitError(f"{', '.join(unused)} applies to probe.head=sklearn only")

    @hookimpl
    def fmkit_adapt(self, run: Run, model: Any) -> Any:
        _, encoder = backbone(model)
        head = head_modules(model)
        model.requires_grad_(False)
        for name in head:
            getattr(model, name).requires_grad_(True)
        encoder.forward = CachedBackbone(encoder)
        if self.options.head == "sklearn":
            fit = fit_logistic_head(run, model, last_linear(model, head), self.options.C, self.options.max_iter)
            model.requires_grad_(False)  # nothing left for the training loop
            run.say(f"probe: LogisticRegression on {int(fit['examples']):,} training "
                    f"{'tokens' if run.task.kind == 'ner' else 'examples'}, training accuracy {fit['train_accuracy']:.4f}")
            run.log("probe", **fit)
        trainable, total = count_parameters(model)
        run.say(f"probe: frozen backbone; the head ({', '.join(head)}) trains {trainable:,} of {total:,} parameters")
        return model

    @hookimpl
    def fmkit_adapt_load(self, run: Run, builder: ModelBuilder, directory: Path) -> Any:
        return builder.load(directory)


class CachedBackbone:
    """Stands in for a frozen backbone's ``forward``: each distinct input (its unpadded token ids)
    runs through the backbone once, in eval mode; later calls replay the stored outputs.

    The task model's own head code runs unchanged on them, so the core loop, saving and
    ``from_pretrained`` stay ordinary. Calls with anything else (``inputs_embeds`` from an
    adversarial hardener, hidden states asked for) go straight to the backbone.
    """

    def __init__(self, module: Any):
        self.module = module
        self.forward = module.forward
        self.store: dict[bytes, dict[str, Any]] = {}
        self.output_type: Any = None
        self.per_token: set[str] = set()

    def __call__(self, input_ids: Any = None, attention_mask: Any = None, token_type_ids: Any = None,
                 return_dict: Any = None, **kwargs: Any) -> Any:
        if input_ids is None or attention_mask is None or any(v is not None for v in kwargs.values()):
            return self.forward(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                return_dict=return_dict, **kwargs)
        mask = attention_mask.bool()
        keys = [input_ids[i][mask[i]].cpu().numpy().tobytes()
                + (b"" if token_type_ids is None else b"|" + token_type_ids[i][mask[i]].cpu().numpy().tobytes())
                for i in range(len(input_ids))]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self.store}.values())
        if missing:
            self._compute(missing, keys, input_ids, attention_mask, token_type_ids)
        return self._assemble(keys, mask)

    def _compute(self, rows: list[int], keys: list[bytes], input_ids: Any, attention_mask: Any,
                 token_type_ids: Any) -> None:
        import torch

        training = self.module.training
        self.module.eval()
        try:  # stored tensors must be ordinary ones, usable in training even if first seen during evaluation
            with torch.inference_mode(False), torch.no_grad():
                out = self.forward(input_ids[rows], attention_mask=attention_mask[rows], return_dict=True,
                                   token_type_ids=None if token_type_ids is None else token_type_ids[rows])
        finally:
            self.module.train(training)
        self.output_type = type(out)
        width = attention_mask.shape[1]
        self.per_token = {name for name, value in out.items() if torch.is_tensor(value) and value.dim() >= 3 and value.shape[1] == width}
        for j, row in enumerate(rows):
            token_mask = attention_mask[row].bool()
            self.store[keys[row]] = {name: value[j][token_mask] if name in self.per_token else value[j]
                                     for name, value in out.items() if torch.is_tensor(value)}

    def _assemble(self, keys: list[bytes], mask: Any) -> Any:
        import torch

        fields = {}
        for name in self.store[keys[0]]:
            rows = [self.store[k][name] for k in keys]
            if name in self.per_token:
                value = rows[0].new_zeros((*mask.shape, *rows[0].shape[1:]))
                for i, row in enumerate(rows):
                    value[i][mask[i]] = row
            else:
                value = torch.stack(rows)
            fields[name] = value
        return self.output_type(**fields)


def last_linear(model: Any, head: list[str]) -> Any:
    """The head's final linear layer: the one producing the class scores."""
    layers = [layer for name in head if (layer := output_layer(getattr(model, name), model.config.num_labels))]
    if not layers:
        raise FmkitError(f"probe.head=sklearn: {type(model).__name__} has no linear output layer to fit")
    return layers[-1]


def fit_logistic_head(run: Run, model: Any, layer: Any, C: float, max_iter: int) -> dict[str, float]:
    """Fit scikit-learn's LogisticRegression on what ``layer`` receives for the training examples
    (labelled tokens for NER) and write it into ``layer``. Features are standardised for the solver;
    the scaling is folded into the weights, so the saved model needs no scikit-learn."""
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x, y = layer_inputs(run, model, layer)
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(x), y)
    coef, intercept = classifier.coef_, classifier.intercept_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row; softmax over (-z/2, z/2) is the same sigmoid
        coef, intercept = np.vstack([-coef, coef]) / 2, np.array([-intercept[0], intercept[0]]) / 2
    weight = np.zeros((layer.out_features, layer.in_features))
    bias = np.full(layer.out_features, -1e4)  # a class absent from training is never predicted
    weight[classifier.classes_] = coef / scaler.scale_
    bias[classifier.classes_] = intercept - (coef / scaler.scale_) @ scaler.mean_
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight, dtype=layer.weight.dtype))
        layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
    return {"examples": float(len(y)), "train_accuracy": float(classifier.score(scaler.transform(x), y))}


def layer_inputs(run: Run, model: Any, layer: Any) -> tuple[Any, Any]:
    """(inputs of ``layer`` at the labelled positions, their labels) over the training split."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    except (OSError, ValueError) as exc:
        raise FmkitError(f"probe.head=sklearn: cannot load the tokenizer of {model.name_or_path!r} ({exc})") from None
    features = encode(run.task, run.data.train, tokenizer, run.config.train.max_length)
    captured: list[Any] = []
    handle = layer.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    device = next(model.parameters()).device
    xs, ys = [], []
    model.eval()
    try:
        with torch.no_grad():
            for _, batch in prediction_batches(features, run.config.train.eval_batch_size, tokenizer.pad_token_id or 0):
                model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
                keep = batch["labels"] != IGNORE
                xs.append(captured.pop()[keep.to(device)].float().cpu().numpy())
                ys.append(batch["labels"][keep].numpy())
    finally:
        handle.remove()
    return np.concatenate(xs), np.concatenate(ys)
