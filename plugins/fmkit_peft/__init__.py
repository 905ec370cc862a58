"""Built-in adapt plugins that reuse a frozen foundation: ``adapter`` (PEFT methods) and ``probe``
(frozen features + a linear or scikit-learn head). Each module imports torch/peft/sklearn only
inside functions, so listing plugins stays fast."""
