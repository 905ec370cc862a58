"""The weighted vote that combines members' probabilities (bagging, boosting, voting; stacking on top)."""

from __future__ import annotations

from typing import Any, Literal, Sequence

from pydantic import Field

from fmkit.plugin import Member, member_probabilities

VOTE_OPTION = Field("soft", description="soft: average the members' probabilities; hard: each member votes for its "
                                        "most likely class (per token for ner)")


class Vote:
    """A weighted vote of the members' probabilities: soft (average the probabilities) or hard (each
    member votes for its most likely class, per token for NER; the vote shares are the probabilities)."""

    def __init__(self, members: list[Member], weights: Sequence[float] | None = None,
                 vote: Literal["soft", "hard"] = "soft", extra: dict[str, Any] | None = None):
        self.members = members
        weights = [1.0] * len(members) if weights is None else [float(w) for w in weights]
        self.weights = [w / sum(weights) for w in weights]
        self.vote = vote
        self.extra = extra or {}

    def member_probabilities(self, batch: dict) -> Any:
        return member_probabilities([m.model for m in self.members], batch)

    def predict_proba(self, batch: dict) -> Any:
        import torch

        probs = self.member_probabilities(batch)
        if self.vote == "hard":
            probs = torch.nn.functional.one_hot(probs.argmax(-1), probs.shape[-1]).float()
        weights = torch.tensor(self.weights, device=probs.device).view(-1, *[1] * (probs.dim() - 1))
        return (probs * weights).sum(0)

    def attackable(self) -> Any:
        """The soft vote as one model for robust evaluation (None for a hard vote: its argmax has no
        gradient, so its members are attacked one by one)."""
        from fmkit_combine.soft_vote_model import SoftVoteModel

        return SoftVoteModel([m.model for m in self.members], self.weights) if self.vote == "soft" else None

    def state(self) -> dict[str, Any]:
        return {"weights": self.weights, "vote": self.vote, **self.extra}

    def combine_code(self) -> str:
        """The vote of ``predict_proba`` for the model card, on the members' probabilities outside fmkit."""
        return ('if state["vote"] == "hard":\n'
                '    probs = [torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).float() for p in probs]\n'
                'combined = sum(weight * p for weight, p in zip(state["weights"], probs))')
