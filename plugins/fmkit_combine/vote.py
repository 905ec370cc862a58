"""The weighted vote that combines members' probabilities (bagging, boosting, voting; stacking on top),
and its cascade: the first member alone where it is sure, the whole vote elsewhere."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import BaseModel, Field, model_validator

from fmkit.plugin import Member, member_probabilities



CASCADE_OPTION = Field(
    None, gt=0, le=1, description="predict with the first member alone on the examples where its most likely class "
    "has at least this probability (at every word, for ner), and with the whole vote on the rest: faster "
    "prediction for a small change in it (docs/composition.md); none: every member on every example")


class VoteOptions(BaseModel):
    """The options of a plugin whose members vote."""

    vote: Literal["soft", "hard"] = Field("soft", description="soft: average the members' probabilities; hard: each "
                                                              "member votes for its most likely class (per token "
                                                              "for ner)")
    cascade: float | None = CASCADE_OPTION

    @model_validator(mode="after")
    def _cascade_needs_a_soft_vote(self) -> VoteOptions:
        if self.cascade is not None and self.vote == "hard":
            raise ValueError("cascade needs vote=soft: a member's confidence is its probability, which a hard "
                             "vote does not use")
        return self


class Vote:
    """A weighted vote of the members' probabilities: soft (average the probabilities) or hard (each
    member votes for its most likely class, per token for NER; the vote shares are the probabilities).

    With ``cascade`` (a probability), the first member predicts alone the rows where it is that sure of
    every prediction that counts (each word's, for NER; a batch without ``word_mask`` checks every real
    token), and the other members run only on the remaining rows: members that continue one trunk agree
    where it is sure, so most rows need one forward pass instead of one per member (the cascades of
    Wang et al. 2022, "Wisdom of Committees")."""

    def __init__(self, members: list[Member], weights: Sequence[float] | None = None,
                 vote: Literal["soft", "hard"] = "soft", extra: dict[str, Any] | None = None,
                 cascade: float | None = None):
        self.members = members
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        self.weights = [w / sum(weights) for w in weights]
        self.vote = vote
        self.cascade = cascade
        self.extra = extra or {}
        self.cascaded = [0, 0]  # rows the first member settled alone, rows seen: the cascade's share

    def member_probabilities(self, batch: dict) -> Any:
        return member_probabilities([m.model for m in self.members], batch)

    def combined(self, probs: Any) -> Any:
        """(members, batch, ...) -> (batch, ...): the weighted vote."""
        import torch

        if self.vote == "hard":
            probs = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float()
        weights = torch.tensor(self.weights, device=probs.device).view(-1, *[1] * (probs.dim() - 1))
        return (probs * weights).sum(0)

    def predict_proba(self, batch: dict) -> Any:
        import torch

        if self.cascade is None:
            return self.combined(self.member_probabilities(batch))
        first = member_probabilities([self.members[0].model], batch)[0]
        unsure = ~sure_rows(first, batch, self.cascade)
        self.cascaded[0] += int((~unsure).sum())
        self.cascaded[1] += len(unsure)
        if not unsure.any():
            return first
        rows = unsure.nonzero().squeeze(1)
        subset, width = rows_of(batch, rows)
        head = first[rows][:, :width] if first.dim() == 3 else first[rows]
        out = first.clone()
        out[(rows, slice(0, width)) if first.dim() == 3 else rows] = self.combined(
            torch.cat([head[None], member_probabilities([m.model for m in self.members[1:]], subset)]))
        return out

    def attackable(self) -> Any:
        """The soft vote as one model for robust evaluation (None for a hard vote: its argmax has no
        gradient, so its members are attacked one by one). An attack sees the whole vote: the cascade
        only skips members at prediction."""
        from fmkit_combine.soft_vote_model import SoftVoteModel

        return SoftVoteModel([m.model for m in self.members], self.weights) if self.vote == "soft" else None

    def state(self) -> dict[str, Any]:
        return {"weights": self.weights, "vote": self.vote, **({"cascade": self.cascade} if self.cascade else {}),
                **self.extra}

    def combine_code(self) -> str:
        """The vote of ``predict_proba`` for the model card, on the members' probabilities outside fmkit (the
        cascade there checks every sub-token, not only each word's first: a little stricter than fmkit)."""
        return ('if state["vote"] == "hard":\n'
                '    probs = [torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).float() for p in probs]\n'
                'combined = sum(weight * p for weight, p in zip(state["weights"], probs))\n'
                'sure = probs[0] if probs[0].dim() == 1 else probs[0][1:-1]  # ner: [CLS] and [SEP] left out\n'
                'if state.get("cascade") and sure.max(-1).values.min() >= state["cascade"]:\n'
                '    combined = probs[0]  # the first member is sure enough alone')


def sure_rows(probs: Any, batch: dict, threshold: float) -> Any:
    """(batch,) bool: rows whose most likely class has probability >= ``threshold`` at every position
    that counts (``word_mask``, else the attention mask, for NER; the row's one prediction otherwise)."""
    top = probs.max(-1).values
    if top.dim() == 1:
        return top >= threshold
    counts = batch.get("word_mask", batch["attention_mask"]).bool()
    return ((top >= threshold) | ~counts).all(-1)


def rows_of(batch: dict, rows: Any) -> tuple[dict, int]:
    """The batch's ``rows``, their token tensors cut to the longest of them; and that width."""
    width = int(batch["attention_mask"][rows].sum(-1).max())
    subset = {}
    for key, value in batch.items():
        value = value[rows]
        subset[key] = value[:, :width] if key in TOKEN_KEYS and value.dim() == 2 else value
    return subset, width


TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "word_mask", "labels")  # one value per token
