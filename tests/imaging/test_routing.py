"""Stable studies and routing rules: quiet for the configured period → stable → routed to a county worklist."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import select

from imaging.config import DEFAULT_ROUTING_FILE
from imaging.events import STUDY_ROUTED, STUDY_STABLE
from imaging.models import ImagingStudy
from imaging.routing import Priority, StudyFacts, load_routing, parse_routing
from telemed.core.config import Settings
from telemed.core.events import OutboxRecord
from tests.conftest import Community, free_port
from tests.imaging.helpers import make_ct_slice, make_xray, new_uid, stow


@pytest.fixture
def settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("TELEMED_IMAGING_STABLE_SECONDS", "0.6")
    return settings.model_copy(update={"dicom_port": free_port()})


def test_the_packaged_rules_route_chest_and_head_to_county_radiology() -> None:
    table = load_routing(DEFAULT_ROUTING_FILE)
    facility = uuid.uuid4()

    def route(modalities: list[str], body_parts: list[str]) -> tuple[str, str, Priority]:
        rule = table.route(StudyFacts(modalities=modalities, body_parts=body_parts, facility_id=facility))
        return rule.name, rule.worklist.code, rule.priority

    assert route(["DX"], ["CHEST"]) == ("chest-radiograph", "QT-CPH/radiology", Priority.routine)
    assert route(["CR"], ["胸部"]) == ("chest-radiograph", "QT-CPH/radiology", Priority.routine)
    assert route(["CT"], ["chest"]) == ("ct-chest", "QT-CPH/radiology", Priority.urgent)
    assert route(["CT"], ["颅脑"]) == ("ct-head-stroke", "QT-CPH/radiology", Priority.stat)
    assert route(["ECG"], []) == ("ecg", "QT-CPH/cardiology", Priority.urgent)
    assert route(["MR"], ["KNEE"]) == ("default", "QT-CPH/radiology", Priority.routine)
    assert route(["DX"], []) == ("default", "QT-CPH/radiology", Priority.routine)


def test_rules_match_sending_facility_and_calling_ae_and_refuse_nonsense() -> None:
    township = uuid.uuid4()
    table = parse_routing(
        f"""
        rules:
          - name: township-b-ultrasound
            match: {{modality: [US], sending_facility: ["{township}"]}}
            worklist: {{facility: QT-T02, department: radiology}}
            priority: routine
          - name: county-ct-scanner
            match: {{calling_ae: [ct_scanner_1]}}
            worklist: {{facility: QT-CPH, department: radiology}}
            priority: urgent
        default: {{name: default, worklist: {{facility: QT-CPH, department: radiology}}}}
        """
    )
    assert table.route(StudyFacts(["US"], [], township)).name == "township-b-ultrasound"
    assert table.route(StudyFacts(["US"], [], uuid.uuid4())).name == "default"
    assert table.route(StudyFacts(["CT"], [], None, calling_aes=["CT_SCANNER_1"])).name == "county-ct-scanner"
    with pytest.raises(ValidationError):
        parse_routing("rules: []\ndefault: {name: d, worklist: {facility: X, department: y}, priority: soon}")
    with pytest.raises(ValueError, match="mapping"):
        parse_routing("- just a list")


async def _events(app: FastAPI, name: str) -> list[OutboxRecord]:
    async with app.state.ctx.db.read_session() as session:
        return list((await session.scalars(select(OutboxRecord).where(OutboxRecord.name == name))).all())


async def _wait_for(app: FastAPI, name: str, count: int, seconds: float = 15.0) -> list[OutboxRecord]:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        found = await _events(app, name)
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_a_quiet_study_becomes_stable_and_is_routed_through_the_outbox(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    headers = await community.login(client, "vd_a1")
    study_uid, series_uid = new_uid(), new_uid()
    xray = make_xray(tmp_path / "dx.dcm", study_uid=study_uid, series_uid=series_uid, sop_uid=new_uid(),
                     patient_name="Chen^Mei=陈^梅", charset="GB18030", rows=32, cols=32)  # fmt: skip
    assert (await stow(client, headers, [xray])).status_code == 200

    stable = await _wait_for(app, STUDY_STABLE, 1)
    routed = await _wait_for(app, STUDY_ROUTED, 1)
    assert len(stable) == 1
    assert len(routed) == 1
    clinic = str(community.facilities["clinic_a1"])
    assert stable[0].payload == {
        "study_uid": study_uid,
        "facility_id": clinic,
        "modalities": ["DX"],
        "body_parts": ["CHEST"],
        "series_count": 1,
        "instance_count": 1,
    }
    assert routed[0].payload == {
        "study_uid": study_uid,
        "facility_id": clinic,
        "worklist_code": "QT-CPH/radiology",
        "target_facility_code": "QT-CPH",
        "department_code": "radiology",
        "priority": "routine",
        "rule": "chest-radiograph",
    }
    assert routed[0].audience == {"users": [], "facilities": [clinic]}
    for record in (*stable, *routed):
        text = json.dumps(record.payload, ensure_ascii=False)
        assert "Chen" not in text
        assert "陈" not in text
    async with app.state.ctx.db.read_session() as session:
        study = (await session.scalars(select(ImagingStudy).where(ImagingStudy.study_uid == study_uid))).one()
    assert study.stable_at is not None
    assert study.worklist_code == "QT-CPH/radiology"
    assert study.priority == "routine"

    # A CT head added later: the study is no longer stable, then stable again and routed as a stroke case.
    ct = make_ct_slice(tmp_path / "ct.dcm", study_uid=study_uid, series_uid=new_uid(), sop_uid=new_uid(),
                       patient_name="Chen^Mei=陈^梅", charset="GB18030", rows=16, cols=16,
                       extra={"BodyPartExamined": "HEAD"})  # fmt: skip
    assert (await stow(client, headers, [ct])).status_code == 200
    async with app.state.ctx.db.read_session() as session:
        study = (await session.scalars(select(ImagingStudy).where(ImagingStudy.study_uid == study_uid))).one()
    assert study.stable_at is None
    routed = await _wait_for(app, STUDY_ROUTED, 2)
    assert len(routed) == 2
    assert routed[1].payload["priority"] == "stat"
    assert routed[1].payload["rule"] == "ct-head-stroke"
    assert len(await _events(app, STUDY_STABLE)) == 2
