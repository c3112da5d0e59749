"""Figure builders of the dashboard: frames in, figures out (no lake, no browser)."""

from __future__ import annotations

import json

import polars as pl
import pytest

from dash_app import data
from dash_app import figures as fig
from storage.schema import CUSUM_CLIP, CUSUM_GRAD, CUSUM_VAL


def frame(**cols) -> pl.DataFrame:
    return pl.DataFrame(cols, strict=False)


def test_trace_drops_nulls_so_sparse_points_connect() -> None:
    df = frame(step=[1, 2, 3, 4, 5], weight_entropy=[None, 5.0, None, None, 4.0])
    x, y = fig.trace_xy(df, fig.TraceSpec("weight_entropy"))
    assert (x, y) == ([2, 5], [5.0, 4.0])


def test_trace_of_missing_column_is_empty() -> None:
    x, y = fig.trace_xy(frame(step=[1, 2]), fig.TraceSpec("val_loss"))
    assert len(x) == 0 and len(y) == 0


def test_loss_figure_without_val_loss_renders_empty_val_trace() -> None:
    df = frame(step=[1, 2, 3], loss=[3.0, 2.5, 2.0], val_loss=[None, None, None])
    f = fig.loss_figure(df)
    assert [t["name"] for t in f["data"]] == ["loss", "val loss", "skipped step", "checkpoint"]
    assert f["data"][0]["y"] == [3.0, 2.5, 2.0]
    assert f["data"][1]["x"] == []
    assert f["data"][0]["connectgaps"] and f["data"][1]["connectgaps"]


def test_loss_figure_marks_skipped_steps_and_checkpoints() -> None:
    df = frame(
        step=[1, 2, 3, 4],
        loss=[3.0, None, 2.0, 1.9],
        event=[None, "spike_skip", "checkpoint", "nan_skip,checkpoint"],
    )
    skips, checkpoints = fig.loss_figure(df)["data"][2:]
    assert skips["x"] == [2, 2, None, 4, 4, None] and skips["yaxis"] == "y2"
    assert checkpoints["x"] == [3, 3, None, 4, 4, None]


def test_empty_frame_says_no_data() -> None:
    f = fig.loss_figure(pl.DataFrame())
    assert any("no data" in a["text"] for a in f["layout"]["annotations"])


def test_clip_figure_is_dual_axis_zero_to_one() -> None:
    df = frame(step=[1, 2], clip_coef=[1.0, 0.5], clip_pct=[0.0, 0.5])
    f = fig.clip_figure(df)
    assert f["data"][0]["name"] == "clip_coef" and f["data"][1]["yaxis"] == "y2"
    assert f["layout"]["yaxis"]["range"] == [0, 1.05]
    assert f["layout"]["yaxis2"]["side"] == "right" and f["layout"]["yaxis2"]["overlaying"] == "y"


def cusum_frame() -> pl.DataFrame:
    steps = list(range(1, 11))
    alerts = [0, 0, CUSUM_GRAD, 0, 0, CUSUM_CLIP | CUSUM_VAL, 0, 0, 0, 0]
    return frame(
        step=steps,
        cusum_grad=[0.1 * s for s in steps],
        cusum_clip=[0.2] * 10,
        cusum_tps=[0.0] * 10,
        cusum_val=[None, 1.0, None, None, 2.0, None, None, None, None, 3.0],
        cusum_alerts=alerts,
    )


def test_cusum_threshold_line_comes_from_the_argument() -> None:
    f = fig.cusum_figure(cusum_frame(), threshold=2.75)
    (shape,) = f["layout"]["shapes"]
    assert shape["y0"] == shape["y1"] == 2.75 and shape["line"]["dash"] == "dash"
    assert "2.75" in f["layout"]["annotations"][0]["text"]
    assert "shapes" not in fig.cusum_figure(cusum_frame(), threshold=None)["layout"]


def test_cusum_has_four_lines_alert_markers_and_unified_hover() -> None:
    f = fig.cusum_figure(cusum_frame(), threshold=4.0)
    names = [t["name"] for t in f["data"]]
    assert names[:4] == ["cusum_grad", "cusum_clip", "cusum_tps", "cusum_val"]
    grad_alert, clip_alert, tps_alert, val_alert = f["data"][4:]
    assert grad_alert["x"] == [3, 3, None] and grad_alert["yaxis"] == "y2"
    assert clip_alert["x"] == [6, 6, None] and val_alert["x"] == [6, 6, None]
    assert tps_alert["x"] == []
    assert f["data"][3]["x"] == [2, 5, 10]  # sparse cusum_val, gaps bridged
    assert f["layout"]["template"]["layout"]["hovermode"] == "x unified"


def test_threshold_is_read_from_the_runs_symbio_config() -> None:
    run = {"symbio_config": json.dumps({"cusumSensitivity": 3.25})}
    assert data.cusum_threshold(run) == 3.25
    assert data.cusum_threshold({"symbio_config": json.dumps({"cusum_sensitivity": 5})}) == 5.0
    assert data.cusum_threshold({"symbio_config": "{}"}) is None
    assert data.cusum_threshold({"symbio_config": "not json"}) is None


def test_batch_figure_is_a_step_chart_with_reasons() -> None:
    df = frame(
        step=[1, 40, 41, 90, 150, 200],
        adaptive_batch_size=[32, 28, 24, 28, 32, 32],
        batch_change_reason=[None, "cusum_grad", "cusum_grad", "restore", "restore", None],
    )
    f = fig.batch_figure(df)
    assert f["data"][0]["line"]["shape"] == "hv"
    by_name = {t["name"]: t["x"] for t in f["data"][1:]}
    assert by_name["cusum_grad"] == [40, 41] and by_name["restore"] == [90, 150]
    # one label per burst of changes (40-41), one per separate change
    assert [a["text"] for a in f["layout"]["annotations"]] == ["cusum_grad", "restore", "restore"]


