"""The imaging viewer page: a study picker, then a study's series as thumbnails and one image at a time.

A page of the web shell, built with the host's page kit (``telemed.core.pages``): the shell's header, policy and
``/static/js/core.js`` for the session and the language switch. It carries no patient data: the browser finds
studies with QIDO-RS and fetches every image through DICOMweb with the bearer token, shown through ``blob:``
object URLs (an ``<img src>`` cannot carry the token), which is why this page's image policy adds ``blob:``.
The domain's own texts, scripts and styles are under ``/static-imaging/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from imaging.render import PRESETS
from imaging.router import dicomweb
from telemed.core.pages import DomainPages

WEB_DIR: Final = Path(__file__).resolve().parent
STATIC_DIR: Final = WEB_DIR / "static"
#: The preset buttons, in the order a radiologist expects; "default" asks for the image's own window.
PRESET_ORDER: Final = ("default", "lung", "mediastinum", "bone", "brain", "abdomen")
#: The modalities the study picker offers (PS3.3 C.7.3.1.1.1 defined terms a county sees most).
PICKER_MODALITIES: Final = ("CT", "MR", "DX", "CR", "DR", "US", "MG", "XA", "RF", "NM", "PT", "OT")
#: Studies per page of the picker: one screen on a laptop, a small answer on a weak link.
PICKER_PAGE_SIZE: Final = 20

pages = DomainPages("imaging", WEB_DIR, "/static-imaging", img_src=("blob:",))
CONTENT_SECURITY_POLICY: Final = pages.content_security_policy

router = APIRouter(include_in_schema=False)
pages.add_asset_route(router)


def preset_windows() -> list[dict[str, str]]:
    out = []
    for name in PRESET_ORDER:
        center, width = PRESETS.get(name, (0.0, 0.0))
        window = f"{center:g},{width:g}" if name in PRESETS else ""
        out.append({"name": name, "window": window})
    return out


def viewer_config() -> dict[str, Any]:
    return {
        "dicomweb": dicomweb.prefix,
        "pageSize": PICKER_PAGE_SIZE,
    }


@router.get("/imaging/viewer", response_class=HTMLResponse)
async def viewer_page(request: Request) -> Response:
    return pages.render(
        request,
        "viewer.html",
        page="imaging-viewer",
        title_key="imaging.viewer.title",
        script="js/viewer.js",
        presets=preset_windows(),
        modalities=PICKER_MODALITIES,
        config=viewer_config(),
    )
