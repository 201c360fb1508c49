"""Imaging ingest, metadata and memory: our server against Orthanc, side by side on 127.0.0.1.

Run: ``python loadtests/bench_imaging.py [--quick] [--only stow1,stow4,stowbatch,cstore,metadata,memory]``
(``--only orthanc-selfcheck`` / ``telemed-selfcheck`` run a short functional check of one server).

Starts Orthanc from Debian's packages (with its DICOMweb plugin) and ``telemed serve`` as subprocesses, each with
its data in a temp folder, sends both the same generated CT instances and prints instances per second, latency,
each server's CPU time per instance, our ratio and the goal beside each figure (dicom-notes §0): ingest at least
2x Orthanc on every path, study metadata at least 10x faster, and at most 300 MB resident while one 2 GB STOW-RS
request streams in. A trivial endpoint of ours (``/healthz``) is timed in the same run as an anchor for the
machine's speed, and each ingest path is also run against a server that stores nothing (``ceilings.py``: uvicorn
reading the body, a pynetdicom SCP answering Success), printed as the "no-op ceiling" column: what any ingest on
these parts could reach here; and against a "durable floor" (``ceilings.py`` again), which does inline only the
work the issue requires of each instance (header, hash, fsynced file, SQLite index row): what that work costs here.

Every loop has a count and a wall-clock cap; both servers are stopped and the temp folder removed at the end.
Needs: ``apt-get install -y orthanc orthanc-dicomweb dcmtk`` (the script installs nothing; it says what is
missing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from imaging_support import (
    BENCH_ACCOUNTS,
    DICOM_JSON,
    NUMBER_OF_STUDY_RELATED_INSTANCES,
    SCU_AE_TITLE,
    CeilingServer,
    GeneratedStudy,
    InstanceFactory,
    OrthancServer,
    Prerequisites,
    RssSampler,
    Target,
    TelemedServer,
    check_prerequisites,
    cpu_seconds,
    machine_summary,
    multipart_body,
    multipart_length,
    multipart_stream,
    new_boundary,
    peak_rss_kb,
    reset_peak_rss,
    run_storescu,
    stored_count,
    stow_headers,
    tree_rss_kb,
)

INGEST_RATIO_TARGET: Final = 2.0
METADATA_RATIO_TARGET: Final = 10.0
MEMORY_TARGET_MB: Final = 300
#: The unit of the rows that give the server's CPU time per stored instance (user + system, all its threads).
CPU_UNIT: Final = "ms CPU"
KB: Final = 1024 / 1e6  # /proc reports kB (KiB); figures are printed in decimal MB like the request sizes
#: The servers of ceilings.py each STOW-RS measurement also runs against, with what they do.
_STOW_CEILINGS: Final = (
    ("stow", "uvicorn app that only reads the body"),
    ("stow-floor", "durable floor: header, hash, fsynced file, SQLite row, inline"),
)
_CSTORE_CEILINGS: Final = (
    ("cstore", "pynetdicom SCP whose handler only answers Success"),
    ("cstore-floor", "durable floor: pynetdicom SCP, header, hash, fsynced file, SQLite row"),
)
SCENARIOS: Final = ("stow1", "stow4", "stowbatch", "cstore", "metadata", "memory")
SELFCHECKS: Final = ("orthanc-selfcheck", "telemed-selfcheck")


@dataclass(frozen=True)
class Sizes:
    instances: int
    metadata_instances: int
    memory_slices: int
    batch: int
    ingest_cap: float
    memory_cap: float
    warm_repeats: int
    rounds: int


FULL: Final = Sizes(
    instances=1000,
    metadata_instances=500,
    memory_slices=4000,
    batch=50,
    ingest_cap=300,
    memory_cap=1200,
    warm_repeats=5,
    rounds=2,
)
QUICK: Final = Sizes(
    instances=200,
    metadata_instances=200,
    memory_slices=400,
    batch=50,
    ingest_cap=90,
    memory_cap=300,
    warm_repeats=3,
    rounds=1,
)


class Unavailable(Exception):
    """This server cannot run this measurement (an endpoint missing, a tool absent): reported as n/a."""


@dataclass
class Row:
    """One line of the final table; a server's figure is the median of what was recorded for it."""

    scenario: str
    unit: str
    higher_is_better: bool
    target: str = ""
    target_ratio: float | None = None
    note: str = ""
    values: dict[str, list[float]] = field(default_factory=dict)

    def record(self, server: str, value: float | None) -> None:
        if value is not None and value == value:  # NaN: nothing measured
            self.values.setdefault(server, []).append(value)

    def _median(self, server: str) -> float | None:
        values = self.values.get(server)
        return statistics.median(values) if values else None

    @property
    def orthanc(self) -> float | None:
        return self._median("orthanc")

    @property
    def ours(self) -> float | None:
        return self._median("telemed")

    @property
    def ceiling(self) -> float | None:
        return self._median("ceiling")

    @property
    def floor(self) -> float | None:
        return self._median("floor")

    def ratio(self) -> float | None:
        orthanc, ours = self.orthanc, self.ours
        if orthanc is None or ours is None or orthanc <= 0 or ours <= 0:
            return None
        return ours / orthanc if self.higher_is_better else orthanc / ours


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class IngestResult:
    instances: int
    stored: int
    failed: int
    seconds: float
    cpu_seconds: float
    capped: bool
    first_error: str

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        cpu = f"server CPU {self.cpu_seconds * 1000 / max(self.stored, 1):.1f} ms/inst"
        text = f"{self.stored}/{self.instances} stored in {self.seconds:.2f} s = {self.rate:.1f} inst/s, {cpu}"
        if self.failed:
            text += f", {self.failed} FAILED ({self.first_error})"
        if self.capped:
            text += ", stopped at the time cap"
        return text


