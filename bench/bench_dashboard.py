"""Server time of a dashboard run page for a long run (default 100,000 steps).

Builds a synthetic lake (``tests/lake_fixtures.py``: a symbio run with every
metric, MI included) unless ``--lake``/``--run-id`` point at a real one, then
times, in-process and without a browser:

- ``page``: the whole router callback through Flask's test client (what the
  browser waits for: lake read, downsampling, figures, JSON response);
- its parts: ``load`` (lake read + downsampling), ``render`` (layout + figure
  dicts), ``json`` (Dash's JSON encoding);
- ``poll``: one live update that finds 100 new rows (graphs and step texts);
  ``poll_full``: the same plus the header re-render done every 15 s.

    .venv/bin/python bench/bench_dashboard.py                 # 100k steps, 5 repeats
    .venv/bin/python bench/bench_dashboard.py --steps 20000 --repeat 3
    .venv/bin/python bench/bench_dashboard.py --lake ./lake --run-id my-run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from dash._utils import to_json  # noqa: E402

from dash_app import data  # noqa: E402
from dash_app.app import create_app  # noqa: E402
from dash_app.pages import run as run_page  # noqa: E402
from storage.lake import open_lake  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up: imports, Polars and Plotly caches
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def router_request(run_id: str) -> dict:
    """The request Dash's renderer sends when the URL changes to the run page."""
    return {
        "output": "page.children",
        "outputs": {"id": "page", "property": "children"},
        "inputs": [
            {"id": "url", "property": "pathname", "value": f"/runs/{run_id}"},
            {"id": "url", "property": "search", "value": ""},
        ],
        "changedPropIds": ["url.pathname"],
        "state": [],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=100_000, help="steps of the synthetic run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--lake", help="benchmark an existing lake instead")
    ap.add_argument("--run-id", help="run to open (with --lake)")
    ap.add_argument("--max-points", type=int, default=data.MAX_POINTS)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    if bool(args.lake) != bool(args.run_id):
        ap.error("--lake and --run-id go together")
    data.MAX_POINTS = args.max_points

    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        if args.lake:
            lake, run_id = open_lake(args.lake), args.run_id
        else:
            import lake_fixtures

            t0 = time.perf_counter()
            run_id = lake_fixtures.large_run(tmp, "bench-large", steps=args.steps)
            print(
                f"built a {args.steps:,}-step run in {time.perf_counter() - t0:.1f}s",
                file=sys.stderr,
            )
            lake = open_lake(tmp)
            # a newer version of the run row says "running", so polls take the live path
            row = data.reader.get_run(lake, run_id)
            fields = {k: v for k, v in row.items() if k not in ("run_id", "updated_at")}
            lake_fixtures.write_run(lake, run_id, **{**fields, "status": "running"})
        rows = data.reader.run_metrics(lake, run_id, ["step"]).height
        client = create_app(lake).server.test_client()
        body = router_request(run_id)

        def page() -> None:
            resp = client.post("/_dash-update-component", json=body)
            assert resp.status_code == 200, resp.status_code

        view = data.load_run_view(lake, run_id)
        layout = run_page.render(view, poll_ms=3000)
        last = view.last_step or 0
        # a poll that finds 100 new rows: light (graphs + step texts) and full (header too)
        light = {"run_id": run_id, "last_step": last - 100, "prev_alerts": 0, "refreshed_at": 1e18}
        full = {**light, "refreshed_at": 0}
        keys = [
            k for k in ("loss", "lr", "grad_norm", "tokens_per_sec", "ms_per_iter", "clip", "cusum")
        ]
        probe = run_page.live_update(lake, light, keys)
        assert len(probe["extend"][0][0]["x"][0]) == 100, "a poll should find 100 new rows"
        results = {
            "page": timed(page, args.repeat),
            "load": timed(lambda: data.load_run_view(lake, run_id), args.repeat),
            "render": timed(lambda: run_page.render(view, poll_ms=3000), args.repeat),
            "json": timed(lambda: to_json(layout), args.repeat),
            "poll": timed(lambda: run_page.live_update(lake, light, keys), args.repeat),
            "poll_full": timed(lambda: run_page.live_update(lake, full, keys), args.repeat),
        }
        size = len(client.post("/_dash-update-component", json=body).data)

    summary = {
        "rows": rows,
        "run_id": run_id,
        "response_bytes": size,
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        **{
            k: {"median_s": round(statistics.median(v), 4), "min_s": round(min(v), 4)}
            for k, v in results.items()
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"run {run_id}: {rows:,} metric rows; response {size / 1e6:.2f} MB")
        print(f"{'part':<8}{'median':>10}{'min':>10}")
        for k, v in results.items():
            print(f"{k:<8}{statistics.median(v):>9.3f}s{min(v):>9.3f}s")
        print(f"(load average {summary['load_avg_1m']} on {summary['cpus']} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
