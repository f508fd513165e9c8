"""Job configuration: pydantic models validated once, at the edge.

A job config is a YAML file (see ``launch/configs/``). :func:`~.load.load_config` reads it,
applies ``--set key.path=value`` overrides, and returns a validated
:class:`~.schema.JobConfig` or raises :class:`~.errors.ConfigError` naming the file, the
dotted key at fault, and why. Plain typed objects flow inward from there.

The modules, lowest first:

- :mod:`.errors`: :class:`~.errors.ConfigError`, which every step raises.
- :mod:`.schema`: the sections' models and :class:`~.schema.JobConfig`; what every other
  module of dist_train reads.
- :mod:`.keys`: the config's dotted keys, and the nearest to a misspelt one.
- :mod:`.yaml_file`: YAML files read safely (YAML 1.2 numbers, no key twice, bounded).
- :mod:`.messages`: pydantic's errors worded at the user's keys, the ``--set`` at fault named.
- :mod:`.overrides`: ``--set`` items applied to a config mapping.
- :mod:`.load`: a file or mapping read, overridden and validated.
- :mod:`.paths`: a config's paths made absolute before workers start elsewhere.
- :mod:`.args`: the command-line options every job command takes.
- :mod:`.reference`: docs/config.md, every key, generated from the schema.
"""
