"""De-identified export (PS3.15 E.1 Basic Profile): a Chinese-named CT series leaves with none of its identifiers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from imaging.deid import (
    TABLE_E1_1,
    Action,
    BurnedInAnnotationRefused,
    ProfileOptions,
    UidMapper,
    deidentify,
    deidentify_study_files,
    profile_actions,
    resolve_action,
)
from tests.imaging.dicom_factory import CT_IMAGE_STORAGE, make_ct_slice, new_uid

PATIENT_NAME = "Zhang^San=张^三"
CHINESE_VALUES = ("张", "三", "李", "王", "赵", "钱", "青田", "温溪", "放射科", "胸部", "私有")

IDENTIFYING_EXTRAS: dict[str, Any] = {
    "InstitutionAddress": "浙江省丽水市青田县鹤城街道",
    "InstitutionalDepartmentName": "放射科",
    "StationName": "CT01-QT",
    "DeviceSerialNumber": "SN-88231",
    "OperatorsName": "王^五",
    "PerformingPhysicianName": "赵^六",
    "NameOfPhysiciansReadingStudy": "钱^七",
    "OtherPatientIDs": "QT-OTHER-42",
    "PatientAddress": "青田县温溪镇",
    "PatientTelephoneNumbers": "13800138000",
    "PatientAge": "066Y",
    "PatientWeight": "61.5",
    "SeriesDate": "20240315",
    "SeriesTime": "093500",
    "AcquisitionDate": "20240315",
    "AcquisitionTime": "093512",
    "ContentDate": "20240315",
    "ContentTime": "093513",
    "InstanceCreationDate": "20240315",
    "ProtocolName": "胸部平扫",
    "ImageComments": "患者张三 复查",
    "StudyID": "QT2024-77",
}


def _walk(dataset: Dataset) -> Iterator[DataElement]:
    for element in dataset:
        yield element
        if element.VR == "SQ":
            for item in element.value:
                yield from _walk(item)


def _values(element: DataElement) -> set[str]:
    value = element.value
    if value is None or value == "" or element.VR == "SQ":
        return set()
    items = value if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue" else [value]
    return {str(item) for item in items if str(item)}


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    """Three slices of a GB18030 CT series; slice 2 and 3 reference slice 1, every file has a private block."""
    study_uid, series_uid = new_uid(), new_uid()
    # The factory's default frame of reference UID is pydicom's implementation UID, which the File Meta keeps.
    extras = {**IDENTIFYING_EXTRAS, "FrameOfReferenceUID": new_uid()}
    sop_uids = [new_uid() for _ in range(3)]
    paths = []
    for number, sop_uid in enumerate(sop_uids, start=1):
        path = make_ct_slice(
            tmp_path / "in" / f"ct-{number}.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=sop_uid,
            patient_name=PATIENT_NAME,
            charset="GB18030",
            rows=16,
            cols=16,
            instance_number=number,
            patient_id="QT-000123",
            institution="青田县人民医院",
            referring_physician="Li^Si=李^四",
            extra=extras,
        )
        ds = pydicom.dcmread(path)
        if number > 1:
            reference = Dataset()
            reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
            reference.ReferencedSOPInstanceUID = sop_uids[0]
            ds.ReferencedImageSequence = DicomSequence([reference])
        block = ds.private_block(0x0009, "QINGTIAN PACS 1.0", create=True)
        block.add_new(0x01, "LO", "张三 私有备注")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def test_no_listed_attribute_keeps_its_value_and_no_identifier_is_left_in_the_bytes(
    series: list[Path], tmp_path: Path
) -> None:
    listed = set(profile_actions())
    outputs = deidentify_study_files(series, tmp_path / "out")

    assert len(outputs) == len(series)
    for source, output in zip(series, outputs, strict=True):
        original = pydicom.dcmread(source)
        exported = pydicom.dcmread(output)
        original_values: dict[int, set[str]] = {}
        for element in _walk(original):
            if element.tag in listed:
                original_values.setdefault(element.tag, set()).update(_values(element))
        assert original_values[0x00100010] == {PATIENT_NAME}  # the GB18030 name was really decoded

        for element in _walk(exported):
            assert not element.tag.is_private, f"private {element.tag} left"
            if element.tag in listed:
                kept = _values(element) & original_values.get(element.tag, set())
                assert not kept, f"{element.keyword or element.tag} kept an original value"

        raw = output.read_bytes()
        for text in CHINESE_VALUES:
            assert text.encode("gb18030") not in raw, "Chinese identifying text left in the file"
        for text in ("Zhang", "Li^Si", "QT-000123", "13800138000", "SN-88231", "CT01-QT", "A20240315001"):
            assert text.encode() not in raw
        for uid in (original.StudyInstanceUID, original.SeriesInstanceUID, original.SOPInstanceUID):
            assert uid.encode() not in raw
        assert original.FrameOfReferenceUID.encode() not in raw

        assert exported.PatientIdentityRemoved == "YES"
        assert exported.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert exported.DeidentificationMethodCodeSequence[0].CodingSchemeDesignator == "DCM"
        assert exported.PatientName == ""
        assert exported.PatientID == ""
        assert "InstitutionAddress" not in exported
        assert "RequestAttributesSequence" not in exported
        assert exported.StationName == "ANONYMIZED"  # X/Z/D: a dummy keeps any IOD valid
        assert exported.SeriesDate == "19000101"
        # What is not identifying is kept, and the pixels are untouched.
        assert exported.Modality == "CT"
        assert exported.SOPClassUID == original.SOPClassUID
        assert exported.RescaleIntercept == original.RescaleIntercept
        assert exported.PixelData == original.PixelData
        assert exported.file_meta.MediaStorageSOPInstanceUID == exported.SOPInstanceUID
        assert output.name == f"{exported.SOPInstanceUID}.dcm"


def test_uids_are_replaced_consistently_across_the_series(series: list[Path], tmp_path: Path) -> None:
    outputs = [pydicom.dcmread(path) for path in deidentify_study_files(series, tmp_path / "out")]
    originals = [pydicom.dcmread(path) for path in series]

    assert len({ds.StudyInstanceUID for ds in outputs}) == 1
    assert len({ds.SeriesInstanceUID for ds in outputs}) == 1
    assert len({ds.FrameOfReferenceUID for ds in outputs}) == 1
    assert len({ds.SOPInstanceUID for ds in outputs}) == 3
    for ds in outputs:
        for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
            assert uid.startswith("2.25.")
            assert len(uid) <= 64
            assert int(uid[5:]) > 0
    assert outputs[0].StudyInstanceUID != originals[0].StudyInstanceUID
    # The references between instances still point at the right (new) instance.
    for ds in outputs[1:]:
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == outputs[0].SOPInstanceUID
        assert ds.ReferencedImageSequence[0].ReferencedSOPClassUID == CT_IMAGE_STORAGE


def test_a_mapper_is_deterministic_for_one_export_and_unlinkable_across_exports() -> None:
    uid = "1.2.826.0.1.3680043.8.498.12345"
    first = UidMapper()
    assert first.map(uid) == first.map(uid + "\0") == first(uid)
    assert UidMapper().map(uid) != first.map(uid)
    key = b"k" * 32
    assert UidMapper(key).map(uid) == UidMapper(key).map(uid)
    with pytest.raises(ValueError, match="16 bytes"):
        UidMapper(b"short")


def test_deidentify_returns_a_copy_and_leaves_the_input_alone(series: list[Path]) -> None:
    original = pydicom.dcmread(series[0])
    exported = deidentify(original, uid_map=UidMapper())
    assert str(original.PatientName) == PATIENT_NAME
    assert exported.PatientName == ""
    assert exported.StudyInstanceUID != original.StudyInstanceUID


def test_burned_in_annotation_is_refused_unless_the_caller_opts_in(series: list[Path], tmp_path: Path) -> None:
    flagged = pydicom.dcmread(series[1])
    flagged.BurnedInAnnotation = "YES"
    flagged.save_as(series[1], enforce_file_format=True)

    with pytest.raises(BurnedInAnnotationRefused):
        deidentify(flagged, uid_map=UidMapper())
    out = tmp_path / "refused"
    with pytest.raises(BurnedInAnnotationRefused):
        deidentify_study_files(series, out)
    assert list(out.iterdir()) == []  # checked before anything was written

    allowed = deidentify_study_files(
        series, tmp_path / "allowed", profile_options=ProfileOptions(allow_burned_in_annotation=True)
    )
    assert len(allowed) == 3
    assert pydicom.dcmread(allowed[1]).BurnedInAnnotation == "YES"


def test_retain_options_keep_what_they_name_and_are_recorded(series: list[Path]) -> None:
    original = pydicom.dcmread(series[0])
    options = ProfileOptions(
        retain_patient_characteristics=True,
        retain_long_full_dates=True,
        retain_institution_identity=True,
        patient_pseudonym="RESEARCH-0007",
    )
    exported = deidentify(original, uid_map=UidMapper(), profile_options=options)
    assert exported.PatientSex == "M"
    assert exported.PatientAge == "066Y"
    assert exported.StudyDate == "20240315"
    assert exported.InstitutionName == "青田县人民医院"
    assert exported.PatientName == "RESEARCH-0007"
    assert exported.PatientID == "RESEARCH-0007"
    assert exported.StationName == "ANONYMIZED"  # device identity was not retained
    assert exported.LongitudinalTemporalInformationModified == "UNMODIFIED"
    codes = {item.CodeValue for item in exported.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113106", "113108", "113112"}


def test_a_dummy_sequence_keeps_its_structure_and_loses_its_text() -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "GB18030"
    text = Dataset()
    text.UnformattedTextValue = "张三 左肺"
    text.BoundingBoxAnnotationUnits = "PIXEL"
    layer = Dataset()
    layer.GraphicLayer = "LAYER1"
    layer.TextObjectSequence = DicomSequence([text])
    ds.GraphicAnnotationSequence = DicomSequence([layer])
    person = Dataset()
    person.CodeValue = "QT-DR-17"
    person.CodingSchemeDesignator = "QINGTIAN"
    person.CodeMeaning = "李四"
    ds.PersonIdentificationCodeSequence = DicomSequence([person])

    exported = deidentify(ds, uid_map=UidMapper())

    kept_text = exported.GraphicAnnotationSequence[0].TextObjectSequence[0]
    assert kept_text.UnformattedTextValue == "ANONYMIZED"
    assert kept_text.BoundingBoxAnnotationUnits == "PIXEL"  # coded values keep the object valid
    assert exported.PersonIdentificationCodeSequence[0].CodeMeaning == "ANONYMIZED"
    assert exported.PersonIdentificationCodeSequence[0].CodeValue == "ANONYMIZED"


def test_the_table_names_real_attributes_and_resolves_every_code() -> None:
    actions = profile_actions()
    assert len(actions) == len(TABLE_E1_1)
    assert resolve_action("X/Z", "LO") is Action.empty
    assert resolve_action("X/Z/D", "PN") is Action.dummy
    assert resolve_action("Z/D", "DA") is Action.dummy
    assert resolve_action("X/Z/D", "SQ") is Action.remove
    assert resolve_action("X/Z/U*", "SQ") is Action.clean_items
    assert resolve_action("D", "SQ") is Action.dummy
    with pytest.raises(ValueError, match="unknown"):
        resolve_action("Q", "LO")
