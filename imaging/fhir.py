"""Imaging as FHIR R4: ``ImagingStudy`` (the index of a study) and ``DiagnosticReport`` (the radiologist's report).

Ids: an ImagingStudy's id is its Study Instance UID (digits and dots, at most 64 characters: a valid FHIR id, and
the same id in every system that holds the study); a DiagnosticReport's id is the report's UUID. The study's
patient is named by the DICOM Patient ID (0010,0020) as an identifier scoped to the sending facility, never by
name. A report is ``preliminary`` while a draft and ``final`` once signed (R4 diagnostic-report-status).
Reads are scoped and audited exactly as the DICOMweb and worklist APIs'; errors answer an OperationOutcome.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from imaging import reading, service
from imaging.models import ImagingInstance, ImagingSeries, ImagingStudy
from imaging.reading_models import ReadingReport, ReadingTask
from telemed.core.deps import CurrentPrincipal, UoW
from telemed.core.errors import ProblemError, preferred_language
from telemed.core.uow import UnitOfWork

FHIR_JSON: Final = "application/fhir+json"
BASE: Final = "https://telemed.example.cn/fhir"
DICOM_UID: Final = "urn:dicom:uid"
DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
LOINC: Final = "http://loinc.org"
V2_0074: Final = "http://terminology.hl7.org/CodeSystem/v2-0074"
PATIENT_ID_SYSTEM: Final = f"{BASE}/NamingSystem/dicom-patient-id"
WORKLIST_SYSTEM: Final = f"{BASE}/NamingSystem/reading-worklist"
EXT_TURNAROUND: Final = f"{BASE}/StructureDefinition/reading-turnaround-seconds"

router = APIRouter(prefix="/fhir/R4", tags=["fhir"])


def _fhir(body: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=FHIR_JSON, headers={"Cache-Control": "no-store"})


def operation_outcome(error: ProblemError, lang: str) -> JSONResponse:
    code = {404: "not-found", 403: "forbidden", 401: "login", 409: "conflict"}.get(error.status, "invalid")
    text = (error.detail_en if lang == "en" else error.detail_zh) or (
        error.title_en if lang == "en" else error.title_zh
    )
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return _fhir(body, error.status)


def _date(value: str | None) -> str | None:
    """A DICOM DA (YYYYMMDD) as a FHIR date, or None when it is not one."""
    text = (value or "").strip()
    if len(text) == 8 and text.isdigit():
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return None


def _subject(study: ImagingStudy) -> dict[str, Any]:
    subject: dict[str, Any] = {"type": "Patient"}
    if study.patient_id:
        system = f"{PATIENT_ID_SYSTEM}/{study.facility_id}" if study.facility_id else PATIENT_ID_SYSTEM
        subject["identifier"] = {"system": system, "value": study.patient_id}
    else:
        subject["display"] = "unknown"
    return subject


def _coding(modality: str) -> dict[str, str]:
    return {"system": DCM, "code": modality}


def imaging_study(study: ImagingStudy, series: list[tuple[ImagingSeries, int]]) -> dict[str, Any]:
    modalities = sorted({s.modality for s, _ in series if s.modality})
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": study.study_uid,
        "identifier": [{"system": DICOM_UID, "value": f"urn:oid:{study.study_uid}"}],
        "status": "available",
        "subject": _subject(study),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(count for _, count in series),
    }
    if study.accession_number:
        resource["identifier"].append(
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
             "value": study.accession_number}
        )  # fmt: skip
    if modalities:
        resource["modality"] = [_coding(m) for m in modalities]
    started = _date(study.study_date)
    if started:
        resource["started"] = started
    if study.study_description:
        resource["description"] = study.study_description
    if study.facility_id:
        resource["referrer"] = {"reference": f"Organization/{study.facility_id}", "type": "Organization"}
    items = []
    for row, count in series:
        item: dict[str, Any] = {
            "uid": row.series_uid,
            "modality": _coding(row.modality or "OT"),
            "numberOfInstances": count,
        }
        if row.series_number is not None:
            item["number"] = row.series_number
        if row.series_description:
            item["description"] = row.series_description
        if row.body_part:
            item["bodySite"] = {"system": f"{BASE}/CodeSystem/dicom-body-part", "code": row.body_part}
        items.append(item)
    if items:
        resource["series"] = items
    return resource


def diagnostic_report(report: ReadingReport, task: ReadingTask, study: ImagingStudy) -> dict[str, Any]:
    signed = report.status == reading.ReportStatus.signed.value
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": str(report.id),
        "meta": {"lastUpdated": report.updated_at.isoformat()},
        "identifier": [{"system": WORKLIST_SYSTEM, "value": str(task.id)}],
        "status": "final" if signed else "preliminary",
        "category": [{"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}]}],
        "code": {"coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}]},
        "subject": _subject(study),
        "resultsInterpreter": [{"reference": f"Practitioner/{report.author_id}", "type": "Practitioner"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{study.study_uid}", "type": "ImagingStudy"}],
        "conclusion": report.impression,
        "presentedForm": [
            {
                "contentType": "text/plain; charset=utf-8",
                "language": "zh-CN",
                "title": "Findings",
                "data": base64.b64encode(report.findings.encode()).decode(),
            }
        ],
    }
    effective = _date(study.study_date)
    if effective:
        resource["effectiveDateTime"] = effective
    if report.signed_at is not None:
        resource["issued"] = report.signed_at.isoformat()
    if task.target_facility_id is not None:
        resource["performer"] = [{"reference": f"Organization/{task.target_facility_id}", "type": "Organization"}]
    turnaround = reading.turnaround_seconds(task, report)
    if turnaround is not None:
        resource["extension"] = [{"url": EXT_TURNAROUND, "valueDecimal": turnaround}]
    return resource


async def _series(uow: UnitOfWork, study: ImagingStudy) -> list[tuple[ImagingSeries, int]]:
    counts = (
        select(ImagingInstance.series_pk, func.count(ImagingInstance.id).label("n"))
        .where(ImagingInstance.study_pk == study.id)
        .group_by(ImagingInstance.series_pk)
        .subquery()
    )
    rows = await uow.session.execute(
        select(ImagingSeries, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.series_pk == ImagingSeries.id)
        .where(ImagingSeries.study_pk == study.id)
        .order_by(ImagingSeries.series_number, ImagingSeries.id)
    )
    return [(series, int(count)) for series, count in rows.all()]


@router.get("/ImagingStudy/{study_uid}", response_class=JSONResponse, summary="A study as an R4 ImagingStudy")
async def read_imaging_study(uow: UoW, principal: CurrentPrincipal, study_uid: str, request: Request) -> JSONResponse:
    try:
        study, _scope = await service.find_study(uow, principal, study_uid, uow.session)
        service.audit_read(uow, study.study_uid, "fhir:ImagingStudy")
        body = imaging_study(study, await _series(uow, study))
    except ProblemError as error:
        return operation_outcome(error, preferred_language(request))
    return _fhir(body)


@router.get("/DiagnosticReport/{report_id}", response_class=JSONResponse, summary="A report as an R4 DiagnosticReport")
async def read_diagnostic_report(
    uow: UoW, principal: CurrentPrincipal, report_id: str, request: Request
) -> JSONResponse:
    try:
        try:
            wanted = uuid.UUID(report_id)
        except ValueError:
            raise reading.ReportNotFound() from None
        report, task, study = await reading.read_report(uow, principal=principal, report_id=wanted)
        body = diagnostic_report(report, task, study)
    except ProblemError as error:
        return operation_outcome(error, preferred_language(request))
    return _fhir(body)
