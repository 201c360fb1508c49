"""The imaging viewer page over ASGI: served zh-CN first under the strict policy, its assets local only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pydicom
import pytest

from imaging.web.pages import STATIC_DIR
from tests.conftest import Community
from tests.imaging.helpers import first, multiframe_study, small_study, stow

ASSETS = (
    ("/static-imaging/js/viewer.js", "text/javascript"),
    ("/static-imaging/css/viewer.css", "text/css"),
    ("/static-imaging/i18n/zh-CN.json", "application/json"),
    ("/static-imaging/i18n/en.json", "application/json"),
)
EXTERNAL = re.compile(r"(?:https?:)?//(?!127\.0\.0\.1|localhost)[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


async def test_viewer_page_is_chinese_first_under_the_strict_policy(client: httpx.AsyncClient) -> None:
    response = await client.get("/imaging/viewer", params={"study": "1.2.3"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'self'" in policy
    assert "img-src 'self' blob:" in policy
    assert "unsafe-inline" not in policy
    html = response.text
    assert '<html lang="zh-CN">' in html
    for label in ("肺窗", "纵隔窗", "骨窗", "脑窗", "腹部", "默认"):
        assert label in html
    assert 'data-window="400,1800"' in html
    assert 'data-window="-600,1500"' in html
    assert '<script type="module" src="/static-imaging/js/viewer.js"></script>' in html
    # No inline script: the only <script> bodies are JSON data blocks.
    for attributes, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.DOTALL):
        assert body.strip() == "" or 'type="application/json"' in attributes
    assert not EXTERNAL.search(html)


async def test_viewer_page_in_english_when_chosen(client: httpx.AsyncClient) -> None:
    client.cookies.set("lang", "en")
    response = await client.get("/imaging/viewer")
    assert response.status_code == 200
    assert '<html lang="en">' in response.text
    assert "Bone" in response.text


@pytest.mark.parametrize(("path", "media_type"), ASSETS)
async def test_assets_are_served_and_local(client: httpx.AsyncClient, path: str, media_type: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert not EXTERNAL.search(response.text)


async def test_assets_outside_the_static_folder_are_refused(client: httpx.AsyncClient) -> None:
    assert (await client.get("/static-imaging/../pages.py")).status_code == 404
    assert (await client.get("/static-imaging/%2e%2e/pages.py")).status_code == 404
    assert (await client.get("/static-imaging/js/missing.js")).status_code == 404


def test_both_languages_have_the_same_texts() -> None:
    zh = json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text(encoding="utf-8"))
    assert zh.keys() == en.keys()


# ---------------------------------------------------------------------------------------------------------------
# The study picker, multi-frame stepping and the window drag: the page's parts and the DICOMweb answers it uses.

PICKER_PAGE = 20


def _json_block(html: str, block_id: str) -> object:
    found = re.search(rf'<script type="application/json" id="{block_id}">(.*?)</script>', html, re.DOTALL)
    assert found, block_id
    return json.loads(found[1])


async def test_viewer_page_carries_the_picker_and_the_window_tools(client: httpx.AsyncClient) -> None:
    html = (await client.get("/imaging/viewer")).text
    for element_id in ("study-search", "q-name", "q-id", "q-from", "q-to", "q-modality", "study-list",
                       "picker-empty", "pager", "study-view", "wl-readout", "wl-reset", "slice-index",
                       "viewer-retry", "forbidden"):  # fmt: skip
        assert f'id="{element_id}"' in html, element_id
    assert 'type="date"' in html
    assert '<option value="CT">CT</option>' in html
    for label in ("患者姓名", "患者编号", "检查类型", "查找", "重置窗宽窗位", "没有符合条件的检查。"):
        assert label in html, label
    # The shell's header, with the viewer's own link, from the one shell template.
    assert 'href="/imaging/viewer" data-nav="imaging-viewer"' in html
    assert 'id="sign-out"' in html
    assert _json_block(html, "i18n-sources") == ["/static-imaging/i18n/"]
    config = _json_block(html, "viewer-config")
    assert config == {"dicomweb": "/dicomweb", "pageSize": PICKER_PAGE}


def test_every_text_the_viewer_uses_exists_in_both_languages() -> None:
    zh = json.loads((STATIC_DIR / "i18n" / "zh-CN.json").read_text(encoding="utf-8"))
    en = json.loads((STATIC_DIR / "i18n" / "en.json").read_text(encoding="utf-8"))
    assert all(isinstance(text, str) and text.strip() for text in [*zh.values(), *en.values()])
    for key, text in zh.items():
        assert set(re.findall(r"\{(\w+)\}", text)) == set(re.findall(r"\{(\w+)\}", en[key])), key
    template = (STATIC_DIR.parent / "templates" / "viewer.html").read_text(encoding="utf-8")
    script = (STATIC_DIR / "js" / "viewer.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n(?:-aria-label)?="(imaging\.[a-z0-9_.]*[a-z0-9_])"', template))
    used |= set(re.findall(r"""\bt\(["'](imaging\.[a-z0-9_.]*[a-z0-9_])["']""", template + script))
    used |= set(re.findall(r'"(imaging\.(?:error|picker|viewer)\.[a-z0-9_]+)"', script))
    used |= {f"imaging.preset.{name}" for name in ("default", "lung", "mediastinum", "bone", "brain", "abdomen")}
    used |= {f"imaging.sex.{code}" for code in "MFO"}
    assert len(used) > 40
    assert sorted(used - zh.keys()) == []
    assert "innerHTML" not in script
    assert "eval(" not in script


async def _store(client: httpx.AsyncClient, headers: dict[str, str], paths: list[Path]) -> str:
    response = await stow(client, headers, paths)
    assert response.status_code == 200, response.text
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


async def _studies(client: httpx.AsyncClient, headers: dict[str, str], query: str) -> list[str]:
    response = await client.get(f"/dicomweb/studies?{query}", headers={**headers, "Accept": "application/dicom+json"})
    assert response.status_code == 200, response.text
    return [first(study, "0020000D") for study in response.json()]


async def test_the_pickers_queries_find_studies_by_chinese_name_date_and_modality(
    client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    """The queries viewer.js builds from the picker's fields (namePattern: 张三 → 张*三*) find what they should."""
    village = await community.login(client, "vd_a1")
    zhang = await _store(client, village, small_study(tmp_path / "zhang", 2, patient_name="Zhang^San=张^三",
                                                      patient_id="P0001"))  # fmt: skip
    wang = await _store(client, village, small_study(tmp_path / "wang", 1, patient_name="Wang^Wu=王^五",
                                                     patient_id="P0002", extra={"StudyDate": "20240502"}))  # fmt: skip
    li = await _store(client, village, [multiframe_study(tmp_path / "li", patient_id="Q0003")])
    radiologist = await community.login(client, "rad")

    page = f"limit={PICKER_PAGE + 1}&offset=0"
    assert set(await _studies(client, radiologist, page)) == {zhang, wang, li}
    assert await _studies(client, radiologist, f"PatientName={quote('张*三*')}&{page}") == [zhang]
    assert await _studies(client, radiologist, f"PatientName={quote('zhang*san*')}&{page}") == [zhang]
    assert await _studies(client, radiologist, f"PatientName={quote('李*')}&{page}") == [li]
    assert await _studies(client, radiologist, f"PatientID={quote('P000*')}&StudyDate=20240401-&{page}") == [wang]
    assert await _studies(client, radiologist, f"StudyDate=-20240331&ModalitiesInStudy=XA&{page}") == [li]
    assert await _studies(client, radiologist, f"PatientName={quote('赵*')}&{page}") == []
    # Paging by limit/offset: the picker asks for one more than a page to know there is a next one.
    first_page = await _studies(client, radiologist, "limit=2&offset=0")
    second_page = await _studies(client, radiologist, "limit=2&offset=2")
    assert len(first_page) == 2
    assert len(second_page) == 1
    assert set(first_page + second_page) == {zhang, wang, li}

    studies = (await client.get(f"/dicomweb/studies?StudyInstanceUID={zhang}", headers=radiologist)).json()
    assert first(studies[0], "00100010") == {"Alphabetic": "Zhang^San", "Ideographic": "张^三"}

    analyst = await community.login(client, "analyst")
    assert (await client.get(f"/dicomweb/studies?{page}", headers=analyst)).status_code == 403
    assert (await client.get(f"/dicomweb/studies?{page}")).status_code == 401


async def test_what_the_viewer_steps_through_and_windows(
    client: httpx.AsyncClient, community: Community, tmp_path: Path
) -> None:
    """A multi-frame instance: its frame count and stored window from QIDO, each frame rendered on its own; and a
    single-frame image rendered again in the window a drag asks for."""
    village = await community.login(client, "vd_a1")
    path = multiframe_study(tmp_path / "xa", frames=3)
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    study_uid, series_uid, sop_uid = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
    await _store(client, village, [path])
    radiologist = await community.login(client, "rad")

    fields = "00281050,00281051,00281052,00281053,00280101"
    instances = await client.get(
        f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances?includefield={fields}", headers=radiologist
    )
    assert instances.status_code == 200
    (instance,) = instances.json()
    assert first(instance, "00280008") == 3
    assert first(instance, "00281050") == 2048
    assert first(instance, "00281051") == 4096

    frames = []
    for number in (1, 2, 3):
        response = await client.get(
            "/dicomweb/wado",
            params={"requestType": "WADO", "studyUID": study_uid, "seriesUID": series_uid, "objectUID": sop_uid,
                    "contentType": "image/jpeg", "frameNumber": number},
            headers=radiologist,
        )  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        frames.append(response.content)
    assert len(set(frames)) == 3
    beyond = await client.get(
        "/dicomweb/wado",
        params={"requestType": "WADO", "studyUID": study_uid, "seriesUID": series_uid, "objectUID": sop_uid,
                "contentType": "image/jpeg", "frameNumber": 4},
        headers=radiologist,
    )  # fmt: skip
    assert beyond.status_code == 404
    instance_path = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    # WADO-RS renders any frame with the asked window (PS3.18 §10.4.1.1.4): what the viewer's drag uses.
    rendered = []
    for number in (1, 2, 3):
        response = await client.get(f"{instance_path}/frames/{number}/rendered", headers=radiologist)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/jpeg"
        rendered.append(response.content)
    assert len(set(rendered)) == 3
    windowed = await client.get(f"{instance_path}/frames/2/rendered?window=1024,1024", headers=radiologist)
    assert windowed.status_code == 200
    assert windowed.content != rendered[1]
    png = await client.get(f"{instance_path}/frames/3/rendered", headers={**radiologist, "Accept": "image/png"})
    assert png.headers["content-type"] == "image/png"
    for wrong, status in (("4", 404), ("0", 404), ("x", 404), ("1,2", 400)):
        response = await client.get(f"{instance_path}/frames/{wrong}/rendered", headers=radiologist)
        assert response.status_code == status, wrong
        assert response.headers["content-type"].startswith("application/problem+json")
    outsider = await community.login(client, "vd_b1")
    assert (await client.get(f"{instance_path}/frames/1/rendered", headers=outsider)).status_code == 404

    ct = small_study(tmp_path / "ct", 1)
    ct_data = pydicom.dcmread(ct[0], stop_before_pixels=True)
    await _store(client, village, ct)
    ct_path = (f"/dicomweb/studies/{ct_data.StudyInstanceUID}/series/{ct_data.SeriesInstanceUID}"
               f"/instances/{ct_data.SOPInstanceUID}/rendered")  # fmt: skip
    stored = await client.get(ct_path, headers=radiologist)
    dragged = await client.get(f"{ct_path}?window=-120,1650", headers=radiologist)
    assert stored.status_code == dragged.status_code == 200
    assert stored.content != dragged.content
    stranger = await community.login(client, "vd_b1")
    assert (await client.get(ct_path, headers=stranger)).status_code == 404
