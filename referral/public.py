"""What other domains may ask of the referral domain (synchronous queries; no commits, no patient names).

Scheduling books a referral-reserved slot (转诊预留号源) for an accepted referral and needs to know that the
referral exists, where it goes, how urgent it is and until when it is valid.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from referral.models import Referral
from referral.state import SERVICE_REQUEST_STATUS, TASK_STATUS, ReferralStatus


@dataclass(frozen=True, slots=True)
class ReferralView:
    id: uuid.UUID
    patient_id: uuid.UUID
    from_facility_id: uuid.UUID
    to_facility_id: uuid.UUID
    direction: str
    priority: str
    status: str
    task_status: str
    service_request_status: str
    compliant: bool
    valid_until: dt.date | None


async def get_referral(session: AsyncSession, referral_id: uuid.UUID) -> ReferralView | None:
    """Unscoped: the caller checks its own access and audits what it shows."""
    referral = await session.get(Referral, referral_id)
    if referral is None:
        return None
    status = ReferralStatus(referral.status)
    return ReferralView(
        id=referral.id,
        patient_id=referral.patient_id,
        from_facility_id=referral.from_facility_id,
        to_facility_id=referral.to_facility_id,
        direction=referral.direction,
        priority=referral.priority,
        status=status.value,
        task_status=TASK_STATUS[status],
        service_request_status=SERVICE_REQUEST_STATUS[status],
        compliant=referral.compliant,
        valid_until=referral.valid_until,
    )


def is_bookable(view: ReferralView, today: dt.date) -> bool:
    """An accepted referral still within its validity window may have an appointment booked against it."""
    in_window = view.valid_until is None or today <= view.valid_until
    return view.status == ReferralStatus.accepted.value and in_window
