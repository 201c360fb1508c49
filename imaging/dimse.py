"""The DICOM listener: C-ECHO, C-STORE and C-FIND (study and series level) SCP on one port (PS3.4 Annexes A, B, C).

pynetdicom is a threaded server (one thread per association); the index lives on the asyncio loop. So the
server runs in a thread of its own, handlers hand their work to the loop with ``run_coroutine_threadsafe`` and wait
for the answer (dicom-notes §5). That wait cannot deadlock: the loop never waits for a handler thread.

* C-STORE data is received into a file (``STORE_RECV_CHUNKED_DATASET``), never decoded into memory, then stored by
  the same ingest path as STOW-RS; the C-STORE-RSP goes out only once the file is durable and indexed, so a
  modality that deletes its copy on success loses nothing.
* Nagle's algorithm is turned off on the listening socket and on every accepted one: with it on, an association
  moves about 10 instances a second on loopback (the delayed-ACK stall measured in dicom-notes §0).
* pynetdicom's two threads per association poll, sleeping a millisecond whenever they find nothing to do; on an
  accepted association they wait for work instead (:class:`_Wakeups`): no thousand wake-ups a second taking the
  GIL from the ingest, and no millisecond waits on a C-STORE's way in and out.
* A calling AE title must be a registered ``dicom_node`` (its facility is the sender); an unknown one is rejected
  with "calling AE title not recognised" (PS3.8 §9.3.4) in production and accepted without a facility elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import select
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, cast

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom import association as pynetdicom_association
from pynetdicom import dul as pynetdicom_dul
from pynetdicom.transport import ThreadedAssociationServer

from imaging import qido, repository
from imaging.config import imaging_settings
from imaging.dicomfile import InvalidDicom
from imaging.errors import FailureReason
from imaging.ingest import (
    RESOURCE_TYPE,
    Outcome,
    Received,
    Sender,
    audit_outcomes,
    read_received,
    refused,
    refused_file,
    store_batch,
    store_blob_now,
)
from telemed.core.audit import AuditAction, AuditActor, AuditEntry
from telemed.core.auth import Principal, Role
from telemed.core.context import AppContext
from telemed.core.uow import UnitOfWork

log = logging.getLogger(__name__)

T = TypeVar("T")

_SUCCESS: Final = 0x0000
_PENDING: Final = 0xFF00
_CANCELLED: Final = 0xFE00
_UNABLE_TO_PROCESS: Final = 0xC000
_OUT_OF_RESOURCES: Final = 0xA700
_NODE_ROLE: Final = "dicom_node"
LISTENER_KEY: Final = "imaging.dicom_listener"
_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
_IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
#: The acceptor's order decides which of the proposed transfer syntaxes is used (PS3.8 §9.3.3.2): explicit VR
#: first (implicit VR loses the VR of private and unknown elements), then the compressed ones (so the sender need
#: not decompress), then the rest.
_PREFERRED_TRANSFER_SYNTAXES: Final = [
    _EXPLICIT_VR_LITTLE_ENDIAN,
    *(uid for uid in ALL_TRANSFER_SYNTAXES if uid not in (_EXPLICIT_VR_LITTLE_ENDIAN, _IMPLICIT_VR_LITTLE_ENDIAN)),
    _IMPLICIT_VR_LITTLE_ENDIAN,
]
# SOP classes (PS3.4 Annex A Verification, C.6.1.1 Patient Root and C.6.2.1 Study Root Query/Retrieve - FIND).
_VERIFICATION: Final = "1.2.840.10008.1.1"
_PATIENT_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.1.1"
_STUDY_ROOT_FIND: Final = "1.2.840.10008.5.1.4.1.2.2.1"
_FIND_KEYS_IGNORED: Final = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The calling peer of one association."""

    ae_title: str
    facility_id: uuid.UUID | None
    address: str | None
    known: bool


class _Server(ThreadedAssociationServer):
    """pynetdicom's server, with the periodic ``gc.collect()`` of its poll loop made rare.

    The base class collects garbage every 60 polls; we poll every 50 ms so that shutdown is quick, which would
    turn that into a full collection every 3 s on the process that also serves HTTP.
    """

    def service_actions(self) -> None:
        self._gc[0] = 0


def _configure_pynetdicom() -> None:
    # Receive C-STORE data sets into a temporary file instead of memory (dicom-notes §5, pitfall 3), and accept
    # storage SOP classes pynetdicom does not know (new modality objects still deserve to be stored).
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    # pynetdicom logs identifiers at DEBUG; patient names must never reach a log (security notes C7).
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


