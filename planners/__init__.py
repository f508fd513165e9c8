"""The sharding planner: topology, workload, cost model, search, TorchRec plan, report.

Importable without Ray; `dist-train plan` runs it as a dry run for any cluster shape.
See docs/planner.md.
"""