def _short_error(response: httpx.Response) -> str:
    """``HTTP 404 Not Found`` plus the problem's detail or title (RFC 9457) when the body has one."""
    detail = ""
    with contextlib.suppress(ValueError, AttributeError):
        body = response.json()
        detail = str(body.get("detail") or body.get("title") or "")
    return f"HTTP {response.status_code} {response.reason_phrase} {detail or response.text[:100]}".strip()


def _until(chunks: Iterator[bytes], deadline: float) -> Iterator[bytes]:
    """The chunks, but the upload stops (and the request fails) once the monotonic clock passes ``deadline``."""
    for chunk in chunks:
        if time.monotonic() > deadline:
            raise TimeoutError("the request body was still being sent at the time cap")
        yield chunk


def read_instances(study: GeneratedStudy) -> list[bytes]:
    return [path.read_bytes() for path in study.files]


def stow(target: Target, study: GeneratedStudy, *, per_request: int, clients: int, cap: float) -> IngestResult:
    """STOW-RS the study, ``per_request`` instances per request, from ``clients`` threads with keep-alive."""
    instances = read_instances(study)
    boundary = new_boundary()
    bodies = [
        (multipart_body(instances[i : i + per_request], boundary), len(instances[i : i + per_request]))
        for i in range(0, len(instances), per_request)
    ]  # built before the clock starts, so only the exchange is timed
    headers = {**target.headers(), **stow_headers(boundary)}
    url = f"{target.dicomweb_url}/studies"
    lock = threading.Lock()
    next_index = 0
    stored = failed = 0
    first_error = ""
    deadline = time.monotonic() + cap

    def worker() -> None:
        nonlocal next_index, stored, failed, first_error
        with httpx.Client(headers=headers, timeout=120) as client:
            while time.monotonic() < deadline:
                with lock:
                    index = next_index
                    next_index += 1
                if index >= len(bodies):
                    return
                body, count = bodies[index]
                ok, bad, error = 0, count, ""
                try:
                    response = client.post(url, content=body)
                    if response.status_code in (200, 202):
                        ok, bad = stored_count(response.json())
                        if ok + bad != count:  # a server that answers without the sequences: trust the status
                            ok, bad = (count, 0) if response.status_code == 200 else (ok, count - ok)
                    error = _short_error(response) if bad else ""
                except (httpx.HTTPError, ValueError) as exc:
                    error = f"{type(exc).__name__}: {exc}"
                with lock:
                    stored += ok
                    failed += bad
                    first_error = first_error or error

    cpu_before = cpu_seconds(target.pid)
    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    cpu = cpu_seconds(target.pid) - cpu_before
    capped = next_index < len(bodies)
    return IngestResult(len(instances), stored, failed, seconds, cpu, capped, first_error)


def count_instances(target: Target, study_uid: str) -> int | None:
    """NumberOfStudyRelatedInstances from QIDO-RS, or None when the server cannot say."""
    try:
        response = httpx.get(
            f"{target.dicomweb_url}/studies",
            params={"StudyInstanceUID": study_uid, "includefield": NUMBER_OF_STUDY_RELATED_INSTANCES},
            headers={**target.headers(), "Accept": DICOM_JSON},
            timeout=60,
        )
        if response.status_code == 204:
            return 0
        if response.status_code != 200:
            return None
        studies = response.json()
        if not studies:
            return 0
        value = studies[0].get(NUMBER_OF_STUDY_RELATED_INSTANCES, {}).get("Value", [None])[0]
        return int(value) if value is not None else None
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def wait_for_count(target: Target, study_uid: str, expected: int, cap: float) -> tuple[int | None, float]:
    """Poll QIDO until ``expected`` instances are visible or ``cap`` seconds pass; (last count, waited seconds)."""
    started = time.perf_counter()
    count = count_instances(target, study_uid)
    while count is not None and count < expected and time.perf_counter() - started < cap:
        time.sleep(0.05)
        count = count_instances(target, study_uid)
    return count, time.perf_counter() - started


def probe_dicomweb(target: Target, factory: InstanceFactory, workdir: Path) -> None:
    """A few instances through STOW-RS (also the warm-up); raises Unavailable when the server cannot take them."""
    accounts = [""]
    if isinstance(target, TelemedServer):
        accounts = [target.username, *(a.username for a in BENCH_ACCOUNTS if a.username != target.username)]
    refusals: list[str] = []
    for account in accounts:
        if isinstance(target, TelemedServer) and account != target.username:
            # Our server may let another role store images (a village doctor sends them up): try each account.
            target.username = account
            target.refresh_auth()
        study = factory.write_study(workdir / f"probe-{target.name}-{account}", instances=3, tag="probe")
        result = stow(target, study, per_request=1, clients=1, cap=60)
        if result.stored == 3:
            who = f" as {account}" if account else ""
            say(f"{target.name}: STOW-RS probe stored 3/3{who} ({result.seconds * 1000:.0f} ms)")
            return
        refusals.append(f"{account or target.name}: {(result.first_error or 'nothing stored')[:90]}")
        if "HTTP 403" not in result.first_error:
            break
    raise Unavailable("STOW-RS to /studies: " + "; ".join(refusals))


