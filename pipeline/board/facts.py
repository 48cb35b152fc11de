"""Board facts recorded with every result: what the machine is and what state it was in."""

import re
import shlex
from dataclasses import dataclass

from pipeline.board.session import Board

_PROBES = {
    "kernel_arch": "uname -m",
    "kernel": "uname -r",
    "hostname": "uname -n",
    "online_cores": "nproc",
    "cpu_model": "grep -m1 -E '^(model name|Hardware|CPU part)' /proc/cpuinfo | cut -d: -f2-",
    "governor": "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
    "cur_freq_khz": "cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq",
    "temperature_mc": "cat /sys/class/thermal/thermal_zone0/temp",
    "core_freqs": "grep . /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq",
    "core_max_freqs": "grep . /sys/devices/system/cpu/cpu[0-9]*/cpufreq/cpuinfo_max_freq",
}


@dataclass(frozen=True)
class BoardFacts:
    """Missing sysfs entries (common in VMs and emulation) are None, not errors. The per-core clocks
    matter on big.LITTLE boards: the RK3399 runs the model on its A72 cores (cpu4, cpu5), not on cpu0."""

    kernel_arch: str | None
    kernel: str | None
    hostname: str | None
    online_cores: int | None
    cpu_model: str | None
    governor: str | None
    cur_freq_khz: int | None
    temperature_c: float | None
    core_freq_khz: dict[str, int] | None = None
    core_max_freq_khz: dict[str, int] | None = None


def collect_facts(board: Board) -> BoardFacts:
    """One round trip: each probe prints `name=value`, failures print nothing."""
    script = "; ".join(f"v=$({cmd} 2>/dev/null) && echo {name}=$v" for name, cmd in _PROBES.items())
    result = board.run(f"sh -c {shlex.quote(script)}", timeout_s=30.0)
    values = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    values = {name: value.strip() for name, value in values.items() if value.strip()}
    return BoardFacts(
        kernel_arch=values.get("kernel_arch"),
        kernel=values.get("kernel"),
        hostname=values.get("hostname"),
        online_cores=_as_int(values.get("online_cores")),
        cpu_model=values.get("cpu_model"),
        governor=values.get("governor"),
        cur_freq_khz=_as_int(values.get("cur_freq_khz")),
        temperature_c=millis / 1000 if (millis := _as_int(values.get("temperature_mc"))) else None,
        core_freq_khz=per_core_khz(values.get("core_freqs")),
        core_max_freq_khz=per_core_khz(values.get("core_max_freqs")),
    )


def per_core_khz(grep_output: str | None) -> dict[str, int] | None:
    """`grep . .../cpuN/cpufreq/FILE` lines ("PATH:VALUE", joined by spaces) -> {"cpuN": VALUE}."""
    pairs = re.findall(r"/(cpu\d+)/cpufreq/\w+:(\d+)", grep_output or "")
    return {core: int(khz) for core, khz in pairs} or None


def _as_int(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None
