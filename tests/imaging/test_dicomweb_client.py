"""A real DICOMweb client (``dicomweb-client``, the library behind many PACS scripts) against a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from fastapi import FastAPI

from telemed.core.config import Settings
from tests.conftest import PASSWORD, Community, ServerProcess, free_port
from tests.imaging.helpers import small_study

pytestmark = pytest.mark.interop


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_port": free_port()})


def _session(server: ServerProcess, username: str) -> DICOMwebClient:
    token = httpx.post(f"{server.url}/api/v1/auth/token", data={"username": username, "password": PASSWORD}, timeout=10)
    assert token.status_code == 200, token.text
    return DICOMwebClient(
        url=f"{server.url}/dicomweb", headers={"Authorization": f"Bearer {token.json()['access_token']}"}
    )


def _exercise(server: ServerProcess, paths: list[Path]) -> None:
    datasets = [pydicom.dcmread(path) for path in paths]
    study_uid = str(datasets[0].StudyInstanceUID)
    series_uid = str(datasets[0].SeriesInstanceUID)

    sender = _session(server, "vd_a1")
    response = sender.store_instances(datasets=datasets)
    assert len(response.ReferencedSOPSequence) == len(datasets)
    assert "FailedSOPSequence" not in response

    reader = _session(server, "rad")
    studies = reader.search_for_studies(search_filters={"PatientName": "Sun*"})
    assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
    series = reader.search_for_series(study_uid, search_filters={"Modality": "CT"})
    assert [s["0020000E"]["Value"][0] for s in series] == [series_uid]
    instances = reader.search_for_instances(study_uid, series_uid)
    assert len(instances) == len(datasets)

    metadata = reader.retrieve_study_metadata(study_uid)
    assert sorted(m["00080018"]["Value"][0] for m in metadata) == sorted(str(d.SOPInstanceUID) for d in datasets)
    parsed = pydicom.Dataset.from_json(metadata[0], bulk_data_uri_handler=lambda *_: b"")
    assert parsed.PatientName.ideographic == "孙^悦"

    first = datasets[0]
    instance = reader.retrieve_instance(study_uid, series_uid, str(first.SOPInstanceUID))
    assert instance.SOPInstanceUID == first.SOPInstanceUID
    assert instance.PixelData == first.PixelData
    frames = reader.retrieve_instance_frames(study_uid, series_uid, str(first.SOPInstanceUID), frame_numbers=[1])
    assert frames == [first.PixelData]
    retrieved = reader.retrieve_series(study_uid, series_uid)
    assert sorted(str(d.SOPInstanceUID) for d in retrieved) == sorted(str(d.SOPInstanceUID) for d in datasets)

    outsider = _session(server, "vd_b1")
    assert outsider.search_for_studies() == []


async def test_dicomweb_client_stores_searches_and_retrieves(
    app: FastAPI, community: Community, settings: Settings, servers: list[ServerProcess], tmp_path: Path
) -> None:
    paths = small_study(tmp_path / "study", 4, patient_name="Sun^Yue=孙^悦", charset="GB18030")
    server = ServerProcess(settings, tmp_path / "server.log", TELEMED_DICOM_PORT=str(free_port()))
    servers.append(server)
    await asyncio.to_thread(server.start)
    await asyncio.to_thread(_exercise, server, paths)
