"""The referral domain as the host sees it (entry point ``telemed.domains:referral``): the API, the FHIR R4 view,
the pages, the SLA job and the links on the home page."""

from referral.fhir import router as fhir_router
from referral.models import Referral
from referral.router import router as api_router
from referral.sla import sla_service
from referral.web.pages import router as pages_router
from telemed.core.plugins import DomainPlugin, NavLink

#: Who sends referrals: the primary-care doctors, and county specialists sending stable patients back down.
SENDERS = frozenset({"village_doctor", "township_doctor", "specialist"})
CLINICIANS = frozenset({"village_doctor", "township_doctor", "specialist", "radiologist"})

plugin = DomainPlugin(
    name="referral",
    title_zh="双向转诊",
    title_en="Referrals",
    routers=(api_router, fhir_router, pages_router),
    background_services=(sla_service,),
    nav_links=(
        NavLink("/referrals/new", "发起转诊", "New referral", SENDERS),
        NavLink("/referrals/inbox", "转诊工作台", "Referral desk", CLINICIANS),
        NavLink("/referrals/policies", "转诊规则管理", "Referral policy", frozenset({"admin"})),
    ),
    metadata=Referral.metadata,
)
