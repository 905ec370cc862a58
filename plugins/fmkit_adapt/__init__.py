"""The adapt family: what of the task model trains. ``full`` (everything), ``adapter`` (a PEFT method on
the frozen foundation; a folder, as in PEFT, for the methods it offers) and ``probe`` (a head on frozen,
cached features). ``parts`` is their shared reading of a transformers task model. Nothing heavy is
imported until a hook runs."""
