"""QIDO-RS and WADO-RS/URI as OHIF and Weasis use them (dicom-notes §3): search, metadata, instances, frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from fastapi import FastAPI

from imaging.config import ImagingSettings, use_imaging_settings
from telemed.core.config import Settings
from tests.conftest import Community, free_port
from tests.imaging.dicom_factory import CT_IMAGE_STORAGE, make_dataset, write
from tests.imaging.helpers import first, make_ct_slice, make_xray, new_uid, parse_multipart, stow

OCTET_MULTIPART = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
DICOM_MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
#: What OHIF needs in the metadata of an image (dicom-notes §3, item 7), and the transfer syntax of its frames.
OHIF_REQUIRED = (
    "00080016", "00080018", "00080060", "00280010", "00280011", "00280004", "00280100", "00280103", "00280030",
    "00281050", "00281051", "00281052", "00281053", "00200013", "00083002", "00280101", "00280102", "00280002",
)  # fmt: skip


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"dicom_port": free_port()})


@dataclass
class Archive:
    ct_study: str
    ct_series: list[str]
    ct_instances: list[Path]
    dx_study: str
    dx_series: str
    dx_instance: Path
    multiframe: Path
    multiframe_uids: tuple[str, str, str]
    encapsulated: Path
    encapsulated_uids: tuple[str, str, str]
    headers: dict[str, str]


def _frames(count: int, size: int) -> list[bytes]:
    return [bytes([(n * 37 + i) % 256 for i in range(256)]) * (size // 256) for n in range(count)]


@pytest.fixture
async def archive(app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path) -> Archive:
    village = await community.login(client, "vd_a1")
    township = await community.login(client, "td_a")
    ct_study, ct_series = new_uid(), [new_uid(), new_uid()]
    ct_instances = []
    for series_number, (series_uid, count) in enumerate(zip(ct_series, (3, 2), strict=True), start=1):
        for number in range(count, 0, -1):  # sent in reverse order: the index sorts by Instance Number
            ct_instances.append(
                make_ct_slice(
                    tmp_path / f"ct-{series_number}-{number}.dcm", study_uid=ct_study, series_uid=series_uid,
                    sop_uid=new_uid(), patient_name="Zhang^San=张^三", charset="GB18030", rows=32, cols=32,
                    instance_number=number, series_number=series_number,
                    extra={"SeriesDate": "20240315", "PatientID": "P000042"},
                )
            )  # fmt: skip
    assert (await stow(client, village, ct_instances)).status_code == 200

    dx_study, dx_series = new_uid(), new_uid()
    dx = make_xray(tmp_path / "dx.dcm", study_uid=dx_study, series_uid=dx_series, sop_uid=new_uid(),
                   patient_name="Li^Si", charset=None, rows=64, cols=64,
                   extra={"StudyDate": "20240120", "AccessionNumber": "DX0120"})  # fmt: skip
    assert (await stow(client, township, [dx])).status_code == 200

    mf_uids = (new_uid(), new_uid(), new_uid())
    ds = make_dataset(sop_class_uid=CT_IMAGE_STORAGE, modality="CT", study_uid=mf_uids[0], series_uid=mf_uids[1],
                      sop_uid=mf_uids[2], patient_name="Wu^Liu", charset=None, rows=16, cols=16, frames=3)  # fmt: skip
    ds.PixelData = b"".join(_frames(3, 16 * 16 * 2))
    multiframe = write(ds, tmp_path / "multiframe.dcm")
    enc_uids = (new_uid(), new_uid(), new_uid())
    encapsulated = write(
        make_dataset(sop_class_uid=CT_IMAGE_STORAGE, modality="CT", study_uid=enc_uids[0], series_uid=enc_uids[1],
                     sop_uid=enc_uids[2], patient_name="Wu^Liu", charset=None, rows=16, cols=16, frames=2,
                     transfer_syntax="1.2.840.10008.1.2.4.70"),
        tmp_path / "encapsulated.dcm",
    )  # fmt: skip
    assert (await stow(client, village, [multiframe, encapsulated])).status_code == 200
    radiologist = await community.login(client, "rad")
    return Archive(ct_study, ct_series, ct_instances, dx_study, dx_series, dx, multiframe, mf_uids,
                   encapsulated, enc_uids, radiologist)  # fmt: skip


async def _qido(client: httpx.AsyncClient, archive: Archive, url: str) -> list[dict[str, object]]:
    response = await client.get(url, headers=archive.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    results: list[dict[str, object]] = response.json()
    return results


def _uids(results: list[dict[str, object]], tag: str = "0020000D") -> list[str]:
    return [first(item, tag) for item in results]  # type: ignore[arg-type]


async def test_qido_study_matching(client: httpx.AsyncClient, archive: Archive) -> None:
    everything = await _qido(client, archive, "/dicomweb/studies?limit=101&offset=0&fuzzymatching=false")
    assert len(everything) == 4
    cases = {
        "PatientName=zhang*": [archive.ct_study],
        "PatientName=*张*": [archive.ct_study],
        "PatientName=Li^Si": [archive.dx_study],
        "00100020=P00004?": [archive.ct_study],
        "StudyDate=20240101-20240131": [archive.dx_study],
        "StudyDate=-20240131": [archive.dx_study],
        "StudyDate=20240120": [archive.dx_study],
        "AccessionNumber=DX0120": [archive.dx_study],
        "ModalitiesInStudy=DX": [archive.dx_study],
        f"StudyInstanceUID={archive.ct_study},{archive.dx_study}": [archive.ct_study, archive.dx_study],
        f"StudyInstanceUID={archive.dx_study}\\{archive.ct_study}": [archive.ct_study, archive.dx_study],
        "PatientName=": None,  # universal matching
    }
    for query, expected in cases.items():
        found = await _qido(client, archive, f"/dicomweb/studies?{query}")
        if expected is None:
            assert len(found) == 4, query
        else:
            assert sorted(_uids(found)) == sorted(expected), query

    ct = next(s for s in everything if first(s, "0020000D") == archive.ct_study)
    assert first(ct, "00201206") == 2
    assert first(ct, "00201208") == 5
    assert first(ct, "00080061") == "CT"
    assert first(ct, "00100010") == {"Alphabetic": "Zhang^San", "Ideographic": "张^三"}
    assert first(ct, "00081190") == f"http://testserver/dicomweb/studies/{archive.ct_study}"


async def test_qido_paging_includefield_and_warnings(app: FastAPI, client: httpx.AsyncClient, archive: Archive) -> None:
    first_page = await _qido(client, archive, "/dicomweb/studies?limit=2")
    second_page = await _qido(client, archive, "/dicomweb/studies?limit=2&offset=2")
    assert len(first_page) == len(second_page) == 2
    assert not set(_uids(first_page)) & set(_uids(second_page))

    with_fields = await _qido(
        client, archive, f"/dicomweb/studies?StudyInstanceUID={archive.ct_study}&includefield=00081030,00080060"
    )
    assert first(with_fields[0], "00081030") == "CT CHEST"
    assert first(with_fields[0], "00080060") == "CT"
    everything = await _qido(client, archive, f"/dicomweb/studies?StudyInstanceUID={archive.ct_study}&includefield=all")
    assert first(everything[0], "00180050") == 5.0  # Slice Thickness, from the stored DICOM JSON
    assert "7FE00010" not in everything[0]

    response = await client.get(
        "/dicomweb/studies?fuzzymatching=true&NotAnAttribute=1&00191010=x", headers=archive.headers
    )
    assert response.status_code == 200
    warning = response.headers["warning"]
    assert warning.startswith("299 ")
    assert "fuzzymatching" in warning
    assert "NotAnAttribute" in warning
    assert len(response.json()) == 4
    chinese_name = await client.get("/dicomweb/studies", params={"患者姓名": "张三"}, headers=archive.headers)
    assert chinese_name.status_code == 200
    assert "张三" not in chinese_name.headers["warning"]

    use_imaging_settings(app.state.ctx, ImagingSettings(imaging_max_results=3))
    capped = await client.get("/dicomweb/studies", headers=archive.headers)
    assert len(capped.json()) == 3
    assert "Additional results" in capped.headers["warning"]

    bad = await client.get("/dicomweb/studies?StudyDate=March", headers=archive.headers)
    assert bad.status_code == 400
    assert bad.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/dicomweb/studies?limit=-1", headers=archive.headers)).status_code == 400


async def test_qido_series_and_instances(client: httpx.AsyncClient, archive: Archive) -> None:
    series = await _qido(client, archive, f"/dicomweb/studies/{archive.ct_study}/series?includefield=0008103E,00080021")
    assert _uids(series, "0020000E") == archive.ct_series
    assert [first(s, "00201209") for s in series] == [3, 2]
    assert first(series[0], "00080060") == "CT"
    assert first(series[0], "00080021") == "20240315"
    assert first(series[0], "0008103E") == "AXIAL 5mm"

    dx = await _qido(client, archive, "/dicomweb/series?Modality=DX")
    assert _uids(dx, "0020000E") == [archive.dx_series]
    assert first(dx[0], "00100010") == {"Alphabetic": "Li^Si"}  # study attributes, as no study was named

    instances = await _qido(
        client, archive, f"/dicomweb/studies/{archive.ct_study}/series/{archive.ct_series[0]}/instances"
    )
    assert [first(i, "00200013") for i in instances] == [1, 2, 3]
    assert first(instances[0], "00280010") == 32
    one = first(instances[1], "00080018")
    found = await _qido(client, archive, f"/dicomweb/instances?SOPInstanceUID={one}")
    assert _uids(found, "00080018") == [one]
    by_number = await _qido(client, archive, f"/dicomweb/studies/{archive.ct_study}/instances?InstanceNumber=2")
    assert len(by_number) == 2

    missing = await client.get(f"/dicomweb/studies/{new_uid()}/series", headers=archive.headers)
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_metadata_comes_from_the_index_with_working_bulk_data_uris(
    app: FastAPI, client: httpx.AsyncClient, archive: Archive
) -> None:
    # The files are gone, the metadata is still there: it is served from the index alone.
    storage_root = app.state.ctx.settings.data_dir / "blobs" / "dicom"
    moved = storage_root.rename(storage_root.with_name("dicom-away"))
    try:
        study = await client.get(f"/dicomweb/studies/{archive.ct_study}/metadata", headers=archive.headers)
    finally:
        moved.rename(storage_root)
    assert study.status_code == 200
    instances = study.json()
    assert len(instances) == 5
    assert {first(i, "0020000E") for i in instances} == set(archive.ct_series)
    names = {first(i, "00100010")["Ideographic"] for i in instances}
    assert names == {"张^三"}
    for required in OHIF_REQUIRED:
        assert required in instances[0], required

    series_uid = archive.ct_series[1]
    series = await client.get(
        f"/dicomweb/studies/{archive.ct_study}/series/{series_uid}/metadata", headers=archive.headers
    )
    assert [first(i, "00200013") for i in series.json()] == [1, 2]
    sop_uid = first(series.json()[0], "00080018")
    single = await client.get(
        f"/dicomweb/studies/{archive.ct_study}/series/{series_uid}/instances/{sop_uid}/metadata",
        headers=archive.headers,
    )
    assert len(single.json()) == 1
    pixel_uri = single.json()[0]["7FE00010"]["BulkDataURI"]
    assert pixel_uri == (
        f"http://testserver/dicomweb/studies/{archive.ct_study}/series/{series_uid}/instances/{sop_uid}/bulkdata/7FE00010"
    )
    bulk = await client.get(pixel_uri, headers={**archive.headers, "Accept": OCTET_MULTIPART})
    assert bulk.status_code == 200
    [(part_headers, value)] = parse_multipart(bulk)
    assert part_headers["content-type"] == "application/octet-stream"
    assert len(value) == 32 * 32 * 2

    unknown = await client.get(
        f"/dicomweb/studies/{archive.ct_study}/series/{new_uid()}/metadata", headers=archive.headers
    )
    assert unknown.status_code == 404


async def test_retrieve_study_series_and_instance(client: httpx.AsyncClient, archive: Archive) -> None:
    study = await client.get(
        f"/dicomweb/studies/{archive.ct_study}", headers={**archive.headers, "Accept": DICOM_MULTIPART}
    )
    assert study.status_code == 200
    parts = parse_multipart(study)
    assert len(parts) == 5
    assert sorted(data for _, data in parts) == sorted(p.read_bytes() for p in archive.ct_instances)
    assert all(h["content-type"].startswith("application/dicom; transfer-syntax=1.2.840.10008.1.2.1") for h, _ in parts)

    series = await client.get(
        f"/dicomweb/studies/{archive.dx_study}/series/{archive.dx_series}", headers=archive.headers
    )
    assert [data for _, data in parse_multipart(series)] == [archive.dx_instance.read_bytes()]

    dx_sop = str(pydicom.dcmread(archive.dx_instance, stop_before_pixels=True).SOPInstanceUID)
    url = f"/dicomweb/studies/{archive.dx_study}/series/{archive.dx_series}/instances/{dx_sop}"
    single = await client.get(url, headers={**archive.headers, "Accept": "application/dicom"})
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == archive.dx_instance.read_bytes()
    refused = await client.get(url, headers={**archive.headers, "Accept": "application/json"})
    assert refused.status_code == 406


async def test_frames_native_multiframe_and_encapsulated(client: httpx.AsyncClient, archive: Archive) -> None:
    study, series, sop = archive.multiframe_uids
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames"
    expected = _frames(3, 16 * 16 * 2)
    one = await client.get(f"{base}/2", headers={**archive.headers, "Accept": OCTET_MULTIPART})
    assert one.status_code == 200
    [(headers, data)] = parse_multipart(one)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert data == expected[1]
    several = await client.get(f"{base}/3,1", headers={**archive.headers, "Accept": OCTET_MULTIPART})
    assert [data for _, data in parse_multipart(several)] == [expected[2], expected[0]]
    bare = await client.get(f"{base}/1", headers={**archive.headers, "Accept": "application/octet-stream"})
    assert bare.content == expected[0]
    assert (await client.get(f"{base}/4", headers=archive.headers)).status_code == 404
    assert (await client.get(f"{base}/0", headers=archive.headers)).status_code == 404

    study, series, sop = archive.encapsulated_uids
    frame = await client.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/2",
        headers={**archive.headers, "Accept": OCTET_MULTIPART},
    )
    [(headers, data)] = parse_multipart(frame)
    assert headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.70"
    assert len(data) >= 16 * 16 * 2  # the factory encapsulates the raw frame as it is (padded to even length)


async def test_wado_uri_and_rendered(client: httpx.AsyncClient, community: Community, archive: Archive) -> None:
    dx_sop = str(pydicom.dcmread(archive.dx_instance, stop_before_pixels=True).SOPInstanceUID)
    query = f"requestType=WADO&studyUID={archive.dx_study}&seriesUID={archive.dx_series}&objectUID={dx_sop}"
    dicom = await client.get(f"/wado?{query}&contentType=application/dicom", headers=archive.headers)
    assert dicom.status_code == 200
    assert dicom.content == archive.dx_instance.read_bytes()
    jpeg = await client.get(f"/wado?{query}", headers=archive.headers)
    assert jpeg.status_code == 200
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content[:2] == b"\xff\xd8"
    outsider = await community.login(client, "vd_b1")
    assert (await client.get(f"/wado?{query}&contentType=application/dicom", headers=outsider)).status_code == 404

    base = f"/dicomweb/studies/{archive.dx_study}/series/{archive.dx_series}/instances/{dx_sop}"
    png = await client.get(f"{base}/rendered?viewport=32,32", headers={**archive.headers, "Accept": "image/png"})
    assert png.status_code == 200
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    thumbnail = await client.get(f"{base}/thumbnail", headers=archive.headers)
    assert thumbnail.status_code == 200
    assert thumbnail.content[:2] == b"\xff\xd8"


async def test_metadata_of_a_study_larger_than_one_chunk_is_whole_and_in_order(
    app: FastAPI, client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    """The answer is sent in chunks of stored documents (service.METADATA_CHUNK_DOCUMENTS); the client sees one
    JSON array: every instance once, by series then instance number, bulk data URIs absolute in every chunk."""
    from imaging.service import METADATA_CHUNK_DOCUMENTS
    from tests.imaging.helpers import small_study

    headers = await community.login(client, "vd_a1")
    study_uid = new_uid()
    count = METADATA_CHUNK_DOCUMENTS * 2 + 5
    first_series = small_study(tmp_path / "a", count - 7, study_uid=study_uid, rows=8, cols=8)
    second_series = small_study(tmp_path / "b", 7, study_uid=study_uid, rows=8, cols=8)
    # Sent out of order, the second series first, and in two requests.
    assert (await stow(client, headers, list(reversed(second_series)))).status_code == 200
    assert (await stow(client, headers, list(reversed(first_series)))).status_code == 200

    response = await client.get(f"/dicomweb/studies/{study_uid}/metadata", headers=headers)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    instances = response.json()
    assert len(instances) == count
    assert len({first(i, "00080018") for i in instances}) == count
    order = [(first(i, "0020000E"), first(i, "00200013")) for i in instances]
    series_seen = list(dict.fromkeys(series for series, _ in order))
    assert len(series_seen) == 2
    for series in series_seen:
        numbers = [number for s, number in order if s == series]
        assert numbers == sorted(numbers)
    for instance in instances:
        assert instance["7FE00010"]["BulkDataURI"].startswith(f"http://testserver/dicomweb/studies/{study_uid}/")


async def test_study_metadata_is_read_in_index_order_without_a_sort(app: FastAPI) -> None:
    """WADO-RS metadata reads a study's documents in the order of an index: no temporary b-tree sorting
    megabytes of stored JSON on every request (SQLite's plan says so; PostgreSQL plans by its statistics)."""
    from sqlalchemy import text

    from imaging.repository import metadata_query

    if not app.state.ctx.db.is_sqlite:
        pytest.skip("the plan check is SQLite's")
    async with app.state.ctx.db.read_session() as session:
        query = metadata_query(session, study_pk=1)
        sql = str(query.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
        plan = (await session.execute(text(f"EXPLAIN QUERY PLAN {sql}"))).all()
    details = " ".join(str(row[-1]) for row in plan)
    assert "ix_imaging_instance_study_order" in details
    assert "TEMP B-TREE" not in details