def test_mini_charts_handle_sparse_data() -> None:
    df = frame(
        step=[50, 51, 100],
        loss=[2.0, 1.9, 1.8],
        weight_entropy=[5.0, None, 4.9],
        effective_rank=[10.0, None, 11.0],
        free_energy=[2.05, None, 1.85],
        fitness_score=[-2.0, None, -1.9],
        complexity_score=[0.4, None, 0.39],
    )
    for build in (fig.weight_entropy_figure, fig.effective_rank_figure):
        assert build(df)["data"][0]["x"] == [50, 100]
    fe = fig.free_energy_figure(df)
    assert [len(t["x"]) for t in fe["data"]] == [2, 3]  # free energy + loss overlay
    fc = fig.fitness_figure(df)
    assert fc["data"][1]["yaxis"] == "y2"


def test_information_plane_colours_points_by_step() -> None:
    df = frame(step=[50, 100, 150], mi_input_repr=[2.0, 2.5, 2.4], mi_repr_output=[0.5, 0.9, 1.2])
    f = fig.information_plane_figure(df)
    assert f["data"][0]["marker"]["color"] == [50, 100, 150]
    assert f["data"][0]["marker"]["showscale"]
    traj = fig.mi_trajectory_figure(df.with_columns(mi_compression=pl.lit(0.3)))
    assert [t["name"] for t in traj["data"]] == ["I(X;T)", "I(T;Y)", "I(T;Y)/I(X;T)"]


def test_activation_shares_per_generation_sum_to_one() -> None:
    df = frame(
        step=[1, 2, 3, 4],
        symbio_generation=[0, 0, 1, 1],
        activation_distribution=[
            '{"gelu": 2, "swiglu": 2}',
            '{"gelu": 3, "swiglu": 1}',  # the generation's last value wins
            None,
            '{"swiglu": 4}',
        ],
    )
    shares = fig.activation_shares(df)
    assert shares["symbio_generation"].to_list() == [0, 1]
    assert shares["gelu"].to_list() == [0.75, 0.0]
    assert shares["swiglu"].to_list() == [0.25, 1.0]
    f = fig.activation_distribution_figure(df)
    assert {t["stackgroup"] for t in f["data"]} == {"act"}
    assert {t["name"] for t in f["data"]} == {"GELU", "SwiGLU"}


def test_extend_payload_appends_new_points_per_trace() -> None:
    new = frame(step=[11, 12], loss=[1.5, 1.4], val_loss=[None, 1.6], event=["checkpoint", None])
    payload = fig.extend_payload(new, fig.LIVE_TRACES["loss"], 500)
    assert payload == [
        {
            "x": [[11, 12], [12], [], [11, 11, None]],
            "y": [[1.5, 1.4], [1.6], [], [0, 1, None]],
        },
        [0, 1, 2, 3],
        500,
    ]
    assert fig.extend_payload(frame(step=[], loss=[]), fig.LIVE_TRACES["loss"]) is None


def test_extend_payload_for_alert_markers_uses_separators() -> None:
    new = frame(step=[20, 21], cusum_grad=[5.0, 5.1], cusum_clip=[0.0, 0.0], cusum_tps=[0.0, 0.0],
                cusum_val=[None, None], cusum_alerts=[CUSUM_GRAD, 0])  # fmt: skip
    (update, idx) = fig.extend_payload(new, fig.LIVE_TRACES["cusum"])
    assert idx == list(range(8))
    assert update["x"][4] == [20, 20, None] and update["y"][4] == [0, 1, None]


def test_figures_are_plain_json() -> None:
    """dcc.Graph gets plain lists: plotly.js cannot extendData base64 arrays."""
    f = fig.loss_figure(frame(step=[1, 2], loss=[2.0, 1.0], val_loss=[None, 1.5]))
    assert json.loads(json.dumps(f))["data"][1]["x"] == [2]


def test_every_live_graph_reads_only_lake_columns() -> None:
    from storage.schema import column_names

    assert set(fig.LIVE_COLUMNS) <= set(column_names("metrics"))


def test_alert_onsets_mark_only_new_bits() -> None:
    df = frame(step=[1, 2, 3, 4], cusum_alerts=[CUSUM_GRAD, CUSUM_GRAD, CUSUM_GRAD | CUSUM_CLIP, 0])
    out = data.alert_onsets(df, previous=CUSUM_GRAD)["cusum_alerts"].to_list()
    assert out == [0, 0, CUSUM_CLIP, 0]


def test_config_diff_lists_only_differing_settings() -> None:
    a = {"run_id": "a", "train_config": json.dumps({"lr": 1e-3, "iters": 10}), "domain": "x"}
    b = {"run_id": "b", "train_config": json.dumps({"lr": 5e-5, "iters": 10}), "domain": "x"}
    rows, same = data.config_diff([a, b])
    assert rows == [{"key": "train.lr", "a": "0.001", "b": "5e-05"}]
    assert same == 2


@pytest.mark.parametrize(
    ("step", "total", "elapsed_ms", "eta"),
    [(100, 1000, 10_000.0, 90.0), (None, 1000, 1.0, None), (1000, 1000, 5.0, None)],
)
def test_eta(step, total, elapsed_ms, eta) -> None:
    assert data.eta_seconds(step, total, elapsed_ms) == eta
