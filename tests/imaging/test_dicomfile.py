"""Reading DICOM headers for ingest: fields, character sets, the JSON model, and every way a file is refused."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from imaging.dicomfile import (
    BULK_DATA_URI_PREFIX,
    DicomProblem,
    InstanceHeader,
    InvalidDicom,
    read_header,
    resolve_bulk_data_uris,
    validate_uid,
)

from .dicom_factory import (
    CT_IMAGE_STORAGE,
    DIGITAL_XRAY_FOR_PRESENTATION,
    Charset,
    copy_truncated,
    make_ct_slice,
    make_dataset,
    make_xray,
    new_uid,
    set_element_length,
    strip_preamble,
    varied_attributes,
    write,
)

# These tests write invalid UIDs and cut files on purpose; pydicom warns about what it meets while reading them.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Invalid value for VR UI:UserWarning",
    "ignore:The value length .* exceeds:UserWarning",
    "ignore:Unknown encoding:UserWarning",
)


def ct(path: Path, *, patient_name: str = "Zhang^San=张^三", charset: Charset = "GB18030", **options: Any) -> Path:
    return make_ct_slice(
        path,
        study_uid=options.pop("study_uid", new_uid()),
        series_uid=options.pop("series_uid", new_uid()),
        sop_uid=options.pop("sop_uid", new_uid()),
        patient_name=patient_name,
        charset=charset,
        **options,
    )


def refused(path: Path | io.BytesIO, problem: DicomProblem) -> InvalidDicom:
    with pytest.raises(InvalidDicom) as caught:
        read_header(path)
    assert caught.value.reason_code is problem, caught.value.message_en
    assert caught.value.message_zh
    return caught.value


class CountingReader(io.FileIO):
    """A file that counts the bytes read from it."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


# ----------------------------------------------------------------------------------------------------------------
# What ingest gets from a good file


def test_ct_slice_header(tmp_path: Path) -> None:
    study, series, sop = new_uid(), new_uid(), new_uid()
    path = ct(
        tmp_path / "ct.dcm",
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        study_description="胸部CT平扫",
        series_description="轴位 5mm",
        referring_physician="王^医生",
        series_number=3,
        instance_number=17,
    )

    header = read_header(path)

    assert header == InstanceHeader(
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_name="Zhang^San=张^三",
        patient_id="P000001",
        patient_birth_date="19580704",
        patient_sex="M",
        study_date="20240315",
        study_time="093012",
        accession_number="A20240315001",
        study_description="胸部CT平扫",
        referring_physician_name="王^医生",
        modality="CT",
        body_part_examined="CHEST",
        series_number=3,
        series_description="轴位 5mm",
        instance_number=17,
        number_of_frames=1,
        rows=512,
        columns=512,
        specific_character_set=("GB18030",),
        dataset_json=header.dataset_json,
        warnings=(),
    )


def test_xray_header(tmp_path: Path) -> None:
    path = make_xray(
        tmp_path / "dx.dcm",
        study_uid=new_uid(),
        series_uid=new_uid(),
        sop_uid=new_uid(),
        patient_name="李四",
        charset="GB18030",
    )

    header = read_header(path)

    assert header.sop_class_uid == DIGITAL_XRAY_FOR_PRESENTATION
    assert header.modality == "DX"
    assert header.patient_name == "李四"
    assert (header.rows, header.columns, header.number_of_frames) == (1024, 1024, 1)
    assert header.dataset_json["00185101"] == {"vr": "CS", "Value": ["PA"]}


