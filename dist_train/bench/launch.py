"""``dist-train bench launch``: what Ray adds, measured against plain processes in one run.

Runs the same job twice on the same data, first with ``launcher=processes``
(torch.multiprocessing + gloo), then with ``launcher=ray`` (embedded Ray, Ray Train workers),
and prints start-up (workers requested -> first finished step) and steady-state examples/s
(after the first step), with Ray/processes ratios.
"""

from __future__ import annotations

from typing import Any

from dist_train.bench import over, variant, write_json
from dist_train.config.schema import JobConfig
from dist_train.driver import prepare_inputs, run_job


def run_launch_bench(cfg: JobConfig, json_out: str | None = None) -> dict[str, Any]:
    """Run both launchers; print and return the figures and ratios."""
    prepare_inputs(cfg)  # generate once; both runs read these files
    rows: dict[str, dict[str, Any]] = {}
    for launcher in ("processes", "ray"):
        job = variant(
            cfg, [f"launcher={launcher}", f"name={cfg.name}-{launcher}"], f"bench {launcher}"
        )
        print(f"[bench] launcher={launcher}", flush=True)
        summary = run_job(job)
        rows[launcher] = {
            "startup_seconds": summary["startup_seconds"],
            "steady_examples_per_second": summary["steady_examples_per_second"],
            "wall_seconds": summary["wall_seconds"],
        }
    p, r = rows["processes"], rows["ray"]
    result = {
        **{f"{k}_{name}": v for name, row in rows.items() for k, v in row.items()},
        "startup_ratio_ray_over_processes": over(
            r["startup_seconds"], p["startup_seconds"], "start-up ratio"
        ),
        "steady_throughput_ratio_ray_over_processes": over(
            r["steady_examples_per_second"], p["steady_examples_per_second"], "steady ratio"
        ),
    }
    print(
        "\nlauncher    start-up to first step   steady examples/s   wall\n"
        f"processes   {p['startup_seconds']:>10.1f} s            "
        f"{p['steady_examples_per_second']:>12,.0f}   {p['wall_seconds']:.1f} s\n"
        f"ray         {r['startup_seconds']:>10.1f} s            "
        f"{r['steady_examples_per_second']:>12,.0f}   {r['wall_seconds']:.1f} s\n"
        f"ray/processes: start-up x{result['startup_ratio_ray_over_processes']:.2f}, "
        f"steady throughput x{result['steady_throughput_ratio_ray_over_processes']:.3f}",
        flush=True,
    )
    if json_out:
        write_json(json_out, result)
    return result
