"""Sharded checkpoints with torch.distributed.checkpoint (DCP), committed atomically.

Layout under ``<checkpoint dir>`` (a local or shared path, or an fsspec URL):

    step-00000040/           a committed checkpoint: DCP shards + .metadata + meta.json
    .partial-step-00000060/  being written (or left by a crash or a failed save): never
                             loaded, removed
    .replaced-step-00000040/ a committed step-00000040 while that step is saved again: it
                             stays whole until the new one is committed (put back if not)

Every rank writes its shards of the model (sharded tables, dense layers) and of the optimizer
state (fused TBE state included) into the partial directory, hashing each file as it writes
it. Then rank 0 renames the directory to ``step-N`` and writes ``meta.json`` into it (step,
epoch, reader position, bad-input counts, config, plan, and the size and xxh3-128 digest of
every file): a checkpoint counts as committed only once its ``meta.json`` exists, so a crash
or a failed write at any point leaves the previous checkpoint as the latest (on object
stores, where a rename is a copy, too).

The modules, lowest first:

- :mod:`.errors`: :class:`~.errors.CheckpointError`; DCP's errors made one line.
- :mod:`.file_access`: a checkpoint's files opened (regular files only) and named.
- :mod:`.digests`: a file's size and xxh3-128 digests, whole and by chunk, and their check.
- :mod:`.safe_decode`: ``.metadata`` and non-tensor items decoded without running code.
- :mod:`.reader`: DCP's reader, each item's chunks verified before it is decoded.
- :mod:`.writer`: DCP's writer, each file hashed as it is written.
- :mod:`.sharded_moments`: a sharded table's torch optimizer state placed as its weight.
- :mod:`.folders`: which entries of a checkpoint folder are committed, half-written or a
  user's.
- :mod:`.rng`: each rank's random generator, encoded, checked and restored.
- :mod:`.state`: what a checkpoint holds of a trainer; the ranks' agreement on an outcome.
- :mod:`.meta`: ``meta.json``, read checked field by field; :class:`~.meta.TrainPosition`.
- :mod:`.save`: :class:`~.save.CheckpointSaver`, which writes in the background and commits.
- :mod:`.load`: a checkpoint into a trainer, resharded to its plan; or verified alone.
- :mod:`.lock`: one run at a time in a run's folders.
"""