def test_pixel_data_is_neither_read_nor_kept(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm")
    file_size = path.stat().st_size
    assert file_size > 512 * 512 * 2

    with CountingReader(path) as file:
        header = read_header(file)
        bytes_read = file.bytes_read

    assert bytes_read < 8 * 1024, "read_header read into the pixel data"
    assert len(json.dumps(header.dataset_json)) < 8 * 1024
    assert header.dataset_json["7FE00010"] == {"vr": "OW", "BulkDataURI": BULK_DATA_URI_PREFIX + "7FE00010"}
    assert not any(isinstance(getattr(header, name), bytes) for name in header.__slots__)


def test_reads_from_a_file_object_positioned_at_the_start(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", patient_name="张三")
    embedded = io.BytesIO(b"JUNK" + path.read_bytes())
    embedded.seek(4)

    assert read_header(embedded).patient_name == "张三"


@pytest.mark.parametrize(
    ("transfer_syntax", "pixel_vr"),
    [(ImplicitVRLittleEndian, "OW"), (ExplicitVRLittleEndian, "OW"), (RLELossless, "OB")],
)
def test_transfer_syntaxes(tmp_path: Path, transfer_syntax: str, pixel_vr: str) -> None:
    path = ct(tmp_path / "ct.dcm", patient_name="王喆", transfer_syntax=transfer_syntax, rows=64, cols=64)

    header = read_header(path)

    assert header.transfer_syntax_uid == transfer_syntax
    assert header.patient_name == "王喆"
    assert header.dataset_json["7FE00010"]["vr"] == pixel_vr
    # The VR comes from the data dictionary when the file does not carry it.
    assert header.dataset_json["00281050"] == {"vr": "DS", "Value": [40]}
    assert header.dataset_json["00280010"] == {"vr": "US", "Value": [64]}


def test_deflated_transfer_syntax(tmp_path: Path) -> None:
    # The whole data set is deflated (PS3.5 A.5), so offsets are not file offsets and Pixel Data is not peeked at.
    path = ct(tmp_path / "ct.dcm", patient_name="张三", rows=8, cols=8, transfer_syntax=DeflatedExplicitVRLittleEndian)

    header = read_header(path)

    assert header.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert header.patient_name == "张三"
    assert "7FE00010" not in header.dataset_json
    refused(io.BytesIO(path.read_bytes()[:-10]), DicomProblem.truncated)


def test_multiframe_count(tmp_path: Path) -> None:
    path = ct(tmp_path / "mf.dcm", rows=32, cols=32, frames=5)

    assert read_header(path).number_of_frames == 5


def test_file_without_preamble_is_read(tmp_path: Path) -> None:
    source = ct(tmp_path / "ct.dcm", patient_name="张三", rows=16, cols=16)
    bare = strip_preamble(source, tmp_path / "bare.dcm")

    header = read_header(bare)

    assert header.patient_name == "张三"
    assert header.sop_instance_uid == read_header(source).sop_instance_uid


# ----------------------------------------------------------------------------------------------------------------
# Character sets (PS3.3 C.12.1.1.2, PS3.5 §6.1)


@pytest.mark.parametrize(
    ("declared", "written_as", "name"),
    [
        pytest.param("GB18030", None, "Zhang^San=张^三", id="GB18030"),
        pytest.param("GBK", None, "陳誠", id="GBK-0x5C-second-byte"),
        pytest.param("ISO_IR 192", None, "Zhang^San=张^三", id="UTF-8"),
        pytest.param("ISO_IR 100", None, "Müller^Hans", id="Latin-1"),
        pytest.param(["", "ISO 2022 IR 58"], None, "Zhang^XiaoDong=张^小东", id="ISO-2022-IR-58"),
        pytest.param("ISO 2022 IR 58", "GB18030", "张^三", id="IR-58-without-escapes"),
        pytest.param(None, "GB18030", "张三", id="undeclared-GB18030"),
        pytest.param(None, "GB18030", "谢伟", id="undeclared-GB18030-that-is-also-valid-UTF-8"),
        pytest.param(None, "ISO_IR 192", "张三丰", id="undeclared-UTF-8"),
        pytest.param(None, None, "Smith^John", id="undeclared-ASCII"),
        pytest.param("GB2312", "GB18030", "王喆", id="misspelt-GB2312-with-GBK-character"),
        pytest.param("ISO_IR 192", "GB18030", "张三", id="declares-UTF-8-writes-GB18030"),
    ],
)
def test_names_decode(tmp_path: Path, declared: Charset, written_as: Charset, name: str) -> None:
    description = "CT CHEST" if "Müller" in name or name.isascii() else "胸部CT平扫"
    path = ct(
        tmp_path / "ct.dcm",
        patient_name=name,
        charset=declared,
        text_encoding=written_as,
        study_description=description,
        rows=16,
        cols=16,
    )

    header = read_header(path)

    assert header.patient_name == name
    assert header.study_description == description
    # Items inherit the character set (PS3.5 §7.5.3).
    request = header.dataset_json["00400275"]["Value"][0]
    assert request["00321060"]["Value"] == [description]
    assert header.warnings == ()


def test_iso_2022_ir_58_file_really_has_escape_sequences(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", patient_name="Zhang^XiaoDong=张^小东=", charset=["", "ISO 2022 IR 58"])

    assert b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=" in path.read_bytes()  # PS3.5 K.2
    assert read_header(path).specific_character_set == ("", "ISO 2022 IR 58")


def test_default_charset_is_configurable(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", patient_name="Ærø^Åse", charset=None, text_encoding="ISO_IR 100")

    assert read_header(path, default_charset="ISO_IR 100").patient_name == "Ærø^Åse"
    assert read_header(path, default_charset="GB18030").patient_name != "Ærø^Åse"


def test_unknown_default_charset_is_a_programming_error(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8)

    with pytest.raises(ValueError, match="default_charset"):
        read_header(path, default_charset="KLINGON")


def test_undecodable_text_is_reported_not_garbled(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", patient_name="张三", charset="GB18030", rows=8, cols=8)
    data = path.read_bytes().replace("张三".encode("gb18030"), b"\xff\xfe\xfd\xfc")
    path.write_bytes(data)

    header = read_header(path)

    assert header.patient_name is not None
    assert "\ufffd" in header.patient_name
    assert header.warnings == ("(0010,0010): text not valid in the declared character set",)


def test_multi_valued_text_splits_after_decoding(tmp_path: Path) -> None:
    # 誠 is 0xD5 0x5C in GBK: splitting the bytes at 0x5C ('\\') first would cut it in half.
    path = ct(
        tmp_path / "ct.dcm", patient_name="陳誠\\王五", charset="GBK", study_description="誠\\胸部", rows=8, cols=8
    )

    header = read_header(path)

    assert header.dataset_json["00100010"]["Value"] == [{"Alphabetic": "陳誠"}, {"Alphabetic": "王五"}]
    assert header.dataset_json["00081030"]["Value"] == ["誠", "胸部"]


# ----------------------------------------------------------------------------------------------------------------
# The DICOM JSON model (PS3.18 Annex F)


def test_json_model(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", extra={"ImageComments": "", "ImageType": ["ORIGINAL", "", "AXIAL"]})

    model = read_header(path).dataset_json

    assert list(model) == sorted(model), "attributes must be in tag order (F.2.2)"
    assert not any(key.endswith("0000") or key.startswith("0002") for key in model)
    assert model["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Zhang^San", "Ideographic": "张^三"}]}
    assert model["00200013"] == {"vr": "IS", "Value": [1]}
    assert model["00281053"] == {"vr": "DS", "Value": [1]}
    assert model["00280030"] == {"vr": "DS", "Value": [0.976562, 0.976562]}
    assert model["00280100"] == {"vr": "US", "Value": [16]}
    assert model["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}  # F.2.5
    assert model["00204000"] == {"vr": "LT"}  # empty: no Value
    assert model["00400275"]["vr"] == "SQ"
    json.dumps(model, allow_nan=False)


def test_bulk_binary_values_become_uris(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8, extra={"RedPaletteColorLookupTableData": bytes(4096)})

    header = read_header(path)
    model = header.dataset_json

    assert model["00281201"] == {"vr": "OW", "BulkDataURI": "bulkdata/00281201"}
    resolved = resolve_bulk_data_uris(model, "https://pacs.example/dicom-web/studies/1/series/2/instances/3/")
    assert resolved["00281201"]["BulkDataURI"] == (
        "https://pacs.example/dicom-web/studies/1/series/2/instances/3/bulkdata/00281201"
    )
    assert model["00281201"]["BulkDataURI"] == "bulkdata/00281201", "the stored model is not modified"


def _bulk_uris_replaced(model: dict[str, Any], text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, attribute in model.items():
        if "BulkDataURI" in attribute:
            attribute = {**attribute, "BulkDataURI": text}
        elif attribute["vr"] == "SQ" and "Value" in attribute:
            attribute = {**attribute, "Value": [_bulk_uris_replaced(item, text) for item in attribute["Value"]]}
        result[key] = attribute
    return result


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian], ids=["explicit", "implicit"]
)
def test_json_model_agrees_with_pydicom(tmp_path: Path, transfer_syntax: str) -> None:
    # For UTF-8, which pydicom decodes correctly, the two must agree on everything but Pixel Data (not read here).
    extra = varied_attributes()
    path = ct(tmp_path / "ct.dcm", charset="ISO_IR 192", rows=8, cols=8, transfer_syntax=transfer_syntax, extra=extra)

    ours = read_header(path).dataset_json
    theirs = pydicom.dcmread(path, stop_before_pixels=True).to_json_dict(1024, lambda _: "bulk")

    assert ours.pop("7FE00010")["BulkDataURI"] == "bulkdata/7FE00010"
    assert ours["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"] == "bulkdata/00880200/0/7FE00010"
    assert _bulk_uris_replaced(ours, "bulk") == theirs


def test_ambiguous_vr_in_implicit_vr_follows_pixel_representation(tmp_path: Path) -> None:
    # (0028,0106) is "US or SS" in the dictionary; implicit VR leaves it to Pixel Representation (PS3.5 A.1).
    ds = make_dataset(
        sop_class_uid=CT_IMAGE_STORAGE,
        modality="CT",
        study_uid=new_uid(),
        series_uid=new_uid(),
        sop_uid=new_uid(),
        patient_name="Smith",
        charset=None,
        rows=4,
        cols=4,
        transfer_syntax=ImplicitVRLittleEndian,
        extra={"PixelRepresentation": 1},
    )
    ds[0x00280106] = RawDataElement(Tag(0x00280106), None, 2, b"\x00\x80", 0, True, True)

    header = read_header(write(ds, tmp_path / "ct.dcm"))

    assert header.dataset_json["00280106"] == {"vr": "SS", "Value": [-32768]}


# ----------------------------------------------------------------------------------------------------------------
# Files that are refused


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n" * 40, b"\x89PNG\r\n\x1a\n" + bytes(300), random.Random(7).randbytes(4096)],
    ids=["empty", "text", "png", "random"],
)
def test_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(content)

    refused(path, DicomProblem.not_dicom)


def test_truncated_in_pixel_data(tmp_path: Path) -> None:
    whole = ct(tmp_path / "ct.dcm")

    error = refused(copy_truncated(whole, tmp_path / "cut.dcm", whole.stat().st_size // 2), DicomProblem.truncated)

    assert error.attribute == "(7FE0,0010)"


def test_truncated_by_one_byte(tmp_path: Path) -> None:
    whole = ct(tmp_path / "ct.dcm", rows=16, cols=16)

    refused(copy_truncated(whole, tmp_path / "cut.dcm", -1), DicomProblem.truncated)


@pytest.mark.parametrize("size", [300, 700, 1001])
def test_truncated_in_the_header(tmp_path: Path, size: int) -> None:
    whole = ct(tmp_path / "ct.dcm", rows=16, cols=16)

    refused(copy_truncated(whole, tmp_path / "cut.dcm", size), DicomProblem.truncated)


def test_truncated_encapsulated_pixel_data(tmp_path: Path) -> None:
    whole = ct(tmp_path / "ct.dcm", transfer_syntax=RLELossless, rows=64, cols=64)
    assert read_header(whole).transfer_syntax_uid == RLELossless

    # Cut off the Sequence Delimitation Item only: every fragment is whole, the end marker is missing.
    refused(copy_truncated(whole, tmp_path / "cut.dcm", -8), DicomProblem.truncated)


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid(tmp_path: Path, keyword: str) -> None:
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8, omit=[keyword])

    assert refused(path, DicomProblem.missing_uid).attribute == keyword


def test_empty_uid_counts_as_missing(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8, study_uid="")

    assert refused(path, DicomProblem.missing_uid).attribute == "StudyInstanceUID"


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.3/../../etc/passwd",
        "../../1.2.3",
        "1.2.3\\4.5",  # two values
        "1..2",
        "1.2.03",
        "1.2.3.",
        ".1.2.3",
        "1.2.3a",
        "1.2 .3",
        "1" * 65,
        "１.２.３",  # full-width digits
    ],
)
def test_invalid_uid(tmp_path: Path, uid: str) -> None:
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8, sop_uid=uid)

    error = refused(path, DicomProblem.invalid_uid)

    assert error.attribute == "SOPInstanceUID"
    assert uid not in error.message_en


def test_length_far_beyond_the_file(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8, extra={"TextValue": "x" * 100})
    set_element_length(path, 0x0040A160, 0x7FFFFFF0)

    error = refused(path, DicomProblem.length_beyond_file)

    assert error.attribute == "(0040,A160)"


def test_a_length_past_the_end_in_the_middle_of_the_header(tmp_path: Path) -> None:
    # Study Description claims 64 KB in a file of about 1 KB: the value swallows the rest of the file.
    path = ct(tmp_path / "ct.dcm", rows=8, cols=8)
    set_element_length(path, 0x00081030, 0xFFFE)

    error = refused(path, DicomProblem.truncated)

    assert error.attribute == "(0008,1030)"


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless],
    ids=["explicit", "implicit", "rle"],
)
def test_a_file_cut_anywhere_is_refused(tmp_path: Path, transfer_syntax: str) -> None:
    # Including exactly between two elements, which pydicom reads as a complete, shorter data set.
    path = ct(tmp_path / "ct.dcm", rows=4, cols=4, transfer_syntax=transfer_syntax, extra={"TextValue": "x" * 300})
    data = path.read_bytes()

    outcomes: dict[int, str] = {}
    for size in range(len(data)):
        try:
            read_header(io.BytesIO(data[:size]))
        except InvalidDicom as error:
            outcomes[size] = error.reason_code.value
        else:
            outcomes[size] = "accepted"

    assert {outcomes[size] for size in range(132)} == {"dicom.not_dicom"}
    assert {outcomes[size] for size in range(132, len(data))} == {"dicom.truncated"}


def test_errors_name_no_patient_data(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", patient_name="张三", rows=8, cols=8, omit=["StudyInstanceUID"])

    error = refused(path, DicomProblem.missing_uid)

    assert "张三" not in error.message_en + error.message_zh + str(error)


# ----------------------------------------------------------------------------------------------------------------
# UID syntax (PS3.5 §9.1)


@pytest.mark.parametrize(
    "uid", ["0", "1.2.840.10008.5.1.4.1.1.2", "2.25.329800735698586629295641978511506172918", "1." + "2" * 62]
)
def test_valid_uids(uid: str) -> None:
    assert validate_uid(uid)


@pytest.mark.parametrize(
    "uid", ["", "00", "1.02", "1.", ".1", "1..2", "a.b", "1/2", "1\\2", "1.2 ", " 1.2", "1." + "2" * 63, "٣.٤"]
)
def test_invalid_uids(uid: str) -> None:
    assert not validate_uid(uid)
