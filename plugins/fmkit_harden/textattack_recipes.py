"""``textattack``: TextAttack's recipes that run offline (DeepWordBug, Pruthi), against a saved classify
run: ``fmkit eval RUN --data F --attack textattack:NAME``. TextAttack is the optional extra
``fmkit[textattack]``; it is imported only when the attack runs."""

from __future__ import annotations

import difflib
import time
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Callable, NoReturn, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fmkit.plugin import Batch, Example, FmkitError, Run, first_line, hookimpl

if TYPE_CHECKING:
    import torch
    from torch import nn

INSTALL = "pip install 'fmkit[textattack]'"
OFFLINE = {"deepwordbug": "DeepWordBugGao2018", "pruthi": "Pruthi2019"}
"""Recipe name -> TextAttack class: character edits, with nothing to download."""
DOWNLOADS = {
    "textfooler": "counter-fitted word embeddings (paragramcf) and the Universal Sentence Encoder (TensorFlow Hub)",
    "bert-attack": "the bert-base-uncased masked language model and the Universal Sentence Encoder",
    "bae": "the bert-base-uncased masked language model and the Universal Sentence Encoder",
    "pwws": "WordNet (nltk data)",
    "textbugger": "GloVe word embeddings and the Universal Sentence Encoder",
    "hotflip": "counter-fitted word embeddings (paragramcf) and flair's part-of-speech tagger",
    "alzantot": "counter-fitted word embeddings and the Google one-billion-words language model",
    "pso": "the HowNet sememe base (OpenHowNet)",
    "clare": "the distilroberta-base masked language model and the Universal Sentence Encoder",
}
"""Recipes that download what they need on first use: refused by name, with the resource they miss."""


class TextAttackOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipe: str = Field("deepwordbug", description=f"the TextAttack recipe: {', '.join(OFFLINE)} (offline); "
                        "`--attack textattack:NAME` sets it")
    queries: int = Field(200, ge=1, description="model queries the recipe may spend on one example")

    @field_validator("recipe")
    @classmethod
    def offline_recipe(cls, value: str) -> str:
        name = value.lower()
        if name in OFFLINE:
            return name
        offline = f"offline recipes: {', '.join(OFFLINE)}"
        if name in DOWNLOADS:
            raise ValueError(f"recipe {name!r} needs {DOWNLOADS[name]}, downloaded on first use, which fmkit does "
                             f"not do; {offline}")
        hint = difflib.get_close_matches(name, [*OFFLINE, *DOWNLOADS], n=1)
        raise ValueError(f"unknown recipe {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f"; {offline}")


class TextAttackRecipes:
    """TextAttack's offline recipes (DeepWordBug, Pruthi) against a classify run, for evaluation only.

    Gao et al. 2018 (DeepWordBug: character swaps, substitutions, deletions and insertions in the most
    important words) and Pruthi et al. 2019 (one typo-like edit). Needs `pip install 'fmkit[textattack]'`;
    used as `fmkit eval RUN --data F --attack textattack:deepwordbug`."""

    name = "textattack"
    stage = "harden"
    Options = TextAttackOptions
    attack_argument = "recipe"  # `--attack textattack:NAME` sets this option

    def __init__(self, options: TextAttackOptions):
        self.options = options

    def check(self, config: Any) -> NoReturn:
        raise FmkitError(f"{self.name}: attacks saved classify runs (`fmkit eval RUN --data FILE --attack "
                         "textattack:deepwordbug`) and does not train; train against word swaps with wordswap")

    @hookimpl
    def fmkit_harden(self, run: Run) -> RecipeHardener:
        if run.task.kind != "classify":
            raise FmkitError(f"--attack textattack:{self.options.recipe}: TextAttack's recipes attack classify runs, "
                             f"this run is {run.task.kind}; use --attack wordswap")
        if find_spec("textattack") is None:
            raise FmkitError(f"--attack textattack needs TextAttack, which is not installed: {INSTALL}")
        return RecipeHardener(self.name, self.options, run)


class RecipeHardener:
    """Runs the recipe on each example through a TextAttack model wrapper around the fmkit model."""

    attack = None  # evaluation rewrites examples: attack_examples

    def __init__(self, name: str, options: TextAttackOptions, run: Run):
        self.name, self.options, self.run = name, options, run

    def train_step(self, model: nn.Module, batch: Batch, backward: Callable[[torch.Tensor], None]) -> NoReturn:
        raise FmkitError(f"{self.name}: evaluates only; train against word swaps with wordswap")

    def attack_examples(self, model: nn.Module, examples: Sequence[Example]) -> tuple[list[Example], dict[str, float]]:
        """The examples as the recipe rewrote them; misclassified ones are skipped (left as they are)."""
        from dataclasses import replace

        recipe = self.recipe(model)
        label2id = self.run.task.label2id
        started, out, changed, queries = time.perf_counter(), [], [], []
        for example in examples:
            if example.text_pair is not None:
                raise FmkitError(f"{self.name}: text pairs are not supported; attack runs on single texts")
            if example.label not in label2id:  # a label the model never saw: it cannot be right
                out.append(example)
                continue
            try:
                result = recipe.attack(example.text, label2id[example.label])
            except (OSError, LookupError, ConnectionError) as exc:  # a resource it wanted to fetch
                raise FmkitError(f"textattack:{self.options.recipe}: needs a resource that is not on this machine "
                                 f"({first_line(exc)})") from None
            before, after = result.original_result.attacked_text, result.perturbed_result.attacked_text
            out.append(replace(example, text=after.text))
            changed.append(len(before.all_words_diff(after)) / max(len(before.words), 1))
            queries.append(result.perturbed_result.num_queries)
        count = max(len(examples), 1)
        return out, {"words_changed": round(sum(changed) / count, 4), "queries": round(sum(queries) / count, 2),
                     "seconds_per_example": round((time.perf_counter() - started) / count, 4)}

    def recipe(self, model: nn.Module) -> Any:
        """The TextAttack Attack of the chosen recipe on ``model``, with the query budget set."""
        import textattack

        built = getattr(textattack.attack_recipes, OFFLINE[self.options.recipe]).build(self.wrapper(model))
        built.goal_function.query_budget = self.options.queries
        return built

    def wrapper(self, model: nn.Module) -> Any:
        """``model`` as TextAttack calls a classifier: a list of texts in, class probabilities out, the texts
        encoded as fmkit encodes them (truncated to ``train.max_length``)."""
        import torch
        from textattack.models.wrappers import ModelWrapper

        tokenizer, max_length = self.run.foundation.tokenizer, self.run.config.train.max_length
        device = next(model.parameters()).device

        class Classifier(ModelWrapper):
            def __init__(self) -> None:
                self.model = model

            def __call__(self, texts: list[str]) -> Any:
                encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True,
                                    return_tensors="pt")
                inputs = {k: encoded[k].to(device) for k in ("input_ids", "attention_mask")}
                with torch.no_grad():
                    return torch.softmax(model(**inputs).logits.float(), dim=-1).cpu().numpy()

        return Classifier()
