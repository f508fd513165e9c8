"""``dist-train``: the command line.

dist-train train [--config C] [--set KEY=VALUE ...]   train + evaluate (default config)
dist-train gen-data [--config C] --out DIR [--set ...] write the synthetic dataset
dist-train show-config [--config C] [--set ...]       print the validated config
dist-train show-config --reference                   every config key (docs/config.md)
dist-train plan [--config C] [--nodes N --ranks-per-node G ...] [--json OUT]
                                                      dry-run the sharding planner
dist-train calibrate --out topology.json              measure this machine for the planner
dist-train export CHECKPOINT --out DIR                unsharded safetensors of a checkpoint
(and convert, submit, validate, bench: see --help)

The modules, lowest first: :mod:`.stdout` (whether its reader left), :mod:`.values` (the
flags' values, checked as they are read), :mod:`.parser` (every command and flag),
:mod:`.commands` (what each command does) and :mod:`.main` (the entry point, also
``python -m dist_train.cli``).
"""
