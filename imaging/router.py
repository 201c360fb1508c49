"""HTTP layer of the imaging domain: DICOMweb (PS3.18) under ``/dicomweb``, WADO-URI at ``/wado``, and the
admin API of DICOM nodes under ``/api/v1/imaging``. Parse, call the service, return."""

from __future__ import annotations

import asyncio
import importlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request, Response, Security
from fastapi.responses import StreamingResponse

from imaging import qido, service, wado
from imaging.errors import BadQuery, BlobMissing, FrameNotFound, ImagingNotFound, NotAcceptable, NotImplementedYet
from imaging.ingest import Outcome
from imaging.repository import StoredInstance
from imaging.schemas import DicomNodeCreate, DicomNodeRead
from telemed.core.auth import Principal, Role
from telemed.core.deps import (
    CurrentPrincipal,
    UoW,
    bearer_scheme,
    current_principal,
    request_unit_of_work,
    require_roles,
)
from telemed.core.errors import ProblemError
from telemed.core.plugins import HotRoute
from telemed.core.storage import BlobNotFound, BlobStorage
from telemed.core.uow import UnitOfWork

DICOMWEB_PREFIX: Final = "/dicomweb"
NO_STORE: Final = {"Cache-Control": "no-store"}
_LAYOUTS_KEY: Final = "imaging.pixel_layouts"

dicomweb = APIRouter(prefix=DICOMWEB_PREFIX, tags=["dicomweb"])
wado_uri = APIRouter(tags=["dicomweb"])
api = APIRouter(prefix="/api/v1/imaging", tags=["imaging"])
AdminPrincipal = Annotated[Principal, Depends(require_roles(Role.admin))]


def dicomweb_root(request: Request) -> str:
    return str(request.base_url).rstrip("/") + DICOMWEB_PREFIX


def _json(body: Any, *, status: int = 200, warnings: list[str] | None = None) -> Response:
    headers = dict(NO_STORE)
    if warnings:
        headers["Warning"] = ", ".join(f'299 telemed "{text}"' for text in warnings)
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return Response(content=text, status_code=status, media_type=wado.DICOM_JSON, headers=headers)


# ---------------------------------------------------------------------------------------------------------------
# STOW-RS


def _reference(outcome: Outcome) -> dict[str, Any]:
    return {
        "00081150": qido.element("UI", outcome.sop_class_uid),
        "00081155": qido.element("UI", outcome.sop_instance_uid),
    }


def stow_response(outcomes: list[Outcome], root: str) -> tuple[int, dict[str, Any]]:
    """The Store Instances Response Module (PS3.18 Annex I) and the status of Table 10.5.3-1."""
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    studies = sorted({o.study_uid for o in stored if o.study_uid})
    study_url = f"{root}/studies/{studies[0]}" if len(studies) == 1 else None
    body: dict[str, Any] = {"00081190": qido.element("UR", study_url)}
    if failed:
        items = []
        for outcome in failed:
            item = _reference(outcome)
            item["00081197"] = qido.element("US", int(outcome.failure or 0))
            if outcome.reason_code:
                item["00000902"] = qido.element("LO", outcome.reason_code[:64])  # Error Comment (PS3.7 C.4)
            items.append(dict(sorted(item.items())))
        body["00081198"] = {"vr": "SQ", "Value": items}
    if stored:
        items = []
        for outcome in stored:
            item = _reference(outcome)
            url = f"{root}/studies/{outcome.study_uid}/series/{outcome.series_uid}/instances/{outcome.sop_instance_uid}"
            item["00081190"] = qido.element("UR", url)
            items.append(item)
        body["00081199"] = {"vr": "SQ", "Value": items}
    status = 200 if not failed else 202 if stored else 409
    return status, dict(sorted(body.items()))


