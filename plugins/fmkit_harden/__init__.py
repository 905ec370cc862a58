"""The harden family: adversarial training and robust evaluation (``fgsm``, ``pgd``, ``freelb``, ``wordswap``, ``textattack``).

One module per technique: its plugin class (name, options, defaults) and its training schedule, the
losses of the passes of one step. ``attack`` holds what they share (options, resolved settings, the
plugin base class and the Hardener it returns); the engines attack text in embedding space
(``embeddings``) and images through torchattacks (``pixels``), and know no technique by name, so a
new technique is one new module that subclasses ``attack.HardenPlugin``. Robust evaluation uses PGD
from the clean input with more steps than training (``eval_steps``), whatever the technique. Nothing
heavy is imported at module level: torch loads when a hook runs.

Attacks that change words instead of embeddings stand beside them: ``wordswap`` (its engine in
``words``: gradient-guided whole-word substitution, for evaluation and training) and ``textattack``
(``textattack_recipes``: TextAttack's offline recipes, evaluation only, an optional extra). Their
Hardeners rewrite labelled examples (``attack_examples``) rather than perturb batches.
"""
