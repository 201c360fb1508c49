"""Field encryption of ID and phone numbers: SM4-GCM ciphertext at rest, row-bound, rotatable."""

from __future__ import annotations

import datetime as dt
import uuid

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text

from telemed.core.config import Settings
from telemed.core.context import AppContext
from telemed.core.crypto import CryptoError, FieldCipher
from telemed.org.idcard import make_id_number
from telemed.org.keys import key_versions_in_use, rotate_patient_keys
from telemed.org.models import Patient
from telemed.org.service import PATIENT
from tests.conftest import Community, register

ID_1 = make_id_number("331121", dt.date(1950, 2, 3), 111)
ID_2 = make_id_number("331121", dt.date(1962, 7, 8), 222)


def test_round_trip_and_row_binding() -> None:
    cipher = FieldCipher.from_settings(Settings(environment="test"))
    token = cipher.encrypt(ID_1, table="patient", column="id_number", row_id="row-1")
    assert token.startswith("v1:")
    assert ID_1 not in token
    assert cipher.decrypt(token, table="patient", column="id_number", row_id="row-1") == ID_1
    with pytest.raises(CryptoError):  # moved to another row
        cipher.decrypt(token, table="patient", column="id_number", row_id="row-2")
    with pytest.raises(CryptoError):  # moved to another column
        cipher.decrypt(token, table="patient", column="phone", row_id="row-1")
    assert cipher.encrypt(ID_1, table="patient", column="id_number", row_id="row-1") != token  # fresh nonce
    assert cipher.blind_index(ID_1, purpose="a") == cipher.blind_index(ID_1, purpose="a")
    assert cipher.blind_index(ID_1, purpose="a") != cipher.blind_index(ID_1, purpose="b")


async def test_raw_database_holds_no_plaintext_identifiers(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    headers = await community.login(client, "vd_a1")
    assert (await register(client, headers, ID_1, phone="13611112222")).status_code == 201
    async with app.state.ctx.db.read_session() as session:
        rows = (await session.execute(text("SELECT * FROM patient"))).all()
    dump = repr(rows)
    assert ID_1 not in dump
    assert "13611112222" not in dump
    assert "v1:" in dump


async def test_swapped_ciphertexts_do_not_decrypt(
    app: FastAPI, client: httpx.AsyncClient, community: Community
) -> None:
    headers = await community.login(client, "vd_a1")
    first = (await register(client, headers, ID_1)).json()["id"]
    second = (await register(client, headers, ID_2)).json()["id"]
    ctx: AppContext = app.state.ctx
    async with ctx.db.session() as session, session.begin():
        a = await session.get(Patient, uuid.UUID(first))
        b = await session.get(Patient, uuid.UUID(second))
        assert a is not None
        assert b is not None
        with pytest.raises(CryptoError):
            ctx.cipher.decrypt(b.id_number_enc, table=PATIENT, column="id_number", row_id=str(a.id))


async def test_key_rotation_re_encrypts_every_row(
    app: FastAPI, client: httpx.AsyncClient, community: Community, settings: Settings
) -> None:
    headers = await community.login(client, "vd_a1")
    ids = [(await register(client, headers, n, phone="13700001111")).json()["id"] for n in (ID_1, ID_2)]
    old_ctx: AppContext = app.state.ctx
    assert await key_versions_in_use(old_ctx) == {1: 2}

    rotated = AppContext.build(settings.model_copy(update={"field_key_version": 2}))
    try:
        assert rotated.cipher.versions == {1, 2}
        assert await rotate_patient_keys(rotated) == 2
        assert await key_versions_in_use(rotated) == {2: 2}
        assert await rotate_patient_keys(rotated) == 0  # nothing left under v1
        async with rotated.db.read_session() as session:
            patients = (await session.scalars(select(Patient))).all()
        for patient in patients:
            assert patient.id_number_enc.startswith("v2:")
            number = rotated.cipher.decrypt(patient.id_number_enc, table=PATIENT, column="id_number",
                                            row_id=str(patient.id))  # fmt: skip
            assert number in (ID_1, ID_2)
        v2_only = FieldCipher({2: rotated.cipher._keys[2]}, 2, rotated.cipher._blind_index_key)
        assert v2_only.decrypt(patients[0].id_number_enc, table=PATIENT, column="id_number",
                               row_id=str(patients[0].id)) in (ID_1, ID_2)  # fmt: skip
        # The blind index is keyed apart from the field keys: lookups find the person after rotation.
        async with rotated.db.read_session() as session:
            found = await session.scalar(
                select(Patient.id).where(
                    Patient.id_number_bidx == rotated.cipher.blind_index(ID_1, purpose="patient.id_number")
                )
            )
        assert str(found) == ids[0]
    finally:
        await rotated.db.dispose()