#: pynetdicom's reactor poll: ``DULServiceProvider._run_loop_delay`` and the association reactor's own sleep.
_REACTOR_POLL_SECONDS: Final = 0.001
#: How long an idle reactor of an accepted association waits before looking round again (timers, a stop
#: request): what arrives wakes it at once, so this only bounds how late an ARTIM expiry or the end of the
#: association is noticed.
_IDLE_WAIT_SECONDS: Final = 0.05

#: The wait that replaces a reactor poll, by reactor thread (pynetdicom's DUL and Association are threads).
_WAITS: weakref.WeakKeyDictionary[threading.Thread, Callable[[], None]] = weakref.WeakKeyDictionary()


class _ReactorTime:
    """Stands in for the ``time`` module in pynetdicom's ``dul`` and ``association`` modules: a reactor poll in a
    thread of an association this listener accepted waits for work (:class:`_Wakeups`) instead of sleeping;
    every other use, in every other thread, is the ``time`` module's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        wait = _WAITS.get(threading.current_thread()) if seconds == _REACTOR_POLL_SECONDS else None
        if wait is None:
            time.sleep(seconds)
        else:
            wait()


class _WakingQueue(queue.Queue[Any]):
    """A queue between pynetdicom's two reactor threads whose every put wakes the thread that takes from it."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _Wakeups:
    """The reactors of one accepted association wait for work instead of polling (installed before they start).

    pynetdicom runs two threads per association, and both poll: the DUL thread sleeps 1 ms whenever it found
    nothing to do, the association thread 1 ms before each look for a DIMSE message. On a busy server each of
    those thousand wake-ups a second takes the GIL from the threads doing the work (ingest is CPU-bound here), and
    a C-STORE can wait up to a millisecond when its data arrives, again before its handler runs and again before
    its response goes out.

    Here the DUL thread waits in ``select`` on its socket and on a wake-up socket that every primitive queued for
    sending writes to; the association thread waits on its DIMSE message queue, which every complete message and
    every primitive the DUL passes up (release, abort) wakes. An idle wait ends after ``_IDLE_WAIT_SECONDS`` so
    that everything pynetdicom checks between polls (its timers, a stop request) is still checked; where work is
    already queued, or a wait cannot be made (the connection is closed), the poll is pynetdicom's own sleep.
    """

    def __init__(self, assoc: Any) -> None:
        dul = assoc.dul
        # Only what the waits use is kept: no reference back to the association, which keys the tables it is in.
        self._connection: socket.socket = dul.socket.socket
        self._messages: queue.Queue[Any] = assoc.dimse.msg_queue
        self._events: queue.Queue[Any] = dul.event_queue
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        # Nothing is queued before the reactors start, so the queues can be swapped for waking ones.
        self._to_send = dul.to_provider_queue = _WakingQueue(self._wake_dul)
        self._to_user = dul.to_user_queue = _WakingQueue(self._wake_association)
        _WAITS[dul] = self._wait_for_data
        _WAITS[assoc] = self._wait_for_message
        weakref.finalize(dul, _close_all, self._reader, self._writer)

    def close(self, assoc: Any) -> None:
        """The connection is closed: both threads go back to plain sleeps until pynetdicom stops them."""
        _WAITS.pop(assoc.dul, None)
        _WAITS.pop(assoc, None)
        _close_all(self._reader, self._writer)

    def _wake_dul(self) -> None:
        with contextlib.suppress(OSError):  # a wake-up already pending (buffer full), or the association ended
            self._writer.send(b"\0")

    def _wake_association(self) -> None:
        with self._messages.not_empty:
            self._messages.not_empty.notify_all()

    def _wait_for_data(self) -> None:
        if self._to_send.queue or self._events.queue:
            return  # work is there: look again at once
        try:
            ready, _, _ = select.select([self._connection, self._reader], [], [], _IDLE_WAIT_SECONDS)
        except (OSError, ValueError):  # closed: pynetdicom sees it itself on its next look
            time.sleep(_REACTOR_POLL_SECONDS)
            return
        if self._reader in ready:
            with contextlib.suppress(OSError):
                self._reader.recv(4096)

    def _wait_for_message(self) -> None:
        messages = self._messages
        with messages.not_empty:
            if messages.queue:
                return
            if not self._to_user.queue:
                messages.not_empty.wait(_IDLE_WAIT_SECONDS)
                return
        # A primitive from the DUL that this loop has yet to act on (or never will): poll as pynetdicom does.
        time.sleep(_REACTOR_POLL_SECONDS)