async def stow(request: Request) -> Response:
    """``POST /dicomweb/studies[/{study_uid}]``, served as a hot route (``stow_routes``): every STOW-RS request
    comes here without FastAPI's dependency resolution, so the principal and the unit of work are made here."""
    principal = await current_principal(request)
    async with request_unit_of_work(request, principal) as uow:
        result = await service.store_instances(
            uow,
            principal=principal,
            body=request.stream(),
            content_type=request.headers.get("content-type", ""),
            study_uid=request.path_params.get("study_uid"),
        )
    status, body = stow_response(result.outcomes, dicomweb_root(request))
    return _json(body, status=status)


#: The STOW-RS routes as the app matches them, before all others (``DomainPlugin.hot_routes``).
stow_routes: Final = (
    HotRoute(f"{DICOMWEB_PREFIX}/studies", stow, methods=["POST"]),
    HotRoute(f"{DICOMWEB_PREFIX}/studies/{{study_uid}}", stow, methods=["POST"]),
)
# The same two on the router, for the API document (the hot routes above are matched first).
_BEARER: Final = [Security(bearer_scheme)]


@dicomweb.post(
    "/studies", response_class=Response, dependencies=_BEARER, summary="STOW-RS: store instances (PS3.18 §10.5)"
)
async def store_instances(request: Request) -> Response:
    return await stow(request)


@dicomweb.post("/studies/{study_uid}", response_class=Response, dependencies=_BEARER, summary="STOW-RS into one study")
async def store_study_instances(request: Request, study_uid: str) -> Response:
    return await stow(request)


# ---------------------------------------------------------------------------------------------------------------
# QIDO-RS


async def _search(
    uow: UnitOfWork,
    principal: Principal,
    request: Request,
    level: qido.Level,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> Response:
    _accept_json(request)
    result = await service.search(
        uow,
        principal=principal,
        level=level,
        params=request.query_params.multi_items(),
        root=dicomweb_root(request),
        study_uid=study_uid,
        series_uid=series_uid,
    )
    return _json(result.results, warnings=result.warnings)


def _accept_json(request: Request) -> None:
    for media in wado.parse_accept(request.headers.get("accept")):
        if media.essence in (wado.DICOM_JSON, "application/json", "*/*", "application/*"):
            return
    raise NotAcceptable("仅提供 application/dicom+json", "Only application/dicom+json is available")


@dicomweb.get("/studies", response_class=Response, summary="QIDO-RS: search for studies")
async def search_studies(uow: UoW, principal: CurrentPrincipal, request: Request) -> Response:
    return await _search(uow, principal, request, qido.Level.study)


@dicomweb.get("/series", response_class=Response, summary="QIDO-RS: search for series")
async def search_all_series(uow: UoW, principal: CurrentPrincipal, request: Request) -> Response:
    return await _search(uow, principal, request, qido.Level.series)


@dicomweb.get("/instances", response_class=Response, summary="QIDO-RS: search for instances")
async def search_all_instances(uow: UoW, principal: CurrentPrincipal, request: Request) -> Response:
    return await _search(uow, principal, request, qido.Level.instance)


@dicomweb.get("/studies/{study_uid}/series", response_class=Response, summary="QIDO-RS: series of a study")
async def search_series(uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str) -> Response:
    return await _search(uow, principal, request, qido.Level.series, study_uid)


@dicomweb.get("/studies/{study_uid}/instances", response_class=Response, summary="QIDO-RS: instances of a study")
async def search_study_instances(uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str) -> Response:
    return await _search(uow, principal, request, qido.Level.instance, study_uid)


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances",
    response_class=Response,
    summary="QIDO-RS: instances of a series",
)
async def search_series_instances(
    uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str, series_uid: str
) -> Response:
    return await _search(uow, principal, request, qido.Level.instance, study_uid, series_uid)


# ---------------------------------------------------------------------------------------------------------------
# WADO-RS: metadata, from the index


