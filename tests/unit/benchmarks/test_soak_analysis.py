"""The soak benchmark's analysis: generation window, quarters, slope per 100 rows, verdict."""

from __future__ import annotations

import pytest

from benchmarks import soak


def sample(t: float, rows: int, **roles: float) -> dict:
    return {
        "t": t,
        "rows": rows,
        "roles": {r: {"rss_mib": v, "uss_mib": v / 2, "procs": 1} for r, v in roles.items()},
    }


def test_flat_series_is_steady():
    out = soak.analyse_series([0, 100, 200, 300], [500.0, 501.0, 499.0, 500.0])
    assert out["verdict"] == "steady"
    assert out["first_quarter_mib"] == 500.0 and out["last_quarter_mib"] == 500.0
    assert abs(out["slope_mib_per_100_rows"]) < 1


def test_slope_is_mib_per_100_rows_and_judged_against_the_level():
    rows = [0, 50, 100, 150, 200, 250, 300, 350]
    leak = [1000.0 + 0.3 * r for r in rows]  # 30 MiB per 100 rows: 3% of 1000 MiB
    out = soak.analyse_series(rows, leak)
    assert out["slope_mib_per_100_rows"] == pytest.approx(30.0)
    assert out["first_quarter_mib"] == pytest.approx(1007.5)  # median of the first 2 samples
    assert out["last_quarter_mib"] == pytest.approx(1097.5)
    assert out["slope_pct_per_100_rows"] == pytest.approx(2.98, abs=0.01)
    assert out["verdict"] == "grows"
    assert soak.analyse_series(rows, leak, threshold_pct=5.0)["verdict"] == "steady"


def test_too_short_to_tell():
    assert soak.analyse_series([], [])["verdict"] == "unknown"
    assert soak.analyse_series([8], [100.0])["verdict"] == "unknown"
    assert soak.analyse_series([8, 8], [100.0, 120.0])["verdict"] == "unknown"  # no rows between


def test_window_leaves_out_start_up_and_shutdown():
    samples = [
        sample(0, 0, driver=100),  # engines starting: memory ramps, no row yet
        sample(5, 0, driver=900),
        sample(10, 8, driver=400),
        sample(15, 16, driver=400),
        sample(20, 24, driver=400),
        sample(25, 32, driver=200),  # every row written: the engines are being deleted
        sample(30, 32, driver=50),
    ]
    window = soak.generation_window(samples, total_rows=32)
    assert [s["t"] for s in window] == [10, 15, 20]
    out = soak.analyse(samples, total_rows=32)
    assert out["window"] == {"samples": 3, "from_s": 10, "to_s": 20, "from_rows": 8, "to_rows": 24}
    assert out["verdict"] == "steady" and out["grows"] == []


def test_growing_role_is_named_and_all_roles_are_summed():
    samples = [
        sample(5 * k, 10 * k, driver=400 + 5 * k, engine_core=2000) for k in range(1, 13)
    ]  # driver: +50 MiB per 100 rows on ~400 MiB
    out = soak.analyse(samples, total_rows=130)
    assert out["grows"] == ["driver"] and out["verdict"] == "grows"
    assert out["roles"]["engine_core"]["verdict"] == "steady"
    assert out["roles"]["driver"]["rss"]["slope_mib_per_100_rows"] == pytest.approx(50.0)
    assert out["roles"]["driver"]["uss"]["slope_mib_per_100_rows"] == pytest.approx(25.0)
    assert out["roles"]["all"]["rss"]["first_quarter_mib"] == pytest.approx(2410.0)
    assert list(out["roles"]) == ["driver", "engine_core", "all"]


def test_process_count_change_is_reported():
    samples = [sample(5 * k, 10 * k, engine_core=1000) for k in range(1, 5)]
    samples[2]["roles"]["engine_core"]["procs"] = 2  # a replacement engine starting
    out = soak.analyse(samples, total_rows=50)
    assert out["roles"]["engine_core"]["procs"] == [1, 2]
    assert out["roles"]["engine_core"]["procs_changed"] is True


@pytest.mark.parametrize(
    ("title", "name", "role"),
    [
        ("/x/ray/core/src/ray/gcs/gcs_server --log_dir=/tmp", "gcs_server", "gcs_server"),
        ("/x/ray/core/src/ray/raylet/raylet --node_id=1", "raylet", "raylet"),
        ("VLLM::EngineCore", "VLLM::EngineCor", "engine_core"),
        ("VLLM::Worker", "VLLM::Worker", "engine_worker"),
        ("ray::DashboardAgent", "ray::DashboardA", "ray_other"),
        ("ray::_StatsActor", "ray::_StatsActo", "ray_worker"),
        ("ray::TelemetryAgent.record", "ray::TelemetryA", "ray_worker"),
        ("ray::ServeReplica:llm:LLMServer", "ray::ServeRepli", "engine_replica"),
        ("ray::ServeController", "ray::ServeContr", "serve"),
        ("ray::MapWorker(MapBatches(MixtureWorker)).submit", "ray::MapWorker(", "data_worker"),
        ("ray::IDLE", "ray::IDLE", "ray_worker"),
        ("/x/python -u /x/ray/_private/log_monitor.py", "python", "ray_other"),
    ],
)
def test_roles_from_process_titles(title, name, role):
    assert soak.role_of(title, name) == role