def anchor(target: Target, path: str, *, count: int, cap: float) -> tuple[float, float]:
    """Requests/s and median latency (ms) of a trivial GET, sequential with keep-alive."""
    latencies: list[float] = []
    deadline = time.monotonic() + cap
    with httpx.Client(headers=target.headers(), timeout=30) as client:
        client.get(f"{target.base_url}{path}")
        started = time.perf_counter()
        while len(latencies) < count and time.monotonic() < deadline:
            before = time.perf_counter()
            response = client.get(f"{target.base_url}{path}")
            latencies.append(time.perf_counter() - before)
            if response.status_code != 200:
                raise Unavailable(f"{path} answered {response.status_code}")
        seconds = time.perf_counter() - started
    return len(latencies) / seconds, statistics.median(latencies) * 1000


@dataclass(frozen=True)
class MetadataResult:
    cold_ms: float
    warm_ms: float
    series_warm_ms: float
    study_items: int
    series_items: int
    study_bytes: int
    #: The attribute tags of one instance (the one with the lowest SOP Instance UID), to compare the two answers.
    sample_tags: frozenset[str]


def _get_metadata(client: httpx.Client, url: str) -> tuple[float, list[dict[str, Any]], int]:
    before = time.perf_counter()
    response = client.get(url)
    elapsed = (time.perf_counter() - before) * 1000
    if response.status_code != 200:
        raise Unavailable(f"GET {url} answered {_short_error(response)}")
    return elapsed, response.json(), len(response.content)


def _sample_tags(items: list[dict[str, Any]]) -> frozenset[str]:
    def sop_uid(item: dict[str, Any]) -> str:
        return str((item.get("00080018") or {}).get("Value", [""])[0])

    if not items:
        return frozenset()
    first: dict[str, Any] = min(items, key=sop_uid)
    return frozenset(first)


def metadata(target: Target, study: GeneratedStudy, *, repeats: int, cap: float) -> MetadataResult:
    """Study-level WADO-RS metadata: the first request after ingest (cold) and the median of later ones (warm)."""
    study_url = f"{target.dicomweb_url}/studies/{study.study_uid}/metadata"
    series_url = f"{target.dicomweb_url}/studies/{study.study_uid}/series/{study.series_uids[0]}/metadata"
    deadline = time.monotonic() + cap
    with httpx.Client(headers={**target.headers(), "Accept": DICOM_JSON}, timeout=cap) as client:
        cold, items, study_bytes = _get_metadata(client, study_url)
        warm: list[float] = []
        while len(warm) < repeats and time.monotonic() < deadline:
            warm.append(_get_metadata(client, study_url)[0])
        series: list[float] = []
        series_items = 0
        while len(series) < repeats and time.monotonic() < deadline:
            elapsed, series_json, _ = _get_metadata(client, series_url)
            series_items = len(series_json)
            series.append(elapsed)
    return MetadataResult(
        cold,
        statistics.median(warm or [cold]),
        statistics.median(series) if series else float("nan"),
        len(items),
        series_items,
        study_bytes,
        _sample_tags(items),
    )


def compare_tags(orthanc: frozenset[str], ours: frozenset[str]) -> None:
    """Which attributes one instance's metadata has on one side only: a faster answer must not be a thinner one."""

    def describe(tags: frozenset[str]) -> str:
        private = sorted(t for t in tags if int(t[3], 16) % 2)  # odd group number: private (PS3.5 §7.8)
        public = sorted(tags - set(private))
        shown = ", ".join(public[:12]) + (" …" if len(public) > 12 else "")
        return f"{len(public)} standard{' (' + shown + ')' if public else ''}, {len(private)} private"

    say(f"  same instance, attributes: Orthanc {len(orthanc)}, telemed {len(ours)}")
    say(f"    only in Orthanc's: {describe(orthanc - ours)}")
    say(f"    only in ours     : {describe(ours - orthanc)}")


# --------------------------------------------------------------------------------------------- the run


