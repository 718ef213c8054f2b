"""What machine a figure came from: CPU model, cores, threads, the ISA flags that decide our
speed, and the versions of the engines, for the header of every benchmark.

Speed ratios flip between CPUs (OpenCV's Winograd wins on AVX2, bf16 torch on AVX-512 BF16, INT8
only pays with VNNI), so a figure without this line cannot be read. Nothing here imports torch:
versions come from the installed packages' metadata.

    python -m yolo.machine          # prints the line
"""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

# the flags that decide which engine and precision are fastest, in /proc/cpuinfo's spelling
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# distribution name -> what we call it; the first one installed is reported
PACKAGES = (("torch", ("torch",)), ("numpy", ("numpy",)),
            ("opencv", ("opencv-python-headless", "opencv-python", "opencv-contrib-python")),
            ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("openvino", ("openvino",)))


def _cpuinfo(text: str | None = None) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo's first processor; ('', set()) where there is none."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # x86, Arm
            flags = set(value.split())
    return model, flags


def cpu_model() -> str:
    return _cpuinfo()[0] or platform.processor() or platform.machine() or "unknown CPU"


def speed_flags(flags: set[str] | None = None) -> dict[str, bool]:
    """Each flag of :data:`SPEED_FLAGS`: present or not (all False where the flags cannot be read)."""
    have = _cpuinfo()[1] if flags is None else flags
    return {f: f in have for f in SPEED_FLAGS}


def usable_cores() -> int:
    """CPUs this process may run on (its affinity), which is what the engines' threads share."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    """Installed version of each engine package; missing ones are left out."""
    found = {}
    for name, dists in PACKAGES:
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def machine_line(threads: int | None = None) -> str:
    """One line for a benchmark header, e.g. ``CPU: AMD EPYC (2 cores, 2 threads) avx2 -avx512f
    -avx512_vnni -avx512_bf16 -amx_bf16 -amx_int8 | torch 2.13.0, opencv 4.14.0, ...``
    (a leading ``-`` marks a flag the CPU lacks)."""
    cores = usable_cores()
    flags = " ".join(f if ok else f"-{f}" for f, ok in speed_flags().items())
    vers = ", ".join(f"{k} {v}" for k, v in versions().items())
    return (f"CPU: {cpu_model()} ({cores} cores, {threads if threads is not None else cores} threads) "
            f"{flags} | python {platform.python_version()}, {vers}")


def main(argv: list[str] | None = None) -> int:
    threads = int(argv[0]) if argv else None
    print(machine_line(threads))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