class ReactorWakeups:
    """Puts :class:`_Wakeups` on every association a pynetdicom server accepts: pass :meth:`handlers` with the
    server's event handlers (the DICOM listener does; so does the benchmark's no-op SCP, to stay like ours)."""

    def __init__(self) -> None:
        for module in (pynetdicom_dul, pynetdicom_association):
            if not isinstance(vars(module)["time"], _ReactorTime):
                vars(module)["time"] = _ReactorTime()
        self._installed: weakref.WeakKeyDictionary[Any, _Wakeups] = weakref.WeakKeyDictionary()

    def handlers(self) -> list[tuple[Any, Callable[[Any], None]]]:
        return [(evt.EVT_CONN_OPEN, self.opened), (evt.EVT_CONN_CLOSE, self.closed)]

    def opened(self, event: Any) -> None:
        """EVT_CONN_OPEN: runs in the server's thread before the association's reactors start."""
        try:
            self._installed[event.assoc] = _Wakeups(event.assoc)
        except (AttributeError, OSError):
            log.warning("the association's reactors poll (pynetdicom's own timing)", exc_info=True)

    def closed(self, event: Any) -> None:
        wakeups = self._installed.pop(event.assoc, None)
        if wakeups is not None:
            wakeups.close(event.assoc)


def _close_all(*sockets: socket.socket) -> None:
    for each in sockets:
        each.close()


def _set_nodelay(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DicomListener:
    """One SCP per node, started and stopped with the app."""

    def __init__(self, ctx: AppContext, loop: asyncio.AbstractEventLoop) -> None:
        self.ctx = ctx
        self.loop = loop
        self.settings = imaging_settings(ctx)
        self.ae_title = ctx.settings.dicom_ae_title
        self.port = ctx.settings.dicom_port
        self.host = self.settings.bind_host(ctx.settings)
        self._nodes: weakref.WeakKeyDictionary[Any, NodeInfo] = weakref.WeakKeyDictionary()
        self._ae: AE | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        _configure_pynetdicom()
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = self.settings.dicom_max_associations
        ae.maximum_pdu_size = self.settings.dicom_max_pdu
        ae.require_called_aet = False
        ae.add_supported_context(_VERIFICATION)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, _PREFERRED_TRANSFER_SYNTAXES)
        ae.add_supported_context(_STUDY_ROOT_FIND)
        ae.add_supported_context(_PATIENT_ROOT_FIND)
        wakeups = ReactorWakeups()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            *wakeups.handlers(),  # after Nagle is off: handlers run in the order bound
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
        ]
        server = cast(_Server, ae.make_server((self.host, self.port), evt_handlers=handlers, server_class=_Server))
        _set_nodelay(server.socket)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="dicom-listener", daemon=True
        )
        thread.start()
        self._ae, self._server, self._thread = ae, server, thread
        log.info("DICOM listener started", extra={"ae_title": self.ae_title, "port": self.port})

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        if self._ae is not None:
            self._ae.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._ae = self._server = self._thread = None

    def accepted_sockets(self) -> list[socket.socket]:
        """The sockets of the associations in progress (operations and tests look at their options)."""
        found = []
        for assoc in self._ae.active_associations if self._ae is not None else []:
            sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
            if isinstance(sock, socket.socket):
                found.append(sock)
        return found

    # ---------------------------------------------------------------------------------------- handlers

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the app's loop and wait for it (handlers run in association threads)."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout=self.settings.dicom_handler_timeout_seconds)
        except TimeoutError:
            future.cancel()
            raise

    def _on_connection(self, event: Any) -> None:
        with contextlib.suppress(AttributeError):
            _set_nodelay(event.assoc.dul.socket.socket)

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        address = getattr(assoc.requestor, "address", None)
        try:
            facility_id = self._call(_node_facility(self.ctx, calling))
        except Exception:
            log.exception("looking up a DICOM node failed; the association is rejected (transient)")
            _reject(assoc, 0x02, 0x01, 0x01)
            return
        known = facility_id is not None
        # Read at each association, so that a changed setting applies without a restart.
        if not known and not imaging_settings(self.ctx).accepts_unknown_ae(self.ctx.settings):
            log.warning("association from an unregistered AE title rejected", extra={"calling_ae": calling})
            _reject(assoc, 0x01, 0x01, 0x03)
            return
        self._nodes[assoc] = NodeInfo(calling, facility_id, address, known)

    def _node(self, event: Any) -> NodeInfo:
        found = self._nodes.get(event.assoc)
        if found is None:  # EVT_REQUESTED always runs first; this is only a guard
            calling = str(event.assoc.requestor.ae_title).strip()
            return NodeInfo(calling, None, None, False)
        return found

    def _on_echo(self, event: Any) -> int:
        return _SUCCESS

    def _on_store(self, event: Any) -> int | Dataset:
        node = self._node(event)
        try:
            path = Path(event.dataset_path)
        except AttributeError:
            log.error("C-STORE data set was not received into a file")
            return _OUT_OF_RESOURCES
        # The header is read and the file moved into storage here, in the association's own thread, rather than
        # in threads of the loop's pool: two hand-overs fewer for every instance.
        try:
            read = _read_received(path, self.ctx.settings.default_dicom_charset)
            if isinstance(read, Received):
                read = store_blob_now(self.ctx.storage, read)
            outcome = self._call(store_received_file(self.ctx, read, node))
        except Exception:
            # A blob stored above is not deleted here: after a timeout, store_batch deletes it unless its row was
            # committed; if the work never reached the loop, `telemed imaging repair` removes it (no row names it).
            log.exception("C-STORE could not be stored")
            return _status(_OUT_OF_RESOURCES, "imaging.storage_failed")
        if outcome.stored:
            return _SUCCESS
        return _status(int(outcome.failure or _UNABLE_TO_PROCESS), outcome.reason_code or "")

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        node = self._node(event)
        try:
            identifier: Dataset = event.identifier
            level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
        except Exception:
            yield _UNABLE_TO_PROCESS, None
            return
        if level not in ("STUDY", "SERIES"):
            yield _UNABLE_TO_PROCESS, _comment("Only STUDY and SERIES level queries are supported")
            return
        try:
            matches = self._call(find_matches(self.ctx, node, level, identifier))
        except Exception:
            log.exception("C-FIND failed")
            yield _UNABLE_TO_PROCESS, None
            return
        for match in matches:
            if event.is_cancelled:
                yield _CANCELLED, None
                return
            yield _PENDING, match
        yield _SUCCESS, None


