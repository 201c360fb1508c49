"""The pieces of the ingest path that need no server: what a received file becomes before it is stored."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from imaging.dicomfile import BULK_DATA_URI_PREFIX, read_header
from imaging.ingest import read_received, receive_bytes, stored_document

from .dicom_factory import make_ct_slice, new_uid, varied_attributes


def _reference_document(text: str) -> Any:
    return json.loads(text)


def _slice(directory: Path, patient_name: str, charset: str | None, **options: Any) -> Path:
    """A small CT slice with fresh UIDs."""
    return make_ct_slice(
        directory / "ct.dcm",
        study_uid=new_uid(),
        series_uid=new_uid(),
        sop_uid=new_uid(),
        patient_name=patient_name,
        charset=charset,
        rows=16,
        cols=16,
        **options,
    )


def test_the_stored_document_is_the_compact_json_of_the_header_sorted_by_tag(tmp_path: Path) -> None:
    path = _slice(tmp_path, "王^小明", "GB18030", extra=varied_attributes())
    header = read_header(path)

    text = stored_document(header)

    document = dict(header.dataset_json)
    document["00083002"] = {"vr": "UI", "Value": [header.transfer_syntax_uid]}
    by_json_module = json.dumps(dict(sorted(document.items())), ensure_ascii=False, separators=(",", ":"))
    instance = (
        f"studies/{header.study_instance_uid}/series/{header.series_instance_uid}/instances/{header.sop_instance_uid}/"
    )
    relative = '"BulkDataURI":"' + BULK_DATA_URI_PREFIX
    assert relative in by_json_module  # the icon's pixel data is bulk data
    assert text == by_json_module.replace(relative, '"BulkDataURI":"' + instance + BULK_DATA_URI_PREFIX)
    assert "王^小明" in text  # UTF-8 text, not escapes
    assert list(_reference_document(text)) == sorted(document)


def test_a_number_beyond_64_bits_is_still_stored(tmp_path: Path) -> None:
    """orjson refuses integers beyond 64 bits (a malformed IS value could give one); the json module takes it."""
    path = _slice(tmp_path, "A", None)
    header = read_header(path)
    huge = dataclasses.replace(header, dataset_json={**header.dataset_json, "00200013": {"vr": "IS", "Value": [2**70]}})

    assert _reference_document(stored_document(huge))["00200013"] == {"vr": "IS", "Value": [2**70]}


def test_a_file_read_from_memory_is_read_as_from_disk(tmp_path: Path) -> None:
    path = _slice(tmp_path, "张三", "ISO_IR 192")
    spool = tmp_path / "spool"
    spool.mkdir()

    from_disk = read_received(3, path, default_charset="GB18030")
    from_memory = receive_bytes(3, path.read_bytes(), spool, default_charset="GB18030")

    assert from_memory.path.parent == spool
    assert from_memory.path.read_bytes() == path.read_bytes()
    assert dataclasses.replace(from_memory, path=path) == from_disk
