"""The pretrain family: where the foundation comes from (``hf``) and how it is pretrained further on the
task's domain before the task stages (``mlm``). One module per technique; nothing heavy is imported
until a hook runs."""