async def _metadata(
    uow: UnitOfWork,
    principal: Principal,
    request: Request,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Response:
    _accept_json(request)
    chunks = await service.metadata(
        uow,
        principal=principal,
        root=dicomweb_root(request),
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
    )

    async def send() -> AsyncIterator[bytes]:
        for chunk in chunks:  # joined in memory already: each step is a few hundred KB of byte copying
            yield chunk

    return StreamingResponse(send(), media_type=wado.DICOM_JSON, headers=dict(NO_STORE))


@dicomweb.get("/studies/{study_uid}/metadata", response_class=Response, summary="WADO-RS: study metadata")
async def study_metadata(uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str) -> Response:
    return await _metadata(uow, principal, request, study_uid)


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/metadata", response_class=Response, summary="WADO-RS: series metadata"
)
async def series_metadata(
    uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str, series_uid: str
) -> Response:
    return await _metadata(uow, principal, request, study_uid, series_uid)


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/metadata",
    response_class=Response,
    summary="WADO-RS: instance metadata",
)
async def instance_metadata(
    uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str, series_uid: str, sop_instance_uid: str
) -> Response:
    return await _metadata(uow, principal, request, study_uid, series_uid, sop_instance_uid)


# ---------------------------------------------------------------------------------------------------------------
# WADO-RS: instances


async def _retrieve(
    uow: UnitOfWork,
    principal: Principal,
    request: Request,
    study_uid: str,
    series_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Response:
    accept = wado.parse_accept(request.headers.get("accept"))
    multipart = wado.choose(accept, wado.DICOM, single_part_allowed=sop_instance_uid is not None)
    found = await service.instances_to_retrieve(
        uow, principal=principal, study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_instance_uid
    )
    storage = uow.ctx.storage
    if not multipart:
        return await _single_file(storage, found[0])
    boundary = wado.new_boundary()
    # Streamed part by part, block by block, from whichever storage holds the files: a study never sits in
    # memory. The first blob is opened before the response starts, so that a missing one is a 503, not a cut.
    body = await wado.start_stream(wado.multipart_instances(storage, found, boundary, dicomweb_root(request)))
    return StreamingResponse(body, media_type=wado.multipart_content_type(boundary, wado.DICOM), headers=NO_STORE)


async def _single_file(storage: BlobStorage, instance: StoredInstance) -> Response:
    """One instance as ``application/dicom``, streamed from storage with its length from the index."""
    media_type = f"{wado.DICOM}; transfer-syntax={instance.transfer_syntax_uid}"
    body = await wado.start_stream(storage.open_chunks(instance.blob_key))
    return StreamingResponse(body, media_type=media_type, headers={**NO_STORE, "Content-Length": str(instance.size)})


@dicomweb.get("/studies/{study_uid}", response_class=Response, summary="WADO-RS: retrieve a study")
async def retrieve_study(uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str) -> Response:
    return await _retrieve(uow, principal, request, study_uid)


@dicomweb.get("/studies/{study_uid}/series/{series_uid}", response_class=Response, summary="WADO-RS: a series")
async def retrieve_series(
    uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str, series_uid: str
) -> Response:
    return await _retrieve(uow, principal, request, study_uid, series_uid)


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}",
    response_class=Response,
    summary="WADO-RS: retrieve an instance",
)
async def retrieve_instance(
    uow: UoW, principal: CurrentPrincipal, request: Request, study_uid: str, series_uid: str, sop_instance_uid: str
) -> Response:
    return await _retrieve(uow, principal, request, study_uid, series_uid, sop_instance_uid)


# ---------------------------------------------------------------------------------------------------------------
# WADO-RS: frames, bulk data, rendered


