"""The imaging domain as the host sees it (entry point ``telemed.domains:imaging``)."""

from imaging import export_models, models, reading_models  # noqa: F401  (registers the tables on the shared metadata)
from imaging.cli import imaging as imaging_cli
from imaging.dimse import run_dicom_listener
from imaging.events import STUDY_ROUTED, STUDY_STABLE
from imaging.export import EXPORT_FINISHED, run_export_worker
from imaging.export_router import router as export_router
from imaging.fhir import router as fhir_router
from imaging.reading import REPORT_SIGNED, on_study_routed
from imaging.reading_router import router as reading_router
from imaging.router import api, dicomweb, stow_routes, wado_uri
from imaging.stable import run_stable_monitor
from imaging.web.pages import router as viewer_pages
from telemed.core.db import Base
from telemed.core.plugins import DomainPlugin, NavLink

plugin = DomainPlugin(
    name="imaging",
    title_zh="远程影像",
    title_en="Imaging",
    routers=(dicomweb, wado_uri, api, reading_router, export_router, fhir_router, viewer_pages),
    hot_routes=stow_routes,
    nav_links=(
        NavLink(
            "/imaging/viewer",
            "影像查看",
            "Image viewer",
            frozenset({"radiologist", "specialist", "township_doctor", "village_doctor"}),
        ),
    ),
    event_handlers={STUDY_ROUTED: (on_study_routed,)},
    background_services=(run_dicom_listener, run_stable_monitor, run_export_worker),
    cli_commands=(imaging_cli,),
    metadata=Base.metadata,
    event_labels={
        STUDY_STABLE: ("影像检查已完整接收", "An imaging study was received in full"),
        STUDY_ROUTED: ("影像检查已进入阅片工作列表", "An imaging study is on a reading worklist"),
        REPORT_SIGNED: ("影像报告已签发", "An imaging report was signed"),
        EXPORT_FINISHED: ("去标识化导出已完成，可以下载", "A de-identified export is ready to download"),
    },
)
