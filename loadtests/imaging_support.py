"""Helpers for ``bench_imaging.py``: prerequisites, test instances, streamed STOW bodies, and the two servers
(Orthanc from Debian and ``telemed serve``) run as subprocesses on 127.0.0.1 with everything in a temp folder.

Nothing here installs anything: :func:`check_prerequisites` only says what is missing and how to get it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
LOOPBACK: Final = "127.0.0.1"
DICOM_MEDIA_TYPE: Final = "application/dicom"
DICOM_JSON: Final = "application/dicom+json"
SCU_AE_TITLE: Final = "BENCHSCU"
ORTHANC_AE_TITLE: Final = "ORTHANC"
BENCH_PASSWORD: Final = "Bench-Passw0rd!2026"
ORTHANC_PLUGIN_CANDIDATES: Final = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
NUMBER_OF_STUDY_RELATED_INSTANCES: Final = "00201208"


# --------------------------------------------------------------------------------------------- prerequisites


@dataclass
class Prerequisites:
    orthanc: Path | None = None
    orthanc_version: str = ""
    dicomweb_plugin: Path | None = None
    storescu: Path | None = None
    storescu_version: str = ""
    missing: list[str] = field(default_factory=list)


def _dcmtk_version(binary: Path) -> str:
    """The DCMTK version line, or "" when ``binary`` is not DCMTK's (pynetdicom installs a ``storescu`` too)."""
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"\$dcmtk: (\S+) v(\S+)", out.stdout + out.stderr)
    return f"dcmtk {match.group(2)}" if match else ""


def _find_storescu() -> tuple[Path | None, str]:
    # /usr/bin first: a Python environment's PATH may put pynetdicom's own `storescu` script ahead of DCMTK's.
    candidates = [Path("/usr/bin/storescu"), Path("/usr/local/bin/storescu")]
    found = shutil.which("storescu")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and (version := _dcmtk_version(candidate)):
            return candidate, version
    return None, ""


