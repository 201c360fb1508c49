"""Facts the registry publishes. Payloads carry identifiers only: no names, ID numbers or phone numbers."""

from __future__ import annotations

import uuid

from telemed.core.events import DomainEvent


def patient_registered(patient_id: uuid.UUID, facility_id: uuid.UUID, by_user: uuid.UUID) -> DomainEvent:
    return DomainEvent(
        name="patient.registered",
        payload={
            "patient_id": str(patient_id),
            "facility_id": str(facility_id),
            "registered_by": str(by_user),
        },
        audience_facilities=(str(facility_id),),
    )


def staff_disabled(user_id: uuid.UUID) -> DomainEvent:
    return DomainEvent(name="staff.disabled", payload={"user_id": str(user_id)})
