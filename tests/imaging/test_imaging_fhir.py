"""Imaging as FHIR R4: ImagingStudy (id = Study Instance UID) and DiagnosticReport (id = the report's UUID),
checked with the ``fhir.resources`` R4B models; scoped and audited like the rest of imaging."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import httpx
from fastapi import FastAPI
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy import select

from telemed.core.audit import AuditRecord
from tests.conftest import Community
from tests.imaging.test_reading import WORKLIST, routed_task

FHIR_JSON = "application/fhir+json"


async def test_imaging_study_validates_and_is_scoped(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    _task, study_uid, rad = await routed_task(app, client, community, tmp_path)
    response = await client.get(f"/fhir/R4/ImagingStudy/{study_uid}", headers=rad)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    resource = ImagingStudy.model_validate(body)
    assert resource.id == study_uid
    assert resource.status == "available"
    assert body["identifier"][0] == {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}
    assert body["numberOfSeries"] == 1
    assert body["numberOfInstances"] == 1
    assert body["modality"] == [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"}]
    assert body["series"][0]["numberOfInstances"] == 1
    assert "Chen" not in response.text
    assert "陈" not in response.text

    village_b = await community.login(client, "vd_b1")
    hidden = await client.get(f"/fhir/R4/ImagingStudy/{study_uid}", headers=village_b)
    assert hidden.status_code == 404
    assert OperationOutcome.model_validate(hidden.json()).issue[0].code == "not-found"
    analyst = await community.login(client, "analyst")
    assert (await client.get(f"/fhir/R4/ImagingStudy/{study_uid}", headers=analyst)).status_code == 403


async def test_diagnostic_report_is_preliminary_then_final(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    task, study_uid, rad = await routed_task(app, client, community, tmp_path)
    url = f"{WORKLIST}/{task['id']}"
    assert (await client.post(f"{url}/claim", headers=rad)).status_code == 200
    findings = "右下肺见斑片状模糊影。"
    drafted = await client.put(f"{url}/report", headers=rad, json={"findings": findings, "impression": "右下肺炎"})
    report_id = drafted.json()["report"]["id"]

    draft = await client.get(f"/fhir/R4/DiagnosticReport/{report_id}", headers=rad)
    assert draft.status_code == 200, draft.text
    assert draft.headers["content-type"].startswith(FHIR_JSON)
    resource = DiagnosticReport.model_validate(draft.json())
    assert resource.status == "preliminary"
    assert resource.conclusion == "右下肺炎"
    assert draft.json()["imagingStudy"] == [{"reference": f"ImagingStudy/{study_uid}", "type": "ImagingStudy"}]
    assert base64.b64decode(draft.json()["presentedForm"][0]["data"]).decode() == findings

    # The sending village doctor does not see a draft, but does see the signed report.
    village = await community.login(client, "vd_a1")
    assert (await client.get(f"/fhir/R4/DiagnosticReport/{report_id}", headers=village)).status_code == 404
    assert (await client.post(f"{url}/sign", headers=rad)).status_code == 200
    final = await client.get(f"/fhir/R4/DiagnosticReport/{report_id}", headers=village)
    assert final.status_code == 200, final.text
    signed = DiagnosticReport.model_validate(final.json())
    assert signed.status == "final"
    assert signed.issued is not None
    assert final.json()["extension"][0]["valueDecimal"] >= 0

    other = await community.login(client, "vd_b1")
    assert (await client.get(f"/fhir/R4/DiagnosticReport/{report_id}", headers=other)).status_code == 404
    assert (await client.get(f"/fhir/R4/DiagnosticReport/{uuid.uuid4()}", headers=rad)).status_code == 404
    assert (await client.get("/fhir/R4/DiagnosticReport/not-a-uuid", headers=rad)).status_code == 404
    analyst = await community.login(client, "analyst")
    assert (await client.get(f"/fhir/R4/DiagnosticReport/{report_id}", headers=analyst)).status_code == 403

    async with app.state.ctx.db.read_session() as session:
        reads = (
            await session.scalars(
                select(AuditRecord).where(AuditRecord.resource_type == "imaging_report", AuditRecord.action == "R")
            )
        ).all()
    assert [r.outcome for r in reads].count("success") == 2
    assert [r.outcome for r in reads].count("denied") >= 4