def _reject(assoc: Any, result: int, source: int, diagnostic: int) -> None:
    """Send A-ASSOCIATE-RJ and wait until it is out, as pynetdicom's own negotiation does (else the socket may
    close first and the peer sees an abort instead of the reason)."""
    assoc.acse.send_reject(result, source, diagnostic)
    assoc.kill()


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]
    return status


def _comment(text: str) -> Dataset:
    status = Dataset()
    status.ErrorComment = text[:64]
    return status


# ---------------------------------------------------------------------------------------------------------------
# Work done on the loop


async def _node_facility(ctx: AppContext, ae_title: str) -> uuid.UUID | None:
    async with ctx.db.read_session() as session:
        node = await repository.node_by_ae_title(session, ae_title)
    return node.facility_id if node is not None else None


def _actor(node: NodeInfo) -> AuditActor:
    return AuditActor(
        user_id=None,
        role=_NODE_ROLE,
        facility_id=str(node.facility_id) if node.facility_id else None,
        source_ip=node.address,
    )


def _read_received(path: Path, default_charset: str) -> Received | Outcome:
    """The received data set's header and hash (blocking), or the outcome that refuses it."""
    try:
        return read_received(0, path, default_charset=default_charset)
    except InvalidDicom as error:
        return refused_file(0, error)
    except OSError:
        return refused(0, FailureReason.processing_failure, "imaging.read_failed", "Unreadable data set.")


async def store_received_file(ctx: AppContext, read: Received | Outcome, node: NodeInfo) -> Outcome:
    """Store one C-STORE data set (a file pynetdicom received, read by :func:`_read_received`) through the ingest
    path of STOW-RS; a refused one is audited."""
    sender = Sender(source="dimse", facility_id=node.facility_id, calling_ae=node.ae_title[:16])
    async with UnitOfWork(ctx, ctx.db.session, _actor(node)) as uow:
        if isinstance(read, Outcome):
            audit_outcomes(uow, [read], source="dimse", calling_ae=node.ae_title)
            await uow.commit()
            return read

        def audit(outcomes: list[Outcome]) -> None:
            audit_outcomes(uow, outcomes, source="dimse", calling_ae=node.ae_title)

        return (await store_batch(uow, [read], sender, audit=audit))[0]


