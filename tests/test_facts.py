"""Per-core clocks are read from what `grep . .../cpufreq/FILE` prints on the board."""

import subprocess
from pathlib import Path

from pipeline.board.facts import per_core_khz


def test_per_core_clocks_come_from_grep_output_of_the_cpufreq_files(tmp_path: Path) -> None:
    for core, khz in (("cpu0", 408000), ("cpu4", 1800000), ("cpu10", 1200000)):
        folder = tmp_path / core / "cpufreq"
        folder.mkdir(parents=True)
        (folder / "scaling_cur_freq").write_text(f"{khz}\n")
    (tmp_path / "cpu5").mkdir()  # an offline core has no cpufreq folder
    script = f"v=$(grep . {tmp_path}/cpu[0-9]*/cpufreq/scaling_cur_freq) && echo $v"  # as facts.py joins lines
    printed = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True).stdout
    assert per_core_khz(printed) == {"cpu0": 408000, "cpu10": 1200000, "cpu4": 1800000}


def test_a_board_without_cpufreq_has_no_per_core_clocks() -> None:
    assert per_core_khz(None) is None
    assert per_core_khz("") is None
