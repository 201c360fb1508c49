"""The referral domain as the host sees it (entry point ``telemed.domains:referral``): the API, the FHIR R4 view,
the pages, the SLA job and the links on the home page."""

from referral import events
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
    event_labels={
        events.SUBMITTED: ("有新的转诊申请", "A referral was submitted"),
        events.APPROVED: ("转诊申请已通过卫生院审核", "A referral was approved by the township centre"),
        events.RECEIVED: ("转诊申请已被签收", "A referral was received"),
        events.ACCEPTED: ("转诊已接收并预约", "A referral was accepted"),
        events.REJECTED: ("转诊被拒收", "A referral was declined"),
        events.RETURNED: ("转诊被退回，请补充资料", "A referral was returned for more information"),
        events.RESUBMITTED: ("转诊已补充资料并重新提交", "A referral was resubmitted"),
        events.ARRIVED: ("转诊患者已到诊", "A referred patient has arrived"),
        events.COMPLETED: ("转诊已完成，回执已发出", "A referral was completed"),
        events.DOWN_REFERRED: ("有患者下转回基层", "A patient was referred back down"),
        events.CLOSED: ("转诊已随访结案", "A referral was closed after follow-up"),
        events.WITHDRAWN: ("转诊已撤回", "A referral was withdrawn"),
        events.EXPIRED: ("转诊已超时失效", "A referral expired"),
        events.ESCALATED: ("转诊处理超时，已升级提醒", "A referral is overdue and was escalated"),
    },
)