async def _with_file(storage: BlobStorage, key: str, work: Callable[[Path], Any]) -> Any:
    """Run blocking ``work`` on the instance file: the stored file itself on local storage, a temporary download
    (removed afterwards) on object storage."""
    try:
        async with storage.local_file(key) as path:
            try:
                return await asyncio.to_thread(work, path)
            except FileNotFoundError:  # removed under our feet: 503 if the blob is really gone
                await wado.ensure_blob(storage, key)
                raise
    except BlobNotFound:
        raise BlobMissing() from None


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/frames/{frame_list}",
    response_class=Response,
    summary="WADO-RS: frames (uncompressed, or as stored with transfer-syntax=*)",
)
async def retrieve_frames(
    uow: UoW,
    principal: CurrentPrincipal,
    request: Request,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    frame_list: str,
) -> Response:
    numbers = wado.parse_frame_list(frame_list)
    accept = wado.parse_accept(request.headers.get("accept"))
    multipart = wado.choose(accept, wado.OCTET_STREAM, single_part_allowed=len(numbers) == 1)
    found = await service.instances_to_retrieve(
        uow,
        principal=principal,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        what="frames",
    )
    instance = found[0]
    if instance.number_of_frames < 1:
        raise FrameNotFound()
    layouts: wado.PixelLayoutCache = uow.ctx.extras.setdefault(_LAYOUTS_KEY, wado.PixelLayoutCache())
    known = layouts.get(instance.blob_key)
    if known is not None and wado.is_native(known):
        # The layout of this blob is known (keys are never reused): read just the frames, by byte range.
        ranged = await wado.read_native_frames(uow.ctx.storage, instance.blob_key, known, numbers)
        return _frames_response(ranged, instance.transfer_syntax_uid, multipart)

    def read(path: Path) -> list[bytes]:
        with open(path, "rb") as file:
            layout = layouts.get(instance.blob_key)
            if layout is None:
                layout = wado.pixel_layout(file)
                layouts.put(instance.blob_key, layout)
            return wado.read_frames(file, layout, numbers)

    try:
        frames: list[bytes] = await _with_file(uow.ctx.storage, instance.blob_key, read)
    except (ValueError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise FrameNotFound() from None
    return _frames_response(frames, instance.transfer_syntax_uid, multipart)


def _frames_response(frames: list[bytes], transfer_syntax_uid: str, multipart: bool) -> Response:
    media_type = wado.frame_media_type(transfer_syntax_uid)
    if not multipart:
        return Response(content=frames[0], media_type=media_type, headers=NO_STORE)
    boundary = wado.new_boundary()
    return Response(
        content=wado.multipart_body([(media_type, frame) for frame in frames], boundary),
        media_type=wado.multipart_content_type(boundary, wado.OCTET_STREAM),
        headers=NO_STORE,
    )


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/bulkdata/{bulk_path:path}",
    response_class=Response,
    summary="WADO-RS: bulk data named by a BulkDataURI of the metadata",
)
async def retrieve_bulk_data(
    uow: UoW,
    principal: CurrentPrincipal,
    request: Request,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    bulk_path: str,
) -> Response:
    path = [piece for piece in bulk_path.split("/") if piece]
    if not path or len(path) % 2 == 0 or len(path) > 15:
        raise ImagingNotFound()
    accept = wado.parse_accept(request.headers.get("accept"))
    multipart = wado.choose(accept, wado.OCTET_STREAM, single_part_allowed=True)
    found = await service.instances_to_retrieve(
        uow,
        principal=principal,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        what="bulkdata",
    )

    def read(file_path: Path) -> bytes:
        with open(file_path, "rb") as file:
            return wado.read_bulk_value(file, path)

    value: bytes = await _with_file(uow.ctx.storage, found[0].blob_key, read)
    if not multipart:
        return Response(content=value, media_type=wado.OCTET_STREAM, headers=NO_STORE)
    boundary = wado.new_boundary()
    return Response(
        content=wado.multipart_body([(wado.OCTET_STREAM, value)], boundary),
        media_type=wado.multipart_content_type(boundary, wado.OCTET_STREAM),
        headers=NO_STORE,
    )


def _render_module() -> ModuleType:
    try:
        return importlib.import_module("imaging.render")
    except ImportError:
        raise NotImplementedYet("影像渲染模块尚未安装", "Rendering is not available on this server") from None


def _rendered_media_type(accept_header: str | None) -> str:
    for media in wado.parse_accept(accept_header):
        if media.essence in ("image/jpeg", "image/png"):
            return media.essence
        if media.essence in ("*/*", "image/*"):
            return "image/jpeg"
    raise NotAcceptable("可提供 image/jpeg 或 image/png", "Available: image/jpeg, image/png")