def _node_principal(node: NodeInfo) -> Principal:
    """A node reads what its facility's clinicians read: the facility scope of its facility."""
    return Principal(
        user_id=uuid.UUID(int=0),
        username=f"dicom:{node.ae_title}",
        display_name=node.ae_title,
        role=Role.radiologist,
        facility_id=node.facility_id,
        session_id=uuid.UUID(int=0),
    )


def _query_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _find_parameters(identifier: Dataset) -> tuple[list[tuple[str, str]], list[tuple[int, str, str]]]:
    """The identifier as QIDO parameters (matching keys with values) and the return keys (PS3.4 C.4.1.1.3)."""
    params: list[tuple[str, str]] = []
    keys: list[tuple[int, str, str]] = []
    for element in identifier:
        keyword = element.keyword or ""
        if keyword in _FIND_KEYS_IGNORED or element.tag.is_private or element.VR == "SQ":
            continue
        tag = f"{int(element.tag):08X}"
        keys.append((int(element.tag), tag, str(element.VR)))
        value = _query_value(element.value).strip()
        if value:
            params.append((tag, value))
    return params, keys


async def find_matches(ctx: AppContext, node: NodeInfo, level: str, identifier: Dataset) -> list[Dataset]:
    """C-FIND at study or series level (PS3.4 C.6.2), answered from the same index as QIDO-RS."""
    params, keys = _find_parameters(identifier)
    qido_level = qido.Level.study if level == "STUDY" else qido.Level.series
    query = qido.parse_query(params, qido_level, max_results=imaging_settings(ctx).imaging_max_results)
    query.include = {tag for _, tag, _ in keys}
    study_uid = next((value for tag, value in params if tag == "0020000D"), None)
    async with ctx.db.read_session() as session:
        scope: frozenset[uuid.UUID | None]
        if node.facility_id is None:
            scope = frozenset({None})  # an unregistered peer (development) sees only unattributed studies
        elif ctx.scope_resolver is not None:
            scope = frozenset(await ctx.scope_resolver(session, _node_principal(node)))
        else:
            scope = frozenset({node.facility_id})
        if qido_level is qido.Level.study:
            page = await qido.search_studies(session, query, scope, "")
        else:
            page = await qido.search_series(session, query, scope, "", study_pk=None)
    async with UnitOfWork(ctx, ctx.db.session, _actor(node)) as uow:
        uow.audit(
            AuditEntry(
                action=AuditAction.query,
                resource_type=RESOURCE_TYPE,
                resource_id=study_uid if study_uid and len(study_uid) <= 64 else None,
                detail={
                    "source": "dimse",
                    "calling_ae": node.ae_title,
                    "level": qido_level.value,
                    "results": len(page.results),
                    "study_uids": page.study_uids[:200],
                },
            )
        )
        await uow.commit()
    return [_answer(result, keys, level) for result in page.results]


def _answer(result: dict[str, Any], keys: list[tuple[int, str, str]], level: str) -> Dataset:
    """The C-FIND response identifier: every requested key, with the value found or empty (PS3.4 C.4.1.1.3.2)."""
    wanted = {tag: result[tag] for _, tag, _ in keys if tag in result and "Value" in result[tag]}
    answer = Dataset.from_json(wanted) if wanted else Dataset()
    for tag_int, tag, vr in keys:
        if tag not in wanted:
            answer.add_new(tag_int, vr, None)
    answer.QueryRetrieveLevel = level
    answer.SpecificCharacterSet = "ISO_IR 192"
    return answer


async def run_dicom_listener(ctx: AppContext) -> None:
    """Background service: the DICOM listener of this node, for the lifetime of the app.

    With ``uvicorn --workers N`` only the first worker can bind the port (dicom-notes §5, pitfall 5); the others
    log it and serve HTTP only. ``TELEMED_DICOM_PORT=0`` turns the listener off.
    """
    if ctx.settings.dicom_port <= 0:
        return
    listener = DicomListener(ctx, asyncio.get_running_loop())
    try:
        listener.start()
    except OSError as error:
        log.warning(
            "DICOM listener not started: the port is in use (another worker or process has it)",
            extra={"port": listener.port, "error": error.strerror},
        )
        return
    started = time.monotonic()
    ctx.extras[LISTENER_KEY] = listener
    try:
        await asyncio.Event().wait()
    finally:
        ctx.extras.pop(LISTENER_KEY, None)
        await asyncio.to_thread(listener.stop)
        log.info("DICOM listener stopped", extra={"seconds": round(time.monotonic() - started, 1)})
