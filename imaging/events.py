"""Facts the imaging domain publishes. Payloads carry UIDs, ids and codes only: never names or patient IDs."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

from telemed.core.events import DomainEvent

STUDY_STABLE: Final = "imaging.study_stable"
STUDY_ROUTED: Final = "imaging.study_routed"


def _audience(facility_id: uuid.UUID | None) -> tuple[str, ...]:
    return (str(facility_id),) if facility_id else ()


def study_stable(
    *,
    study_uid: str,
    facility_id: uuid.UUID | None,
    modalities: Sequence[str],
    body_parts: Sequence[str],
    series_count: int,
    instance_count: int,
) -> DomainEvent:
    """No instance arrived for the quiet period (Orthanc's "stable study"): the study is complete enough to read."""
    return DomainEvent(
        name=STUDY_STABLE,
        payload={
            "study_uid": study_uid,
            "facility_id": str(facility_id) if facility_id else None,
            "modalities": list(modalities),
            "body_parts": list(body_parts),
            "series_count": series_count,
            "instance_count": instance_count,
        },
        audience_facilities=_audience(facility_id),
    )


def study_routed(
    *,
    study_uid: str,
    facility_id: uuid.UUID | None,
    worklist_code: str,
    target_facility_code: str,
    department_code: str,
    priority: str,
    rule: str,
) -> DomainEvent:
    """The routing rules put a stable study on a county department's reading worklist."""
    return DomainEvent(
        name=STUDY_ROUTED,
        payload={
            "study_uid": study_uid,
            "facility_id": str(facility_id) if facility_id else None,
            "worklist_code": worklist_code,
            "target_facility_code": target_facility_code,
            "department_code": department_code,
            "priority": priority,
            "rule": rule,
        },
        audience_facilities=_audience(facility_id),
    )
