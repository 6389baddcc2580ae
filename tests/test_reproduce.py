"""The runner's notebook selection and timings, and the README table built from results."""

import pandas as pd
import pytest

from bdunlearn import reproduce, summary


def test_only_selects_by_number_or_stem_and_refuses_unknown(tmp_path):
    for stem in ("01_attack", "02_unlearning_trajectory", "04_detection"):
        (tmp_path / f"{stem}.ipynb").write_text("{}")
    pick = lambda only: [p.stem for p in reproduce.notebooks(tmp_path, only)]  # noqa: E731
    assert pick(None) == ["01_attack", "02_unlearning_trajectory", "04_detection"]
    assert pick(["04"]) == ["04_detection"]
    assert pick(["01_attack", "02"]) == ["01_attack", "02_unlearning_trajectory"]
    with pytest.raises(SystemExit, match="matches no notebook"):
        pick(["99"])


def test_timings_merge_newer_rows_win(tmp_path):
    path = tmp_path / "timings.csv"
    row = lambda nb, s: {"notebook": nb, "profile": "smoke", "seconds": s,  # noqa: E731
                         "date": "2026-11-23", "machine": "m"}
    reproduce._record(path, [row("02_b", 5.0), row("01_a", 3.0)])
    reproduce._record(path, [row("02_b", 7.0)])
    t = pd.read_csv(path)
    assert t.notebook.tolist() == ["01_a", "02_b"] and t.seconds.tolist() == [3.0, 7.0]


def test_summary_table_reads_the_csvs(tmp_path):
    pd.DataFrame({"variant": ["bn", "bn"], "requested": [0, 600], "clean_acc": [0.85, 0.84],
                  "asr": [0.05, 0.93], "baseline_acc": [0.85, 0.85]}).to_csv(
        tmp_path / "01_attack.csv", index=False)
    pd.DataFrame({"variant": ["bn"] * 3, "detector": ["mu"] * 3, "shards": [1, 5, 10],
                  "auroc": [0.69, 0.52, 0.49]}).to_csv(tmp_path / "04_detection.csv",
                                                       index=False)
    text = summary.table(tmp_path)
    assert "ASR 5.0% before, 93.0% after" in text and "| agrees |" in text
    assert "AUROC S=1: 0.690, S=5: 0.520, S=10: 0.490" in text
    assert "weaker: above chance, below 0.80" in text
    assert summary.table(tmp_path / "missing").startswith("_No results yet")
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{summary.START}\nold\n{summary.END}\nb\n")
    summary.update_readme(readme, tmp_path)
    assert "old" not in readme.read_text() and "93.0%" in readme.read_text()
