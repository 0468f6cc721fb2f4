"""The soak test's machinery (benchmarks/soak.py; `make soak` runs it for 10 minutes, not in CI):
a short run against a real server must send every kind of request, get each one's expected
status, probe liveness, sample RSS and write both result files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import soak


@pytest.mark.slow  # a real server for half a minute
@pytest.mark.timeout(400)
def test_a_short_soak_measures_what_the_long_one_reports(tmp_path: Path) -> None:
    out = tmp_path / "results"
    code = soak.main(["--duration", "20", "--warmup", "4", "--sample-s", "1", "--admin-cycle-s", "2",
                      "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    [result_file] = out.glob("soak-*.json")
    result = json.loads(result_file.read_text())
    assert code == 0, result["failures"]
    assert result["totals"]["unexpected"] == 0 and result["totals"]["server_errors"] == 0
    assert result["totals"]["sent"] > 20 and result["totals"]["bad_sent"] > 0
    assert {"summary", "hot_load", "hot_unload"} <= set(result["requests"])
    assert result["live_probe_ms"]["count"] >= 10 and result["live_probe_ms"]["failures"] == 0
    assert len(result["samples"]) >= 10 and result["rss"]["after_warmup_mib"] > 0
    assert result["cache_entries_at_end"] == 0  # every hot load's unpacked copy was deleted on unload
    md = result_file.with_suffix(".md").read_text()
    assert "What the machine was doing" in md and "every other process" in md and "PASS" in md


def test_rss_growth_compares_the_first_and_last_minute_after_warm_up() -> None:
    samples = [{"t": float(t), "rss_mib": 100.0 + (t // 60) * 5} for t in range(0, 301, 5)]
    growth = soak.rss_growth(samples, warmup_s=60, window_s=60)
    assert growth["after_warmup_mib"] == 105 and growth["end_mib"] == 120 and growth["growth_mib"] == 15
    assert 4 < growth["slope_mib_per_min"] < 6 and growth["peak_mib"] == 125
    assert soak.rss_growth(samples[:1], warmup_s=0, window_s=60) == {}