class Bench:
    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path, prerequisites: Prerequisites) -> None:
        self.args = args
        self.sizes = sizes
        self.workdir = workdir
        self.prerequisites = prerequisites
        self.report = Report()
        self.factory = InstanceFactory(128)
        self.targets: list[Target] = []
        self.unavailable: dict[str, str] = {}
        #: The servers of ceilings.py (no-op and durable floor), started when first needed (see :meth:`ceiling`).
        self.ceilings: dict[str, CeilingServer | None] = {}

    def ceiling(self, kind: str) -> CeilingServer | None:
        """The ``stow``, ``cstore``, ``stow-floor`` or ``cstore-floor`` server of ceilings.py, or None when it
        would not start (said once)."""
        if kind not in self.ceilings:
            try:
                self.ceilings[kind] = CeilingServer(kind, self.workdir / "ceiling")
            except RuntimeError as exc:
                say(f"  {'floor' if kind.endswith('-floor') else 'ceiling'} : n/a ({exc})")
                self.ceilings[kind] = None
        return self.ceilings[kind]

    def stop_ceilings(self) -> None:
        for server in self.ceilings.values():
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()

    # ---- helpers

    def study_for(self, target: Target, scenario: str, instances: int, per_series: int = 100) -> GeneratedStudy:
        return self.factory.write_study(
            self.workdir / "instances" / scenario / target.name,
            instances=instances,
            per_series=per_series,
            tag=f"{scenario}-{target.name}",
        )

    def ordered_targets(self, round_number: int) -> list[Target]:
        """Alternate which server goes first, so that drift on a shared machine does not favour one of them."""
        return self.targets if round_number % 2 == 0 else list(reversed(self.targets))

    def ingest(self, scenario: str, title: str, *, per_request: int, clients: int) -> None:
        count, rounds = self.sizes.instances, self.sizes.rounds
        say(f"\n[{scenario}] {title}: {count} instances, {per_request}/request, {clients} client(s), {rounds} round(s)")
        row = self.report.add(
            Row(title, "inst/s", True, target=f"≥{INGEST_RATIO_TARGET:g}× Orthanc", target_ratio=INGEST_RATIO_TARGET)
        )
        cpu = self.report.add(Row("  … server CPU per instance", CPU_UNIT, False))
        skip = dict(self.unavailable)
        for round_number in range(rounds):
            for target in self.ordered_targets(round_number):
                if target.name in skip:
                    if round_number == 0:
                        say(f"  {target.name:8}: n/a ({skip[target.name]})")
                    continue
                try:
                    target.refresh_auth()
                    study = self.study_for(target, f"{scenario}-{round_number}", count)
                    result = stow(target, study, per_request=per_request, clients=clients, cap=self.sizes.ingest_cap)
                    visible, _ = wait_for_count(target, study.study_uid, result.stored, cap=30)
                except (httpx.HTTPError, OSError, RuntimeError) as exc:
                    say(f"  {target.name:8}: ERROR {type(exc).__name__}: {exc}")
                    self.report.problems.append(f"{scenario} on {target.name}: {type(exc).__name__}: {exc}")
                    skip[target.name] = "failed before"
                    continue
                say(f"  {target.name:8}: {result.describe()}; QIDO shows {visible}")
                shutil.rmtree(study.files[0].parent, ignore_errors=True)
                if result.stored == 0:
                    skip[target.name] = result.first_error[:90] or "nothing stored"
                    continue
                if result.failed:
                    self.report.problems.append(f"{scenario} on {target.name}: {result.failed} failed")
                row.record(target.name, result.rate)
                cpu.record(target.name, result.cpu_seconds * 1000 / result.stored)
            for kind, what in _STOW_CEILINGS:
                if (ceiling := self.ceiling(kind)) is None:
                    continue
                study = self.study_for(ceiling, f"{scenario}-{round_number}", count)
                result = stow(ceiling, study, per_request=per_request, clients=clients, cap=self.sizes.ingest_cap)
                shutil.rmtree(study.files[0].parent, ignore_errors=True)
                say(f"  {ceiling.name:8}: {result.describe()} ({what})")
                if result.stored:
                    row.record(ceiling.name, result.rate)
                    cpu.record(ceiling.name, result.cpu_seconds * 1000 / result.stored)

    # ---- scenarios

    def run_anchor(self) -> None:
        say("\n[anchor] a trivial GET, 1 client with keep-alive (machine speed, not a goal)")
        count, cap = (500, 5.0) if self.args.quick else (2000, 10.0)
        for target in self.targets:
            path = "/system" if target.name == "orthanc" else "/healthz"
            try:
                rate, median = anchor(target, path, count=count, cap=cap)
            except (Unavailable, httpx.HTTPError) as exc:
                say(f"  {target.name:8}: {path} n/a ({exc})")
                continue
            say(f"  {target.name:8}: GET {path:8} {rate:8.0f} requests/s, median {median:.2f} ms")

    def run_cstore(self) -> None:
        count = self.sizes.instances
        say(
            f"\n[cstore] storescu ({self.prerequisites.storescu_version}), {count} instances, one association, "
            "TCP_NODELAY=1 on both sides"
        )
        ack = self.report.add(
            Row(
                "C-STORE storescu, 1 association",
                "inst/s",
                True,
                target=f"≥{INGEST_RATIO_TARGET:g}× Orthanc",
                target_ratio=INGEST_RATIO_TARGET,
            )
        )
        indexed = self.report.add(
            Row(
                "  … until QIDO shows them all",
                "inst/s",
                True,
                target=f"≥{INGEST_RATIO_TARGET:g}× Orthanc",
                target_ratio=INGEST_RATIO_TARGET,
            )
        )
        cpu_row = self.report.add(Row("  … server CPU per instance", CPU_UNIT, False))
        storescu = self.prerequisites.storescu
        if storescu is None:
            say("  n/a: DCMTK storescu is missing (apt-get install -y dcmtk)")
            return
        ready: list[Target] = []
        for target in self.targets:
            if isinstance(target, TelemedServer):
                say(f"  {target.name:8}: SCU AE {SCU_AE_TITLE}: {target.register_scu(SCU_AE_TITLE)}")
            target.refresh_auth()
            probe = self.study_for(target, "cstore-probe", 3)
            warm = run_storescu(storescu, target, probe.files, timeout=60)
            probe_visible, _ = wait_for_count(target, probe.study_uid, 3, cap=10)
            if warm.returncode != 0 or warm.failures or probe_visible != 3:
                tail = " ".join(warm.output_tail.split())[-200:]
                outcome = f"exit {warm.returncode}, QIDO shows {probe_visible}"
                say(f"  {target.name:8}: n/a (3-instance probe: {outcome}; {tail})")
                continue
            ready.append(target)
        for round_number in range(self.sizes.rounds):
            for target in self.ordered_targets(round_number):
                if target not in ready:
                    continue
                target.refresh_auth()
                study = self.study_for(target, f"cstore-{round_number}", count)
                cpu_before = cpu_seconds(target.pid)
                run = run_storescu(storescu, target, study.files, timeout=self.sizes.ingest_cap)
                visible, waited = wait_for_count(target, study.study_uid, count, cap=min(120.0, self.sizes.ingest_cap))
                cpu = cpu_seconds(target.pid) - cpu_before
                total = run.seconds + waited
                stored = visible or 0
                say(
                    f"  {target.name:8}: storescu done in {run.seconds:.2f} s (exit {run.returncode}, "
                    f"{run.failures} failure lines) = {count / run.seconds:.1f} inst/s; QIDO shows {visible} after "
                    f"{total:.2f} s = {stored / total:.1f} inst/s; server CPU {cpu * 1000 / max(stored, 1):.1f} ms/inst"
                )
                shutil.rmtree(study.files[0].parent, ignore_errors=True)
                if run.returncode != 0 or run.failures:
                    say(f"            storescu said: {' '.join(run.output_tail.split())[-400:]}")
                    self.report.problems.append(f"cstore on {target.name}: storescu exit {run.returncode}")
                if stored == 0:
                    continue
                acknowledged = count if run.returncode == 0 and not run.failures else stored
                ack.record(target.name, acknowledged / run.seconds)
                indexed.record(target.name, stored / total)
                cpu_row.record(target.name, cpu * 1000 / stored)
            for kind, what in _CSTORE_CEILINGS:
                if (ceiling := self.ceiling(kind)) is None:
                    continue
                study = self.study_for(ceiling, f"cstore-{round_number}", count)
                cpu_before = cpu_seconds(ceiling.pid)
                run = run_storescu(storescu, ceiling, study.files, timeout=self.sizes.ingest_cap)
                cpu = cpu_seconds(ceiling.pid) - cpu_before
                shutil.rmtree(study.files[0].parent, ignore_errors=True)
                succeeded = run.returncode == 0 and not run.failures
                say(
                    f"  {ceiling.name:8}: storescu done in {run.seconds:.2f} s (exit {run.returncode}, {run.failures}"
                    f" failure lines) = {count / run.seconds:.1f} inst/s; server CPU {cpu * 1000 / count:.1f} ms/inst"
                    f" ({what})"
                )
                if succeeded:
                    ack.record(ceiling.name, count / run.seconds)
                    cpu_row.record(ceiling.name, cpu * 1000 / count)

    def run_metadata(self) -> None:
        count = self.sizes.metadata_instances
        say(f"\n[metadata] WADO-RS /studies/{{uid}}/metadata of a {count}-instance study (series of 100)")
        cold = self.report.add(
            Row(
                f"study metadata ({count} inst), cold",
                "ms",
                False,
                target=f"≥{METADATA_RATIO_TARGET:g}× faster",
                target_ratio=METADATA_RATIO_TARGET,
            )
        )
        warm = self.report.add(
            Row(
                f"study metadata ({count} inst), warm",
                "ms",
                False,
                target=f"≥{METADATA_RATIO_TARGET:g}× faster",
                target_ratio=METADATA_RATIO_TARGET,
            )
        )
        series = self.report.add(Row("series metadata (100 inst), warm", "ms", False, target="< 50 ms (notes)"))

        sample_tags: dict[str, frozenset[str]] = {}
        for target in self.targets:
            if target.name in self.unavailable:
                say(f"  {target.name:8}: n/a ({self.unavailable[target.name]})")
                continue
            try:
                target.refresh_auth()
                study = self.study_for(target, "metadata", count)
                loaded = stow(target, study, per_request=self.sizes.batch, clients=1, cap=self.sizes.ingest_cap)
                if loaded.stored != count:
                    raise Unavailable(f"loading the study stored {loaded.stored}/{count}: {loaded.first_error}")
                result = metadata(target, study, repeats=self.sizes.warm_repeats, cap=120)
            except Unavailable as exc:
                say(f"  {target.name:8}: n/a ({exc})")
                continue
            except (httpx.HTTPError, ValueError) as exc:
                say(f"  {target.name:8}: ERROR {type(exc).__name__}: {exc}")
                self.report.problems.append(f"metadata on {target.name}: {exc}")
                continue
            complete = "" if result.study_items == count else f" — INCOMPLETE: {result.study_items} of {count}"
            say(
                f"  {target.name:8}: cold {result.cold_ms:.1f} ms, warm {result.warm_ms:.1f} ms "
                f"({result.study_items} instances, {result.study_bytes / 1e6:.2f} MB){complete}; series of "
                f"{result.series_items}: {result.series_warm_ms:.1f} ms"
            )
            if complete:
                self.report.problems.append(f"metadata on {target.name}{complete}")
            sample_tags[target.name] = result.sample_tags
            values = (result.cold_ms, result.warm_ms, result.series_warm_ms)
            for row, value in zip((cold, warm, series), values, strict=True):
                row.record(target.name, value)
        if len(sample_tags) == 2:
            compare_tags(sample_tags["orthanc"], sample_tags["telemed"])

    def run_memory(self) -> None:
        slices = self.sizes.memory_slices
        size_mb = slices * 512 * 512 * 2 / 1e6
        say(
            f"\n[memory] one STOW-RS request of {slices} CT slices 512×512 16-bit (≈{size_mb:,.0f} MB), streamed "
            "from disk; peak resident memory of the server process"
        )
        title = f"peak RSS, one {size_mb:,.0f} MB STOW"
        row = self.report.add(Row(title, "MB", False, target=f"≤ {MEMORY_TARGET_MB} MB"))
        targets = [t for t in self.targets if isinstance(t, TelemedServer) or self.args.memory_orthanc]
        if not any(isinstance(t, TelemedServer) for t in targets):
            say("  telemed : n/a (not started)")
        folder = self.workdir / "instances" / "memory"
        big: GeneratedStudy | None = None
        for target in targets:
            if target.name in self.unavailable:
                say(f"  {target.name:8}: n/a ({self.unavailable[target.name]})")
                continue
            if big is None:
                started = time.perf_counter()
                big = InstanceFactory(512).write_study(folder, instances=slices, per_series=slices, tag="memory")
                took = time.perf_counter() - started
                say(f"  generated {slices} files, {big.total_bytes / 1e6:,.0f} MB, in {took:.1f} s")
            else:  # the same files again need new UIDs; only the UIDs change, not the sizes
                shutil.rmtree(folder, ignore_errors=True)
                big = InstanceFactory(512).write_study(folder, instances=slices, per_series=slices, tag="memory")
            peak_mb = self.memory_one(target, big)
            row.record(target.name, peak_mb)
            if peak_mb is None and target.name == "telemed":
                row.note = "request did not fully succeed"
        shutil.rmtree(folder, ignore_errors=True)

    def memory_one(self, target: Target, big: GeneratedStudy) -> float | None:
        """Stream ``big`` in one request and return the server's peak RSS in MB (None when the request failed)."""
        target.refresh_auth()
        slices = len(big.files)
        boundary = new_boundary()
        length = multipart_length(big.files, boundary)
        headers = {**target.headers(), **stow_headers(boundary), "Content-Length": str(length)}
        idle_kb = tree_rss_kb(target.pid)
        hwm_reset = reset_peak_rss(target.pid)
        cpu_before = cpu_seconds(target.pid)
        status, stored, failed, error = 0, 0, 0, ""
        with RssSampler(target.pid) as sampler:
            started = time.perf_counter()
            try:
                response = httpx.post(
                    f"{target.dicomweb_url}/studies",
                    content=_until(multipart_stream(big.files, boundary), time.monotonic() + self.sizes.memory_cap),
                    headers=headers,
                    timeout=httpx.Timeout(self.sizes.memory_cap, connect=10),
                )
                status = response.status_code
                if status in (200, 202):
                    stored, failed = stored_count(response.json())
                else:
                    error = response.text[:200]
            except (httpx.HTTPError, ValueError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
        cpu = cpu_seconds(target.pid) - cpu_before
        visible, _ = wait_for_count(target, big.study_uid, slices, cap=120)
        hwm_kb = peak_rss_kb(target.pid)
        peak_kb = max(sampler.peak_kb, hwm_kb if hwm_reset else 0)
        say(
            f"  {target.name:8}: HTTP {status} in {seconds:.1f} s ({length / 1e6 / seconds:.0f} MB/s), response "
            f"lists {stored} stored / {failed} failed, QIDO shows {visible}; server CPU {cpu:.1f} s"
        )
        if error:
            say(f"            error: {error}")
            self.report.problems.append(f"memory STOW on {target.name}: HTTP {status} {error}")
        if hwm_reset:
            hwm_text = f"VmHWM {hwm_kb * KB:.0f} MB (reset just before the request)"
        else:
            hwm_text = f"VmHWM {hwm_kb * KB:.0f} MB since start (could not reset it)"
        say(
            f"  {target.name:8}: RSS idle {idle_kb * KB:.0f} MB, sampled peak {sampler.peak_kb * KB:.0f} MB "
            f"({sampler.samples} samples, process and children), {hwm_text}"
        )
        return peak_kb * KB if status in (200, 202) and visible == slices else None

    def selfcheck(self, target: Target) -> bool:
        """Store 10 instances by STOW-RS and 10 by C-STORE, then read them back by QIDO and WADO-RS metadata."""
        say(f"\n[selfcheck] {target.label}")
        ok = True

        def check(name: str, passed: bool, detail: str) -> None:
            nonlocal ok
            ok = ok and passed
            say(f"  {'PASS' if passed else 'FAIL'} {name}: {detail}")

        study = self.study_for(target, "selfcheck", 20, per_series=10)
        first = GeneratedStudy(study.study_uid, study.series_uids, study.files[:10])
        second = GeneratedStudy(study.study_uid, study.series_uids, study.files[10:])
        try:
            result = stow(target, first, per_request=1, clients=1, cap=60)
            check("STOW-RS 10 instances", result.stored == 10 and not result.failed, result.describe())
            if self.prerequisites.storescu is None:
                check("C-STORE 10 instances", False, "DCMTK storescu missing")
            else:
                if isinstance(target, TelemedServer):
                    say(f"  info SCU AE {SCU_AE_TITLE}: {target.register_scu(SCU_AE_TITLE)}")
                run = run_storescu(self.prerequisites.storescu, target, second.files, timeout=60)
                check(
                    "C-STORE 10 instances",
                    run.returncode == 0 and not run.failures,
                    f"exit {run.returncode} in {run.seconds:.2f} s, {run.failures} failure lines",
                )
            visible, _ = wait_for_count(target, study.study_uid, 20, cap=30)
            check("QIDO-RS count", visible == 20, f"NumberOfStudyRelatedInstances = {visible}")
            meta = metadata(target, study, repeats=1, cap=60)
            check("WADO-RS study metadata", meta.study_items == 20, f"{meta.study_items} items, {meta.warm_ms:.1f} ms")
            check("WADO-RS series metadata", meta.series_items == 10, f"{meta.series_items} items")
        except (Unavailable, httpx.HTTPError, ValueError) as exc:
            check("reachable", False, f"{type(exc).__name__}: {exc}")
        return ok


# --------------------------------------------------------------------------------------------- table


def _value(value: float | None, unit: str) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:,.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"


def _beside(value: float | None, row: Row) -> str:
    """A ceiling's or the floor's figure, with its ratio to Orthanc's."""
    if value is None:
        return ""
    text = _value(value, row.unit)
    if row.orthanc:
        ratio = value / row.orthanc if row.higher_is_better or row.unit == CPU_UNIT else row.orthanc / value
        text += f" ({ratio:.2f}×)"
    return text


def print_table(report: Report, orthanc_label: str) -> None:
    headers = (
        "measurement", orthanc_label, "telemed", "ratio", "goal", "verdict", "no-op ceiling (ratio)",
        "durable floor (ratio)",
    )  # fmt: skip
    lines: list[tuple[str, ...]] = []
    for row in report.rows:
        ratio = row.ratio()
        ratio_text = "n/a"
        if ratio is not None:
            ratio_text = f"{ratio:.2f}×" + ("" if row.higher_is_better else " faster")
        if row.unit == CPU_UNIT:
            # ours over Orthanc's: with both cores busy, instances/s is about cores ÷ CPU per instance
            ratio_text = "n/a" if ratio is None else f"{1 / ratio:.2f}× Orthanc's"
        if row.unit == "MB":
            ratio_text = "—" if ratio is None else f"{ratio:.2f}× less"
            verdict = "n/a" if row.ours is None else ("meets" if row.ours <= MEMORY_TARGET_MB else "MISSES")
        elif row.target_ratio is not None:
            verdict = "n/a" if ratio is None else ("meets" if ratio >= row.target_ratio else "MISSES")
        elif row.scenario.startswith("series metadata"):
            verdict = "n/a" if row.ours is None or row.ours != row.ours else ("meets" if row.ours < 50 else "MISSES")
        else:
            verdict = ""
        if row.note:
            verdict += f" ({row.note})"
        orthanc = "—" if row.unit == "MB" and row.orthanc is None else _value(row.orthanc, row.unit)
        ours = _value(row.ours, row.unit)
        beside = (_beside(row.ceiling, row), _beside(row.floor, row))
        lines.append((row.scenario, orthanc, ours, ratio_text, row.target, verdict, *beside))
    widths = [max(len(line[i]) for line in [headers, *lines]) for i in range(len(headers))]
    say("")
    say("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    say("  ".join("-" * w for w in widths))
    for line in lines:
        cells = (
            cell.ljust(w) if i in (0, 4, 5, 6, 7) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        say("  ".join(cells).rstrip())


# --------------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts for a fast check (200 instances, 200 MB)")
    parser.add_argument("--only", default="", help=f"comma list of {', '.join(SCENARIOS + SELFCHECKS)}")
    parser.add_argument("--instances", type=int, help="instances per ingest measurement (default 1000, quick 200)")
    parser.add_argument("--metadata-instances", type=int, help="size of the metadata study (default 500)")
    parser.add_argument("--memory-slices", type=int, help="512×512 slices in the memory request (default 4000)")
    parser.add_argument("--rounds", type=int, help="rounds per ingest measurement; median shown (default 2)")
    parser.add_argument("--batch", type=int, help="instances per request in the stowbatch measurement (default 50)")
    parser.add_argument(
        "--memory-orthanc", action="store_true", help="send the memory request to Orthanc too (it buffers it all)"
    )
    parser.add_argument("--tmpdir", type=Path, help="where the temp folder goes (default: the system's temp dir)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS) - set(SELFCHECKS))
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS + SELFCHECKS)}")
    args.chosen = chosen
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    base = QUICK if args.quick else FULL

    def bounded(value: int | None, default: int, upper: int) -> int:
        return max(1, min(value if value is not None else default, upper))

    return Sizes(
        instances=bounded(args.instances, base.instances, 20_000),
        metadata_instances=bounded(args.metadata_instances, base.metadata_instances, 5_000),
        memory_slices=bounded(args.memory_slices, base.memory_slices, 8_000),
        batch=bounded(args.batch, base.batch, 500),
        ingest_cap=base.ingest_cap,
        memory_cap=base.memory_cap,
        warm_repeats=base.warm_repeats,
        rounds=bounded(args.rounds, base.rounds, 10),
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> Any:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = sizes_for(args)
    chosen: list[str] = args.chosen
    need_orthanc = any(name not in ("memory", "telemed-selfcheck") for name in chosen) or (
        args.memory_orthanc and "memory" in chosen
    )
    need_ours = any(name != "orthanc-selfcheck" for name in chosen)
    need_storescu = any(name in ("cstore", "orthanc-selfcheck", "telemed-selfcheck") for name in chosen)
    prerequisites = check_prerequisites(need_orthanc=need_orthanc, need_storescu=need_storescu)
    if prerequisites.missing:
        say("missing prerequisites (this script installs nothing):")
        for item in prerequisites.missing:
            say(f"  - {item}")
        return 2
    signal.signal(signal.SIGTERM, _raise_interrupt)

    workdir = Path(tempfile.mkdtemp(prefix="bench-imaging-", dir=args.tmpdir))
    bench = Bench(args, sizes, workdir, prerequisites)
    orthanc_label = "Orthanc"
    exit_code = 0
    started = time.perf_counter()
    try:
        say(f"imaging benchmark{' (quick)' if args.quick else ''}: {', '.join(chosen)}")
        say(f"machine: {machine_summary(workdir)}")
        if need_orthanc:
            orthanc = OrthancServer(prerequisites, workdir / "orthanc")
            bench.targets.append(orthanc)
            orthanc_label = orthanc.label
            say(
                f"orthanc: {orthanc.label}, HTTP {orthanc.http_port}, "
                f"DICOM {orthanc.dicom_port}, SQLite index, SyncStorageArea default (on), TcpNoDelay, KeepAlive"
            )
        if need_ours:
            ours = TelemedServer(workdir / "telemed")
            bench.targets.append(ours)
            say(
                f"telemed: python -m telemed serve, HTTP {ours.http_port}, DICOM {ours.dicom_port}, SQLite, "
                f"files under {ours.data_dir}, first account {ours.username}"
            )
        if need_storescu:
            say(f"storescu: {prerequisites.storescu} ({prerequisites.storescu_version}), TCP_NODELAY=1")
        for target in bench.targets:
            try:
                probe_dicomweb(target, bench.factory, workdir / "instances")
            except Unavailable as exc:
                bench.unavailable[target.name] = str(exc)
                say(f"{target.name}: DICOMweb not usable: {exc}")

        for name in chosen:
            if name in SELFCHECKS:
                target_name = name.removesuffix("-selfcheck")
                target = next(t for t in bench.targets if t.name == target_name)
                if not bench.selfcheck(target):
                    exit_code = 1
        measured = [name for name in chosen if name in SCENARIOS]
        if measured and need_ours:
            bench.run_anchor()
        for name in measured:
            if name == "stow1":
                bench.ingest(name, "STOW-RS, 1 client, 1 inst/request", per_request=1, clients=1)
            elif name == "stow4":
                bench.ingest(name, "STOW-RS, 4 clients, 1 inst/request", per_request=1, clients=4)
            elif name == "stowbatch":
                bench.ingest(name, f"STOW-RS, 1 client, {sizes.batch} inst/request", per_request=sizes.batch, clients=1)
            elif name == "cstore":
                bench.run_cstore()
            elif name == "metadata":
                bench.run_metadata()
            elif name == "memory":
                bench.run_memory()
        if bench.report.rows:
            print_table(bench.report, orthanc_label)
        for problem in bench.report.problems:
            say(f"problem: {problem}")
        summary = f"\ntotal {time.perf_counter() - started:.0f} s."
        if measured:
            summary += (
                f" Ingest figures are medians of {sizes.rounds} round(s), servers alternating first; stores grow"
                " across measurements (the same for both servers). Server CPU per instance is user + system time of"
                " all the server's threads: where the machine's cores are all busy (several clients, or storescu"
                " and the server on one machine), instances/s is bounded by cores ÷ CPU per instance, so twice"
                " Orthanc's rate needs about half its CPU per instance."
            )
        say(summary)
    except KeyboardInterrupt:
        say("interrupted")
        exit_code = 130
    except RuntimeError as exc:  # a server that would not start, a failed migration or sign-in
        say(f"error: {exc}")
        exit_code = 1
    finally:
        bench.stop_ceilings()
        for target in reversed(bench.targets):
            with contextlib.suppress(Exception):
                target.stop()
        if os.environ.get("BENCH_KEEP_TMP"):
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
