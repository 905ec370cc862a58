"""The fuse family, for ``--task multimodal``: one module per fusion method (``concat``, ``gated``,
``attention``), each holding its plugin, its fusion head and what the head's contributions measure.
What every method shares: ``fusion`` (the plugin base and the ModelBuilder), ``model`` (the fused
model), ``report`` (per-modality metrics); ``synthetic`` writes a data set that needs both modalities.
Nothing heavy is imported until a hook runs."""
