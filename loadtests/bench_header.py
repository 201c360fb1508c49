"""``read_header``: the fast path against the reference path (pydicom), side by side on the same files.

Run: ``python loadtests/bench_header.py [--instances 200] [--rounds 5] [--size 128] [FILE ...]``

Without files, writes ``--instances`` CT instances derived from pydicom's ``CT_small.dcm`` (about 39 KB, some 270
elements with private groups and sequences; ``--size 512`` tiles them to real 512x512 slices), the same instances
as ``bench_imaging.py``, into a temp folder that is removed at the end. Every file is read by the reference path
alone (``_read_header_slow``), by ``read_header`` (fast path, falling back when unsure), and by ``read_header``
with the fast path's memo of short ASCII values emptied before each file (its worst case). The paths alternate
within each round, so they share the machine's state. Prints the median and mean time per file, the ratio against
the reference path, and the goal beside it (at least 3x). Before timing, the script checks that both paths give
identical headers for every file, and reports how many files the fast path read itself.

Bounded: at most ``--rounds`` rounds over at most ``--instances`` files, and no new round after
``--max-seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging_support import InstanceFactory

from imaging import dicomfile

GOAL_RATIO: Final = 3.0

Reader = Callable[[Path], Any]


def read_reference(path: Path) -> Any:
    return dicomfile._read_header_slow(path)


def read_fast(path: Path) -> Any:
    return dicomfile.read_header(path)


def read_fast_cold(path: Path) -> Any:
    for _vr, _long_length, _category, _one_number, memo in dicomfile._FAST_VRS.values():
        if memo is not None:
            memo.clear()
    return dicomfile.read_header(path)


PATHS: Final[dict[str, Reader]] = {
    "reference (pydicom)": read_reference,
    "fast": read_fast,
    "fast, memo emptied per file": read_fast_cold,
}


def check_identical(files: Sequence[Path]) -> tuple[list[Path], int, int]:
    """Both paths agree on every file. The files they accept (refused ones are left out of the timing), how many
    of those the fast path read itself, and how many it left to the reference path."""
    accepted = []
    before = dicomfile._FAST_PATH.taken, dicomfile._FAST_PATH.fell_back
    for path in files:
        try:
            reference = read_reference(path)
        except dicomfile.InvalidDicom as refusal:
            try:
                read_fast(path)
            except dicomfile.InvalidDicom as fast_refusal:
                if fast_refusal.reason_code is refusal.reason_code:
                    continue
            raise SystemExit(f"the two paths disagree on {path}") from None
        fast = read_fast(path)
        if fast != reference or json.dumps(fast.dataset_json) != json.dumps(reference.dataset_json):
            raise SystemExit(f"the two paths disagree on {path}")
        accepted.append(path)
    return accepted, dicomfile._FAST_PATH.taken - before[0], dicomfile._FAST_PATH.fell_back - before[1]


def time_files(read: Reader, files: Sequence[Path]) -> list[float]:
    times = []
    for path in files:
        start = time.perf_counter()
        read(path)
        times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("files", nargs="*", type=Path, help="DICOM files to read instead of generated ones")
    parser.add_argument("--instances", type=int, default=200, help="generated instances, or files used at most")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds over all files (after one warm-up)")
    parser.add_argument("--size", type=int, default=128, choices=(128, 512), help="rows and columns of instances")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="start no new round after this")
    args = parser.parse_args(argv)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-header-") as folder:
        if args.files:
            files = list(args.files[: args.instances])
            print(f"files: {len(files)} given on the command line")
        else:
            study = InstanceFactory(size=args.size).write_study(Path(folder), instances=args.instances)
            files = list(study.files)
            size_kb = files[0].stat().st_size / 1024
            elements = len(dicomfile.read_header(files[0]).dataset_json)
            print(
                f"files: {len(files)} CT instances from CT_small.dcm, {size_kb:.0f} KB, {elements} top-level attributes"
            )

        accepted, taken, fell_back = check_identical(files)
        print(f"identical outcomes from both paths: {len(files)} of {len(files)} files ({len(accepted)} accepted)")
        print(f"fast path: read {taken} files itself, handed {fell_back} to the reference path (bad or unusual)")
        if not accepted:
            raise SystemExit("no file was accepted: nothing to time")
        files = accepted

        for read in PATHS.values():  # warm-up: imports, pydicom's dictionaries, the page cache, the memo
            time_files(read, files)
        samples: dict[str, list[float]] = {name: [] for name in PATHS}
        started = time.monotonic()
        rounds = 0
        while rounds < args.rounds and time.monotonic() - started < args.max_seconds:
            for name, read in PATHS.items():
                samples[name] += time_files(read, files)
            rounds += 1

    print(f"timed: {rounds} rounds x {len(files)} files per path, paths alternating within each round")
    reference_median = statistics.median(samples["reference (pydicom)"])
    print(f"{'path':<30} {'median/file':>12} {'mean/file':>12} {'speed-up':>9}   goal")
    for name, times in samples.items():
        median = statistics.median(times)
        mean = statistics.fmean(times)
        ratio = reference_median / median
        goal = (
            ""
            if name.startswith("reference")
            else f">= {GOAL_RATIO:.0f}x {'met' if ratio >= GOAL_RATIO else 'NOT met'}"
        )
        print(f"{name:<30} {median * 1e6:>9.0f} us {mean * 1e6:>9.0f} us {ratio:>8.2f}x   {goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
