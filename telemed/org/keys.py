"""Key rotation of the protected patient identifiers (GB/T 39786: keys are replaced, old data re-encrypted)."""

from __future__ import annotations

from sqlalchemy import func, select

from telemed.core.audit import SYSTEM_ACTOR, AuditAction, AuditEntry
from telemed.core.context import AppContext
from telemed.core.uow import UnitOfWork
from telemed.org.models import Patient
from telemed.org.service import PATIENT, encrypt_patient_identifiers


async def rotate_patient_keys(ctx: AppContext, *, batch: int = 500) -> int:
    """Re-encrypt every patient row not yet under the current key version; returns how many rows changed.

    Runs in batches, each its own transaction, so a large registry never holds one long write lock and an
    interrupted run simply resumes.
    """
    cipher, changed = ctx.cipher, 0
    while True:
        async with UnitOfWork(ctx, ctx.db.session, SYSTEM_ACTOR) as uow:
            rows = (
                await uow.session.scalars(
                    select(Patient).where(Patient.key_version != cipher.current_version).limit(batch)
                )
            ).all()
            if not rows:
                return changed
            for patient in rows:
                row_id = str(patient.id)
                id_number = cipher.decrypt(patient.id_number_enc, table=PATIENT, column="id_number", row_id=row_id)
                phone = (
                    cipher.decrypt(patient.phone_enc, table=PATIENT, column="phone", row_id=row_id)
                    if patient.phone_enc
                    else None
                )
                encrypt_patient_identifiers(uow, patient, id_number, phone)
            uow.audit(AuditEntry(AuditAction.update, "patient_keys", None, purpose="key_rotation",
                                 detail={"rows": len(rows), "to_version": cipher.current_version}))  # fmt: skip
            await uow.commit()
            changed += len(rows)


async def key_versions_in_use(ctx: AppContext) -> dict[int, int]:
    async with ctx.db.read_session() as session:
        rows = await session.execute(select(Patient.key_version, func.count()).group_by(Patient.key_version))
        return {int(version): int(count) for version, count in rows.all()}
