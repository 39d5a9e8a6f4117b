"""benchmarks/pipeline.py's conversion of measured times to minutes at the reference calibration."""

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
        "remaining_artifacts_s": 720.0,
        "all_artifacts_s": 1140.0,  # 19 min here: 38 at the reference
        "table1_job_s": {"train": 600.0},
        "noop_rerun_s": 1.5,
    }
    result = pipeline.scaled(report)
    assert result["calibration_img_per_s"] == pytest.approx(17.12)
    assert result["reference_min"]["table1"] == pytest.approx(14.0)
    assert result["reference_min"]["all_artifacts"] == pytest.approx(38.0)
    assert result["reference_min"]["table1_job_min"] == {"train": pytest.approx(20.0)}
    assert result["budget"]["table1"]["met"] and not result["budget"]["all_artifacts"]["met"]
    assert result["budget"]["noop_rerun"]["met"]
    assert "remaining_job_min" not in result["reference_min"]
