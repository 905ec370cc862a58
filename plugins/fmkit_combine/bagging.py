"""``bagging`` (Breiman 1996): each member trains on its own bootstrap sample of the training rows."""

from __future__ import annotations

from pydantic import Field

from fmkit.plugin import MemberSpec, Run
from fmkit_combine.members import Combine, TrunkOptions
from fmkit_combine.vote import VoteOptions


class Bagging(Combine):
    """Bagging (Breiman 1996): each member continues the trunk on its own bootstrap sample; soft vote, per token for NER."""

    name = "bagging"

    class Options(TrunkOptions, VoteOptions):
        sample: float = Field(0.3, gt=0, le=1, description="size of each bootstrap sample (drawn with replacement) "
                                                           "as a share of the training set, which each member "
                                                           "trains on after the trunk: the members' cost scales "
                                                           "with it (docs/ensembles.md)")

    def specs(self, run: Run) -> list[MemberSpec]:
        """Seeded bootstrap samples, recorded as each member's indices (model/ensemble.json)."""
        import numpy as np

        n = len(run.data.train)
        size = max(1, round(self.options.sample * n))
        specs = super().specs(run)
        for i, spec in enumerate(specs):
            spec.indices = np.random.default_rng([run.seed, i]).integers(0, n, size).tolist()
        return specs

    def note(self, spec: MemberSpec) -> str:
        return f", bootstrap sample of {len(spec.indices):,} rows, {len(set(spec.indices)):,} distinct"