def _render_error(error: Exception) -> ProblemError:
    status = int(getattr(error, "http_status", 500))
    if status == 404:
        return FrameNotFound()
    if status == 400:
        return BadQuery("渲染参数有误", "A rendering parameter is not valid")
    return NotImplementedYet("此影像无法在服务器端渲染", "This image cannot be rendered on the server")


def _floats(text: str | None, count: int, name: str) -> list[float] | None:
    if not text:
        return None
    pieces = text.split(",")
    try:
        values = [float(p) for p in pieces[:count]]
    except ValueError:
        raise BadQuery(f"{name} 参数格式不正确", f"The {name} parameter is not valid") from None
    if len(values) != count:
        raise BadQuery(f"{name} 参数格式不正确", f"The {name} parameter is not valid")
    return values


async def _render(
    uow: UnitOfWork,
    *,
    principal: Principal,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    media_type: str,
    options: dict[str, Any],
    thumbnail: bool = False,
) -> Response:
    module = _render_module()
    found = await service.instances_to_retrieve(
        uow,
        principal=principal,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        what="thumbnail" if thumbnail else "rendered",
    )
    render_error: type[Exception] = getattr(module, "RenderError", Exception)

    def work(path: Path) -> bytes:
        if thumbnail:
            return bytes(module.thumbnail(path, **options))
        return bytes(module.render(path, media_type=media_type, **options))

    try:
        image: bytes = await _with_file(uow.ctx.storage, found[0].blob_key, work)
    except render_error as error:
        raise _render_error(error) from None
    return Response(content=image, media_type=media_type, headers=NO_STORE)


async def _rendered(
    uow: UnitOfWork,
    principal: Principal,
    request: Request,
    uids: tuple[str, str, str],
    *,
    frame: int | None,
    quality: int | None,
    viewport: str | None,
    window: str | None,
) -> Response:
    """A rendered image (PS3.18 §10.4.1.1.4): JPEG or PNG by Accept, with the quality, viewport and window asked."""
    media_type = _rendered_media_type(request.headers.get("accept"))
    options: dict[str, Any] = {}
    if frame is not None:
        options["frame"] = frame
    if quality is not None:
        options["quality"] = quality
    if (size := _floats(viewport, 2, "viewport")) is not None:
        options["viewport"] = (int(size[0]), int(size[1]))
    if (centre_width := _floats(window, 2, "window")) is not None:
        options["window"] = (centre_width[0], centre_width[1])
    study_uid, series_uid, sop_instance_uid = uids
    return await _render(
        uow,
        principal=principal,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        media_type=media_type,
        options=options,
    )


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/rendered",
    response_class=Response,
    summary="WADO-RS: rendered image (PS3.18 §10.4.1.1.4)",
)
async def retrieve_rendered(
    uow: UoW,
    principal: CurrentPrincipal,
    request: Request,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    quality: Annotated[int | None, Query(ge=1, le=100)] = None,
    viewport: str | None = None,
    window: str | None = None,
) -> Response:
    uids = (study_uid, series_uid, sop_instance_uid)
    return await _rendered(uow, principal, request, uids, frame=None, quality=quality, viewport=viewport, window=window)


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/frames/{frame_list}/rendered",
    response_class=Response,
    summary="WADO-RS: one frame rendered as JPEG or PNG, with window/level (PS3.18 §10.4.1.1.4)",
)
async def retrieve_rendered_frame(
    uow: UoW,
    principal: CurrentPrincipal,
    request: Request,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    frame_list: str,
    quality: Annotated[int | None, Query(ge=1, le=100)] = None,
    viewport: str | None = None,
    window: str | None = None,
) -> Response:
    numbers = wado.parse_frame_list(frame_list)
    if len(numbers) != 1:
        # JPEG and PNG hold one image; a multi-frame rendering would need a video or GIF media type.
        raise BadQuery("渲染图像一次只能请求一帧", "A rendered image shows one frame: ask for one frame number")
    uids = (study_uid, series_uid, sop_instance_uid)
    return await _rendered(
        uow, principal, request, uids, frame=numbers[0], quality=quality, viewport=viewport, window=window
    )