def _find_dicomweb_plugin() -> Path | None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        listing = subprocess.run(
            ["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        paths = [Path(line) for line in listing.splitlines() if re.search(r"libOrthancDicomWeb\.so", line)]
        # Orthanc's plugin folder holds the unversioned name; prefer it, then any real file.
        for path in sorted(paths, key=lambda p: (not str(p).startswith("/usr/share/orthanc/plugins"), str(p))):
            if path.is_file():
                return path
    return next((path for path in ORTHANC_PLUGIN_CANDIDATES if path.is_file()), None)


def check_prerequisites(*, need_orthanc: bool, need_storescu: bool) -> Prerequisites:
    found = Prerequisites()
    for candidate in (shutil.which("Orthanc"), "/usr/sbin/Orthanc"):
        if candidate and Path(candidate).is_file():
            found.orthanc = Path(candidate)
            break
    if found.orthanc is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            out = subprocess.run(
                [str(found.orthanc), "--version"], capture_output=True, text=True, timeout=10, check=False
            )
            found.orthanc_version = (out.stdout.splitlines() or [""])[0].strip()
    found.dicomweb_plugin = _find_dicomweb_plugin()
    found.storescu, found.storescu_version = _find_storescu()
    if need_orthanc and found.orthanc is None:
        found.missing.append("Orthanc (Debian: apt-get install -y orthanc orthanc-dicomweb)")
    if need_orthanc and found.dicomweb_plugin is None:
        found.missing.append("Orthanc DICOMweb plugin (Debian: apt-get install -y orthanc-dicomweb)")
    if need_storescu and found.storescu is None:
        found.missing.append("DCMTK storescu (Debian: apt-get install -y dcmtk)")
    for module in ("pydicom", "httpx", "telemed"):
        try:
            __import__(module)
        except ImportError:
            found.missing.append(f"Python package {module} (pip install -e '.[dev]' in the repository)")
    return found


def machine_summary(path: Path) -> str:
    fs_type = "?"
    with contextlib.suppress(OSError):
        best = ""
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, fs_type = parts[1], parts[2]
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
        f"temp data in {path} ({fs_type})"
    )


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback (all held open at once so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


# --------------------------------------------------------------------------------------------- instances


@dataclass(frozen=True)
class GeneratedStudy:
    study_uid: str
    series_uids: tuple[str, ...]
    files: tuple[Path, ...]

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


class InstanceFactory:
    """CT Image Storage instances derived from pydicom's ``CT_small.dcm`` (128x128 16-bit, Explicit VR LE), as in
    the measurements of dicom-notes §0; ``size=512`` tiles its pixels to a real-size 512x512 slice (0.5 MB).

    Each call makes fresh UIDs, so every server and every run stores instances it has never seen.
    """

    def __init__(self, size: int = 128) -> None:
        import pydicom
        from pydicom.data import get_testdata_file

        template_path = get_testdata_file("CT_small.dcm")
        if template_path is None:
            raise RuntimeError("pydicom's test file CT_small.dcm is missing")
        ds = pydicom.dcmread(template_path)
        if size != ds.Rows:
            ds.PixelData = _tile_pixels(bytes(ds.PixelData), ds.Rows, ds.Columns, size)
            ds.Rows = ds.Columns = size
        ds.PatientName = "Bench^CT"
        ds.SpecificCharacterSet = "ISO_IR 100"
        self.size = size
        self._template = ds

    def write_study(self, directory: Path, *, instances: int, per_series: int = 100, tag: str = "") -> GeneratedStudy:
        from pydicom.uid import generate_uid

        ds = self._template
        directory.mkdir(parents=True, exist_ok=True)
        study_uid = str(generate_uid())
        series_uids: list[str] = []
        files: list[Path] = []
        ds.StudyInstanceUID = study_uid
        ds.PatientID = f"BENCH-{tag or uuid.uuid4().hex[:8]}"
        ds.AccessionNumber = uuid.uuid4().hex[:16]
        for number in range(instances):
            if number % per_series == 0:
                series_uids.append(str(generate_uid()))
                ds.SeriesInstanceUID = series_uids[-1]
                ds.SeriesNumber = len(series_uids)
            sop_uid = generate_uid()
            ds.SOPInstanceUID = sop_uid
            ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
            ds.InstanceNumber = number % per_series + 1
            ds.ImagePositionPatient = [-158.0, -179.0, -5.0 * (number % per_series)]
            path = directory / f"{number:05d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        return GeneratedStudy(study_uid, tuple(series_uids), tuple(files))


def _tile_pixels(pixels: bytes, rows: int, cols: int, size: int) -> bytes:
    """A ``size`` x ``size`` 16-bit image made by repeating the source image (which keeps its CT-like values)."""
    row_bytes = cols * 2
    out = bytearray()
    for row in range(size):
        source = pixels[(row % rows) * row_bytes : (row % rows + 1) * row_bytes]
        line = source * (size // cols + 1)
        out += line[: size * 2]
    return bytes(out)


# --------------------------------------------------------------------------------------------- multipart


def new_boundary() -> str:
    return f"bench-{uuid.uuid4().hex}"


def stow_headers(boundary: str) -> dict[str, str]:
    return {
        "Content-Type": f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}',
        "Accept": DICOM_JSON,
    }


def _part_head(boundary: str) -> bytes:
    return f"--{boundary}\r\nContent-Type: {DICOM_MEDIA_TYPE}\r\n\r\n".encode("ascii")


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode("ascii")


def multipart_body(instances: Sequence[bytes], boundary: str) -> bytes:
    """A STOW-RS body in memory (PS3.18 §10.5, RFC 2387), for requests of a few small instances."""
    head = _part_head(boundary)
    return b"".join(head + body + b"\r\n" for body in instances) + _closing(boundary)


def multipart_length(files: Sequence[Path], boundary: str) -> int:
    overhead = len(_part_head(boundary)) + 2
    return sum(path.stat().st_size + overhead for path in files) + len(_closing(boundary))


def multipart_stream(files: Iterable[Path], boundary: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The same body read from disk chunk by chunk: gigabytes leave the client in constant memory."""
    head = _part_head(boundary)
    for path in files:
        yield head
        with path.open("rb") as file:
            while block := file.read(chunk_size):
                yield block
        yield b"\r\n"
    yield _closing(boundary)


def stored_count(response_json: Any) -> tuple[int, int]:
    """(stored, failed) from a STOW-RS response (PS3.18 §10.5.3: ReferencedSOPSequence / FailedSOPSequence)."""
    if isinstance(response_json, list):
        response_json = response_json[0] if response_json else {}
    if not isinstance(response_json, dict):
        return 0, 0

    def items(tag: str) -> int:
        element = response_json.get(tag) or {}
        return len(element.get("Value") or []) if isinstance(element, dict) else 0

    return items("00081199"), items("00081198")


# --------------------------------------------------------------------------------------------- processes


def _stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _spawn(
    command: Sequence[str], log_path: Path, *, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A server subprocess with its output appended to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(list(command), stdout=log, stderr=log, env=env, cwd=cwd)


def _wait_until(
    process: subprocess.Popen[bytes], what: str, ready: Callable[[], bool], log_path: Path, timeout: float
) -> None:
    """Poll ``ready()`` until it is true; a process that exits first fails with the tail of its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what}: process exited early:\n{log_path.read_text(errors='replace')[-3000:]}")
        if ready():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s")


def _wait_http(process: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 60) -> None:
    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=1).status_code == 200
        return False

    _wait_until(process, url, answers, log_path, timeout)


def _wait_tcp(process: subprocess.Popen[bytes], port: int, log_path: Path, timeout: float = 60) -> None:
    def accepts() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
            return True
        return False

    _wait_until(process, f"port {port}", accepts, log_path, timeout)


class Target:
    """One server under test, as the benchmark sees it."""

    name: str
    label: str
    base_url: str
    dicomweb_url: str
    dicom_port: int
    called_ae: str
    pid: int

    def headers(self) -> dict[str, str]:
        return {}

    def refresh_auth(self) -> None:
        """Get a fresh token where the server needs one (ours: access tokens live 15 minutes)."""

    def stop(self) -> None:
        raise NotImplementedError


class OrthancServer(Target):
    """Orthanc (not the system service) with a generated config: ports on the loopback, storage in ``workdir``."""

    name = "orthanc"

    def __init__(self, prerequisites: Prerequisites, workdir: Path) -> None:
        if prerequisites.orthanc is None or prerequisites.dicomweb_plugin is None:
            raise RuntimeError("Orthanc or its DICOMweb plugin is missing")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_ports(2)
        self.base_url = f"http://{LOOPBACK}:{self.http_port}"
        self.dicomweb_url = f"{self.base_url}/dicom-web"
        self.called_ae = ORTHANC_AE_TITLE
        self.log_path = workdir / "orthanc.log"
        self.config = {
            "Name": "bench-orthanc",
            "StorageDirectory": str(workdir / "storage"),
            "IndexDirectory": str(workdir / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AE_TITLE,
            # Orthanc 1.10.1 has no bind address: it listens on every interface. These keep it to this machine:
            # HTTP answers only loopback clients, and C-STORE is allowed only from our SCU's AE on 127.0.0.1.
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomModalities": {"bench": {"AET": SCU_AE_TITLE, "Host": LOOPBACK, "Port": 104}},
            "Plugins": [str(prerequisites.dicomweb_plugin)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            # The settings the Orthanc Book recommends for throughput (faq/scalability.rst).
            "KeepAlive": True,
            "TcpNoDelay": True,
            "SaveJobs": False,
            "StorageCompression": False,
        }
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        # TCP_NODELAY=1: DCMTK inside Orthanc keeps Nagle on for DIMSE otherwise (dicom-notes §1 "Pitfall").
        env = {**os.environ, "TCP_NODELAY": "1"}
        command = [str(prerequisites.orthanc), str(config_path)]
        self.process: subprocess.Popen[bytes] | None = _spawn(command, self.log_path, env=env, cwd=workdir)
        self.pid = self.process.pid
        try:
            _wait_http(self.process, f"{self.base_url}/system", self.log_path)
            system = httpx.get(f"{self.base_url}/system", timeout=5).json()
            plugin = httpx.get(f"{self.base_url}/plugins/dicom-web", timeout=5)
            if plugin.status_code != 200:
                raise RuntimeError("Orthanc started without its DICOMweb plugin")
            plugin_version = plugin.json().get("Version", "?")
        except BaseException:
            self.stop()
            raise
        self.label = f"Orthanc {system.get('Version', '?')} + DICOMweb {plugin_version}"

    def stop(self) -> None:
        _stop_process(self.process)
        self.process = None


class CeilingServer(Target):
    """A server of ``loadtests/ceilings.py``: ``stow`` or ``cstore`` stores nothing (the runtime's own ceiling),
    ``stow-floor`` or ``cstore-floor`` does only the ingest work the issue requires (the durable floor)."""

    def __init__(self, kind: str, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (port,) = free_ports(1)
        self.kind = kind
        self.floor = kind.endswith("-floor")
        self.name = "floor" if self.floor else "ceiling"
        self.label = f"durable floor {kind.removesuffix('-floor')}" if self.floor else f"no-op {kind}"
        self.base_url = f"http://{LOOPBACK}:{port}"
        self.dicomweb_url = self.base_url
        self.dicom_port = port
        self.called_ae = "CEILING"
        log_path = workdir / f"ceiling-{kind}.log"
        command = [sys.executable, str(REPO_ROOT / "loadtests" / "ceilings.py"), kind, str(port)]
        if self.floor:
            command.append(str(workdir / f"{kind}-data"))
        self.process: subprocess.Popen[bytes] | None = _spawn(command, log_path, cwd=REPO_ROOT)
        self.pid = self.process.pid
        try:
            if kind.startswith("stow"):
                _wait_http(self.process, f"{self.base_url}/", log_path)
            else:
                _wait_tcp(self.process, port, log_path)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _stop_process(self.process)
        self.process = None


@dataclass(frozen=True)
class Account:
    username: str
    role: str
    facility: str


BENCH_ACCOUNTS: Final = (
    Account("bench_rad", "radiologist", "county"),
    Account("bench_vd", "village_doctor", "village"),
    Account("bench_admin", "admin", "county"),
)


async def _seed(database_url: str) -> dict[str, uuid.UUID]:
    """A county hospital and a village clinic with a radiologist, a village doctor and an admin account."""
    from telemed.core.auth import UserAccount
    from telemed.core.db import Database
    from telemed.core.security import hash_password
    from telemed.org.models import Facility, Region

    db = Database(database_url)
    ids = {"county_region": uuid.uuid4(), "village_region": uuid.uuid4(), "county": uuid.uuid4()}
    ids["village"] = uuid.uuid4()
    password_hash = hash_password(BENCH_PASSWORD)
    try:
        async with db.session() as session, session.begin():
            session.add(
                Region(
                    id=ids["county_region"],
                    code="999901",
                    name="基准县",
                    level="county",
                    parent_id=None,
                    path="999901/",
                )
            )
            await session.flush()
            session.add(
                Region(
                    id=ids["village_region"],
                    code="999901101201",
                    name="基准村",
                    level="village",
                    parent_id=ids["county_region"],
                    path="999901/999901101201/",
                )
            )
            await session.flush()
            session.add(
                Facility(
                    id=ids["county"],
                    code="BENCH_COUNTY",
                    name="基准县人民医院",
                    tier="county",
                    kind="bench",
                    region_id=ids["county_region"],
                    parent_id=None,
                    latitude=28.1,
                    longitude=120.3,
                    modalities=["CT"],
                    flags=[],
                    icd10_ranges=[],
                )
            )
            await session.flush()
            session.add(
                Facility(
                    id=ids["village"],
                    code="BENCH_VILLAGE",
                    name="基准村卫生室",
                    tier="village",
                    kind="bench",
                    region_id=ids["village_region"],
                    parent_id=ids["county"],
                    latitude=28.1,
                    longitude=120.3,
                    modalities=[],
                    flags=[],
                    icd10_ranges=[],
                )
            )
            await session.flush()
            for account in BENCH_ACCOUNTS:
                session.add(
                    UserAccount(
                        id=uuid.uuid4(),
                        username=account.username,
                        password_hash=password_hash,
                        display_name=f"基准{account.username}",
                        role=account.role,
                        facility_id=ids[account.facility],
                        disabled=False,
                        failed_attempts=0,
                    )
                )
    finally:
        await db.dispose()
    return ids


class TelemedServer(Target):
    """``python -m telemed serve`` in a subprocess: migrated and seeded first, data in ``workdir``."""

    name = "telemed"

    def __init__(self, workdir: Path, *, username: str = "bench_rad") -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_ports(2)
        self.base_url = f"http://{LOOPBACK}:{self.http_port}"
        self.dicomweb_url = f"{self.base_url}/dicomweb"
        self.label = "telemed"
        self.username = username
        self.log_path = workdir / "telemed.log"
        self.database_url = f"sqlite+aiosqlite:///{(self.data_dir / 'telemed.db').resolve()}"
        self.env = {
            **os.environ,
            "TELEMED_ENVIRONMENT": "test",
            "TELEMED_DATA_DIR": str(self.data_dir),
            "TELEMED_DATABASE_URL": self.database_url,
            "TELEMED_DICOM_PORT": str(self.dicom_port),
            "TELEMED_DICOM_AE_TITLE": "TELEMED",
            "TCP_NODELAY": "1",
        }
        self.env.pop("TELEMED_REDIS_URL", None)
        self.env.pop("TELEMED_STORAGE_URL", None)
        self.called_ae = "TELEMED"
        self.token = ""
        self.process: subprocess.Popen[bytes] | None = None
        migrate = subprocess.run(
            [sys.executable, "-m", "telemed", "migrate"],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if migrate.returncode != 0:
            raise RuntimeError(f"telemed migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        self.ids = asyncio.run(_seed(self.database_url))
        command = [sys.executable, "-m", "telemed", "serve", "--host", LOOPBACK, "--port", str(self.http_port)]
        self.process = _spawn(command, self.log_path, env=self.env, cwd=REPO_ROOT)
        self.pid = self.process.pid
        try:
            _wait_http(self.process, f"{self.base_url}/healthz", self.log_path)
            self.refresh_auth()
        except BaseException:
            self.stop()
            raise

    def login(self, username: str) -> str:
        response = httpx.post(
            f"{self.base_url}/api/v1/auth/token", data={"username": username, "password": BENCH_PASSWORD}, timeout=30
        )
        if response.status_code != 200:
            raise RuntimeError(f"sign-in as {username} failed: {response.status_code} {response.text[:300]}")
        return str(response.json()["access_token"])

    def refresh_auth(self) -> None:
        self.token = self.login(self.username)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def register_scu(self, ae_title: str) -> str:
        """Register the SCU's AE title for C-STORE, where our server asks for it; returns what happened."""
        admin = {"Authorization": f"Bearer {self.login('bench_admin')}"}
        url = f"{self.base_url}/api/v1/imaging/nodes"
        body = {"ae_title": ae_title, "facility_id": str(self.ids["county"]), "description": "bench_imaging storescu"}
        response = httpx.post(url, json=body, headers=admin, timeout=30)
        if response.status_code in (200, 201):
            return "registered"
        if response.status_code == 409:
            return "already registered"
        if response.status_code in (404, 405):
            return "no node registry on this server (none needed, or not built yet)"
        return f"registration answered {response.status_code}: {response.text[:200]}"

    def stop(self) -> None:
        _stop_process(self.process)
        self.process = None


# --------------------------------------------------------------------------------------------- memory


def _status_kb(pid: int, field_name: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    children = [int(c) for c in (task / "children").read_text().split()]
                    found.extend(children)
                    pending.extend(children)
    return found


def tree_rss_kb(pid: int) -> int:
    return sum(_status_kb(p, "VmRSS") for p in [pid, *_descendants(pid)])


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM (Linux ≥ 4.0: write 5 to clear_refs); True when that worked."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_kb(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


class RssSampler:
    """Samples the resident set of a process and its children every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, tree_rss_kb(self.pid))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --------------------------------------------------------------------------------------------- DIMSE


@dataclass(frozen=True)
class StorescuRun:
    seconds: float
    returncode: int
    failures: int
    output_tail: str


def run_storescu(storescu: Path, target: Target, files: Sequence[Path], *, timeout: float) -> StorescuRun:
    """All ``files`` over one association (DCMTK's default), with Nagle off in the SCU (``TCP_NODELAY=1``)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = [str(storescu), "-aet", SCU_AE_TITLE, "-aec", target.called_ae, LOOPBACK, str(target.dicom_port)]
    # Arguments rather than +sd: the file order is fixed and the same for both servers.
    command += [str(path) for path in files]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        seconds = time.perf_counter() - started
        output = done.stdout + done.stderr
        code = done.returncode
    except subprocess.TimeoutExpired as expired:
        seconds = time.perf_counter() - started
        output = f"timed out after {timeout:.0f} s\n{expired.stderr!r}"
        code = -1
    failures = len(re.findall(r"(?i)(store (scu )?failed|status: 0x[a-b0-9]{4}|refused|rejected)", output))
    return StorescuRun(seconds, code, failures, output[-1500:])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live children (threads are counted in their process)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for process in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
    return total / ticks
