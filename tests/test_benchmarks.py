"""The benchmarks' arithmetic: pipeline.py's minutes at the reference calibration, throughput.py's ratios."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pipeline  # noqa: E402


def test_times_scale_by_the_calibration_ratio_and_meet_or_miss_their_budgets():
    report = {
        "calibration_before": {"small_fp32_train_img_per_s": 18.0},
        "calibration_after": {"small_fp32_train_img_per_s": 16.24},  # mean 17.12 = 2x the reference 8.56
        "table1_s": 420.0,  # 7 min here: 14 at the reference
        "remaining_artifacts_s": 2640.0,
        "all_artifacts_s": 3060.0,  # 51 min here: 102 at the reference
        "table1_job_s": {"train": 600.0},
        "noop_rerun_s": 1.5,
    }
    result = pipeline.scaled(report)
    assert result["calibration_img_per_s"] == pytest.approx(17.12)
    assert result["reference_min"]["table1"] == pytest.approx(14.0)
    assert result["reference_min"]["all_artifacts"] == pytest.approx(102.0)
    assert result["reference_min"]["table1_job_min"] == {"train": pytest.approx(20.0)}
    assert result["budget"]["table1"]["met"] and not result["budget"]["all_artifacts"]["met"]
    assert result["budget"]["noop_rerun"]["met"]
    assert "remaining_job_min" not in result["reference_min"]


def test_throughput_takes_each_setting_at_its_median_run_and_compares_the_pipelines_layout():
    import throughput

    runs = [{"step_s": 3.0, "img_per_s": 1.0}, {"step_s": 1.0, "img_per_s": 3.0}, {"step_s": 2.0, "img_per_s": 1.5}]
    assert throughput.median(runs) == runs[2]
    report = {
        "pipeline_layout": {"train": False, "sample": True},
        "p2core_vs_authors": {
            "fp32": {"train": 1.1, "sample_per_evaluation": 0.9},
            "fp32_channels_last": {"train": 1.0, "sample_per_evaluation": 1.2},
        },
    }
    assert throughput.as_pipeline(report) == {"train": 1.1, "sample_per_evaluation": 1.2}


def test_the_timestep_variance_benchmark_measures_both_estimators_on_the_same_model():
    import timestep_variance

    result = timestep_variance.measure(batches=4, batch_size=2, checkpoint=None)
    assert set(result["total_gradient_variance"]) == {"weight", "draw"}
    assert all(value > 0 for value in result["total_gradient_variance"].values())
    assert result["variance_ratio_draw_over_weight"] > 0
    norms = result["mean_gradient_norm"]
    assert norms["weight"] > 0 and norms["draw"] > 0