@dicomweb.get(
    "/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/thumbnail",
    response_class=Response,
    summary="WADO-RS: thumbnail (PS3.18 §10.4.1.1.5)",
)
async def retrieve_thumbnail(
    uow: UoW,
    principal: CurrentPrincipal,
    study_uid: str,
    series_uid: str,
    sop_instance_uid: str,
    viewport: str | None = None,
) -> Response:
    options: dict[str, Any] = {}
    if (size := _floats(viewport, 2, "viewport")) is not None:
        options["size"] = int(max(size))
    return await _render(
        uow,
        principal=principal,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_instance_uid,
        media_type="image/jpeg",
        options=options,
        thumbnail=True,
    )


# ---------------------------------------------------------------------------------------------------------------
# WADO-URI (PS3.18 §9)


async def _wado_uri(
    uow: UnitOfWork,
    principal: Principal,
    request: Request,
    request_type: str,
    study_uid: str,
    series_uid: str,
    object_uid: str,
    content_type: str | None,
    frame_number: int | None,
) -> Response:
    if request_type != "WADO":
        raise BadQuery("requestType 必须为 WADO", "requestType must be WADO (PS3.18 §9.1.2)")
    wanted = [c.split(";", 1)[0].strip().lower() for c in (content_type or "image/jpeg").split(",")]
    if wado.DICOM in wanted:
        found = await service.instances_to_retrieve(
            uow,
            principal=principal,
            study_uid=study_uid,
            series_uid=series_uid,
            sop_instance_uid=object_uid,
            what="wado-uri",
        )
        return await _single_file(uow.ctx.storage, found[0])
    for media_type in ("image/jpeg", "image/png"):
        if media_type in wanted or "*/*" in wanted or "image/*" in wanted:
            return await _render(
                uow,
                principal=principal,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=object_uid,
                media_type=media_type,
                options={"frame": frame_number} if frame_number else {},
            )
    raise NotAcceptable(
        "contentType 可为 application/dicom、image/jpeg 或 image/png",
        "contentType may be application/dicom, image/jpeg or image/png",
    )


def _wado_uri_endpoint() -> Callable[..., Any]:
    async def endpoint(
        uow: UoW,
        principal: CurrentPrincipal,
        request: Request,
        request_type: Annotated[str, Query(alias="requestType")],
        study_uid: Annotated[str, Query(alias="studyUID", max_length=64)],
        series_uid: Annotated[str, Query(alias="seriesUID", max_length=64)],
        object_uid: Annotated[str, Query(alias="objectUID", max_length=64)],
        content_type: Annotated[str | None, Query(alias="contentType")] = None,
        frame_number: Annotated[int | None, Query(alias="frameNumber", ge=1)] = None,
    ) -> Response:
        return await _wado_uri(
            uow, principal, request, request_type, study_uid, series_uid, object_uid, content_type, frame_number
        )

    return endpoint


wado_uri.add_api_route("/wado", _wado_uri_endpoint(), methods=["GET"], response_class=Response,
                       summary="WADO-URI (PS3.18 §9)")  # fmt: skip
dicomweb.add_api_route("/wado", _wado_uri_endpoint(), methods=["GET"], response_class=Response,
                       summary="WADO-URI under the DICOMweb root")  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# DICOM nodes


@api.get("/nodes", response_model=list[DicomNodeRead])
async def list_nodes(uow: UoW, admin: AdminPrincipal, response: Response) -> list[DicomNodeRead]:
    response.headers.update(NO_STORE)
    return [DicomNodeRead.model_validate(node) for node in await service.list_nodes(uow)]


@api.post("/nodes", response_model=DicomNodeRead, status_code=201)
async def create_node(uow: UoW, admin: AdminPrincipal, data: DicomNodeCreate) -> DicomNodeRead:
    node = await service.create_node(uow, data=data)
    return DicomNodeRead.model_validate(node)


@api.delete("/nodes/{node_id}", status_code=204)
async def delete_node(uow: UoW, admin: AdminPrincipal, node_id: uuid.UUID) -> Response:
    await service.delete_node(uow, node_id=node_id)
    return Response(status_code=204)
