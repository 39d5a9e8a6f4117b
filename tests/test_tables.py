import json

import numpy as np
import pandas as pd
import pytest

from p2core.tables import (
    NO_BASELINE,
    claims,
    collect,
    evaluations_to_reach,
    for_people,
    people_markdown,
    summary_markdown,
    table1,
    table3,
    table4,
    table5,
    to_markdown,
    welch_interval,
)


def test_welch_interval_matches_the_closed_form():
    # means 2 and 5; variances 1 and 1 over 3 values: se = sqrt(2/3), Welch dof = 4, t(0.975, 4) = 2.7764451
    difference, low, high = welch_interval([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    half = 2.7764451051977987 * np.sqrt(2 / 3)
    assert difference == -3.0
    assert (low, high) == pytest.approx((-3.0 - half, -3.0 + half), rel=1e-12)
    # unequal spread and counts: dof from Welch-Satterthwaite
    a, b = np.array([0.0, 2.0]), np.array([1.0, 1.5, 2.0, 2.5])
    va, vb = a.var(ddof=1) / 2, b.var(ddof=1) / 4
    dof = (va + vb) ** 2 / (va**2 / 1 + vb**2 / 3)
    from scipy.stats import t

    assert welch_interval(a, b)[2] == pytest.approx(a.mean() - b.mean() + t.ppf(0.975, dof) * np.sqrt(va + vb))
    assert welch_interval([1.0, 1.0], [2.0, 2.0]) == (-1.0, -1.0, -1.0)


def metrics(rows):
    columns = ("dataset", "arch", "arch_label", "objective", "seed", "fid", "kid_mean")
    frame = pd.DataFrame(rows, columns=columns)
    return frame.assign(extractor="domain", n_generated=10, n_reference=20)


def test_tables_carry_the_difference_with_its_interval_and_claims_get_verdicts():
    rows = [("d", "a", "A", "baseline", s, 10.0 + s, 0.1) for s in range(3)]
    rows += [("d", "a", "A", "p2", s, 7.0 + s, 0.1 + 0.01 * s) for s in range(3)]
    rows += [
        ("e", "a", "A", objective, s, base + s, 0.1) for objective, base in (("baseline", 1), ("p2", 9)) for s in (0, 1)
    ]
    table = table1(metrics(rows))
    p2 = table[table["objective"] == "p2"].iloc[0]
    expected = welch_interval([7.0, 8.0, 9.0], [10.0, 11.0, 12.0])
    assert (p2["fid_diff"], p2["fid_diff_low95"], p2["fid_diff_high95"]) == pytest.approx(expected)
    assert p2["interval"] == "95% Welch t over seeds (3 vs 3)"
    assert table[table["objective"] == "baseline"].iloc[0]["interval"] == "reference"
    single = table3(metrics([("d", "b", "B", "baseline", 0, 5.0, 0.1), ("d", "b", "B", "p2", 0, 6.0, 0.2)]))
    one = single[single["objective"] == "p2"].iloc[0]
    assert one["fid_diff"] == 1.0 and np.isnan(one["fid_diff_low95"]) and one["interval"].startswith("none: 1 vs 1")
    found = claims({"table1": table, "table3": single}).set_index("claim")["verdict"].to_dict()
    assert found == {
        "p2 lowers FID vs baseline (d)": "supported",  # interval entirely below 0
        "p2 lowers KID vs baseline (d)": "inconclusive",  # KID +0.01, interval spans 0
        "p2 lowers FID vs baseline (e)": "not supported",  # +8 with zero spread: interval entirely above 0
        "p2 lowers KID vs baseline (e)": "inconclusive",  # equal: a zero-width interval at 0
        "p2 lowers FID vs baseline (B)": "inconclusive",  # one seed: no interval
    }
    text = summary_markdown(claims({"table1": table}))
    assert text.startswith("# What this run shows") and "**supported**: p2 lowers FID vs baseline (d)" in text


def test_one_seed_per_side_gets_a_paired_bootstrap_interval_over_samples():
    frame = metrics([("d", "b", "B", "baseline", 0, 5.0, 0.1), ("d", "b", "B", "p2", 0, 4.0, 0.2)])
    base_replicates = [5.0 + 0.1 * i for i in range(40)]
    # P2 replicates minus baseline ones alternate -1.5 and -0.5
    p2_replicates = [b - 1.0 + (0.5 if i % 2 else -0.5) for i, b in enumerate(base_replicates)]
    frame["fid_bootstrap"] = [base_replicates, p2_replicates]
    row = table3(frame).set_index("objective").loc["p2"]
    assert (row["fid_diff"], row["fid_diff_low95"], row["fid_diff_high95"]) == (-1.0, -1.5, -0.5)
    assert row["interval"] == "FID: 95% paired bootstrap over samples (40 resamples, one seed per side); KID: none"
    assert np.isnan(row["kid_diff_low95"])
    verdicts = claims({"table3": table3(frame)}).set_index("claim")["verdict"]
    assert verdicts["p2 lowers FID vs baseline (B)"] == "supported"


def test_smallest_dataset_and_cosine_claims():
    rows = [("small", "a", "A", "baseline", s, 10.0 + s, 0.1) for s in range(3)]
    rows += [("small", "a", "A", "p2", s, 5.0 + s, 0.1) for s in range(3)]
    rows += [("big", "a", "A", "baseline", s, 10.0 + s, 0.1) for s in range(3)]
    rows += [("big", "a", "A", "p2", s, 9.5 + s, 0.1) for s in range(3)]
    frame = metrics(rows)
    frame["n_reference"] = [1000 if d == "small" else 70000 for d in frame["dataset"]]
    table = table1(frame)
    # Fig. 4's final checkpoints: cosine 3 above linear for the baseline (small spread), equal for P2
    runs = pd.DataFrame(
        [
            (o, s, f, "final")
            for o, base in (("baseline", 5.0), ("baseline_cosine", 8.0))
            for s, f in ((0, base), (1, base + 0.1))
        ]
        + [(o, s, 4.0 + s, "final") for o in ("p2", "p2_cosine") for s in (0, 1)]
        + [("baseline_cosine", 0, 0.0, "step10")],
        columns=["objective", "seed", "fid", "checkpoint"],
    )
    found = claims({"table1": table}, runs).set_index("claim")
    assert found.loc["p2's FID gain is largest on the smallest dataset (small)", "verdict"] == "inconclusive"
    assert found.loc["p2's FID gain is largest on the smallest dataset (small)", "difference"] == pytest.approx(-4.5)
    cosine = found.loc["the cosine schedule is worse than linear for baseline (FID)"]
    assert cosine["difference"] == pytest.approx(3.0) and cosine["verdict"] == "supported"
    assert found.loc["the cosine schedule is worse than linear for p2 (FID)", "verdict"] == "inconclusive"
    frame.loc[frame["dataset"] == "big", "fid"] += [0.0, 0.0, 0.0, 0.5, 0.5, 0.5]  # big: p2 is now +0 (no spread)
    frame.loc[frame["dataset"] == "small", "fid"] += [0.0, 0.0, 0.0, 0.0, -1.0, -2.0]
    verdicts = claims({"table1": table1(frame)}).set_index("claim")["verdict"]
    assert verdicts["p2's FID gain is largest on the smallest dataset (small)"] == "supported"


def test_several_backends_get_their_own_columns(tmp_path):
    paths = []
    for seed, (clean, torch_fidelity) in enumerate(((10.0, 8.0), (12.0, 9.0))):
        content = {
            "fid": clean,
            "kid_mean": 0.1,
            "backends": [
                {"backend": "clean-fid 0.1.35", "backend_name": "clean-fid", "fid": clean, "kid_mean": 0.1},
                {
                    "backend": "torch-fidelity 0.4.0",
                    "backend_name": "torch-fidelity",
                    "fid": torch_fidelity,
                    "kid_mean": 0.2,
                },
            ],
            "tags": {"dataset": "d", "objective": "baseline", "seed": seed},
            "extractor": "inception-torchscript",
            "n_generated": 10,
            "n_reference": 20,
        }
        paths.append(tmp_path / f"{seed}.json")
        paths[-1].write_text(json.dumps(content))
    row = table1(collect(paths)).iloc[0]
    assert row["fid_mean"] == row["clean_fid_fid_mean"] == 11.0 and row["torch_fidelity_fid_mean"] == 8.5
    assert row["torch_fidelity_kid_mean"] == pytest.approx(0.2)


def test_a_dataset_without_a_baseline_model_is_reported_not_compared():
    """CelebA-HQ in the released models: P2 alone. Its row says there is no baseline; no verdict comes from it."""
    rows = [("ffhq", "a", "A", o, s, f + s, 0.1) for o, f in (("baseline", 10.0), ("p2", 6.0)) for s in range(2)]
    rows += [("celebahq", "a", "A", "p2", s, 8.0 + s, 0.1) for s in range(2)]
    frame = metrics(rows)
    frame["n_reference"] = [70000 if d == "ffhq" else 30000 for d in frame["dataset"]]
    table = table1(frame)
    lonely = table[table["dataset"] == "celebahq"].iloc[0]
    assert lonely["interval"] == NO_BASELINE and np.isnan(lonely["fid_diff"])
    found = claims({"table1": table}).set_index("claim")
    assert found.loc["p2 lowers FID vs baseline (celebahq)", "verdict"] == "not tested"
    assert not any("largest on the smallest" in claim for claim in found.index)  # one dataset left to compare
    text = summary_markdown(claims({"table1": table}))
    assert "**not tested**: p2 lowers FID vs baseline (celebahq) (table1): there is no baseline model" in text


def test_the_markdown_view_shows_what_a_reader_needs_and_no_nan():
    """Table 1 as people read it: the run, FID and KID mean ± std, the difference with its interval and verdict; a
    dataset without a baseline says so; one seed has no std; nothing reads ``nan`` or ``None``."""
    rows = [("ffhq", "a", "A", o, s, f + s, 0.1) for o, f in (("baseline", 10.0), ("p2", 6.0)) for s in range(2)]
    rows += [("celebahq", "a", "A", "p2", 0, 8.0, 0.1)]
    view = for_people(table1(metrics(rows)))
    assert list(view.columns)[:3] == ["dataset", "objective", "FID"] and "verdict" in view
    text = to_markdown(view)
    assert "nan" not in text.lower() and "None" not in text and len(view.columns) <= 12
    p2, lonely = view.iloc[1], view.iloc[2]
    assert p2["FID"] == "6.5 ± 0.71" and p2["FID vs baseline [95%]"].startswith("-4 [") and p2["verdict"]
    assert lonely["FID"] == "8" and lonely["FID vs baseline [95%]"] == NO_BASELINE and lonely["verdict"] == "-"
    assert to_markdown(view).startswith("| dataset | objective | FID |")  # two datasets, seed counts 2 and 1
    shown = people_markdown(table1(metrics(rows[:4])))  # what is the same in every row is said once, above the table
    header, table_lines = shown.split("\n\n", 1)
    assert header == "Every row: dataset ffhq · seeds 2"
    assert table_lines.splitlines()[0].startswith("| objective | FID |") and "seeds" not in table_lines


def sweep(fids: dict[str, tuple[float, float]]) -> pd.DataFrame:
    """A Table 4 from {sampler: (baseline FID, p2 FID)}, two seeds each (spread +-0.1)."""
    rows = []
    for sampler, pair in fids.items():
        for objective, fid in zip(("baseline", "p2"), pair, strict=True):
            rows += [(objective, sampler, s, fid + (0.1 if s else -0.1)) for s in (0, 1)]
    frame = pd.DataFrame(rows, columns=["objective", "sampler", "seed", "fid"])
    return table4(
        frame.assign(dataset="ffhq", kid_mean=0.1, extractor="e", n_generated=10, n_reference=20, num_timesteps=1000)
    )


def test_fewest_evaluations_to_reach_table1s_sampler_and_the_gain_with_fast_samplers():
    table = sweep(
        {
            "ddpm250": (10.0, 8.0),
            "ddpm50": (14.0, 12.0),
            "ddim10": (16.0, 12.0),
            "ddim25": (11.0, 9.5),
            "dpmpp2m10": (10.5, 7.9),
            "dpmpp2m25": (9.9, 8.1),
        }
    )
    reach = evaluations_to_reach(table, "ddpm250").set_index(["objective", "kind"])
    assert reach.loc[("p2", "dpmpp2m"), "evaluations"] == 10 and reach.loc[("p2", "dpmpp2m"), "speedup"] == 25
    assert reach.loc[("baseline", "dpmpp2m"), "evaluations"] == 25  # 10.5 > 10.0 at 10 evaluations
    assert (
        np.isnan(reach.loc[("baseline", "ddim"), "evaluations"]) and reach.loc[("baseline", "ddim"), "tried"] == "10 25"
    )
    assert reach.loc[("p2", "ddpm"), "evaluations"] == 250
    gain = claims({"table4": table}).set_index("table").loc["table4"]
    few = gain[gain["claim"].str.contains("10-25 model evaluations")].iloc[0]
    # every sampler with 10-25 evaluations has P2 below the baseline beyond the seed spread; the weakest: ddim25
    assert (
        few["verdict"] == "supported"
        and few["difference"] == pytest.approx(-1.5)
        and "shown: the smallest gain, ddim25" in few["claim"]
    )
    worse = sweep({"ddpm250": (10.0, 8.0), "ddim10": (12.0, 13.0), "dpmpp2m10": (10.0, 8.0)})
    few = claims({"table4": worse}).set_index("table").loc["table4"]
    assert few[few["claim"].str.contains("10-25")].iloc[0]["verdict"] == "not supported"
    text = summary_markdown(claims({"table4": table}), reach.reset_index())
    assert "reaching ddpm250's FID" in text and "- p2, dpmpp2m: 10 (25x fewer)" in text and "not reached" in text
    assert "- p2, ddpm: 250 (the reference itself)" in text
    from_ddim10 = evaluations_to_reach(table, "ddim10").reset_index()
    assert "- p2, ddpm: 50 (5x more)" in summary_markdown(claims({"table4": table}), from_ddim10)


def test_the_weighting_study_compares_every_weighting_to_the_baseline_and_to_p2():
    rows = [
        ("d", "a", "A", objective, s, fid + 0.2 * s, 0.1)
        for objective, fid in (("baseline", 10.0), ("p2", 7.0), ("min_snr", 5.0), ("edm", 8.0))
        for s in range(3)
    ]
    table = table5(metrics(rows)).set_index("objective")
    assert list(table.index) == ["min_snr", "p2", "edm", "baseline"]  # best FID first
    assert table.loc["min_snr", "fid_diff"] == pytest.approx(-5.0) and table.loc["min_snr", "fid_diff_vs_p2"] == -2.0
    assert table.loc["p2", "interval_vs_p2"] == "reference" and table.loc["min_snr", "fid_diff_vs_p2_low95"] < -1.9
    found = claims({"table5": table.reset_index()}).set_index("claim")["verdict"]
    assert found["min_snr lowers FID vs p2 (d, weighting study)"] == "supported"
    assert found["edm lowers FID vs p2 (d, weighting study)"] == "not supported"  # +1 +- 0.45
    assert found["edm lowers FID vs baseline (d, weighting study)"] == "supported"
    assert not any(claim.startswith(("p2 ", "baseline ")) for claim in found.index)  # those are Table 1's claims
