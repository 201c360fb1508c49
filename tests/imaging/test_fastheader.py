"""The fast path of ``read_header`` gives exactly what the reference path (pydicom) gives, and is really taken.

Every file here is read twice: by :func:`read_header` (fast path, falling back to the reference path when it is
not sure) and by ``_read_header_slow`` (the reference path alone). The two outcomes must be identical: the same
:class:`InstanceHeader` with the same JSON text (key order included), or the same refusal with the same reason
code, attribute and messages. For ordinary files the test also checks that the fast path produced the header,
so that it cannot pass by always falling back.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import random
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pydicom
import pydicom.config
import pytest
from pydicom.data import get_testdata_files
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

from imaging import dicomfile
from imaging.dicomfile import InvalidDicom, read_header

from .dicom_factory import (
    CT_IMAGE_STORAGE,
    Charset,
    copy_truncated,
    make_ct_slice,
    make_multiframe_xa,
    make_xray,
    new_uid,
    set_element_length,
    strip_preamble,
    varied_attributes,
)

# Bad and odd files make pydicom warn about what it meets; the outcome is what is compared here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

read_header_slow = dicomfile._read_header_slow
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# The character-set cases of test_dicomfile.test_names_decode: (declared, written as, name).
CHARSET_CASES: list[tuple[Charset, Charset, str]] = [
    ("GB18030", None, "Zhang^San=张^三"),
    ("GBK", None, "陳誠"),
    ("ISO_IR 192", None, "Zhang^San=张^三"),
    ("ISO_IR 100", None, "Müller^Hans"),
    (["", "ISO 2022 IR 58"], None, "Zhang^XiaoDong=张^小东"),
    ("ISO 2022 IR 58", "GB18030", "张^三"),
    (None, "GB18030", "张三"),
    (None, "GB18030", "谢伟"),
    (None, "ISO_IR 192", "张三丰"),
    (None, None, "Smith^John"),
    ("GB2312", "GB18030", "王喆"),
    ("ISO_IR 192", "GB18030", "张三"),
]
CHARSET_IDS = [
    "GB18030",
    "GBK",
    "UTF-8",
    "Latin-1",
    "ISO-2022-IR-58",
    "IR-58-without-escapes",
    "undeclared-GB18030",
    "undeclared-GB18030-valid-UTF-8",
    "undeclared-UTF-8",
    "undeclared-ASCII",
    "misspelt-GB2312",
    "declares-UTF-8-writes-GB18030",
]


def outcome(read: Callable[..., Any], source: Path | bytes, **options: Any) -> tuple[Any, ...]:
    """What one path makes of a file: the header and its JSON text, or the refusal in full."""
    opened: Path | io.BytesIO = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        header = read(opened, **options)
    except InvalidDicom as error:
        return ("refused", error.reason_code, error.attribute, error.message_en, error.message_zh)
    return ("header", header, json.dumps(header.dataset_json, ensure_ascii=False), header.warnings)


def same_both_ways(source: Path | bytes, **options: Any) -> bool:
    """Assert that both paths agree on ``source``; whether the fast path produced the header."""
    reference = outcome(read_header_slow, source, **options)
    taken = dicomfile._FAST_PATH.taken
    fast = outcome(read_header, source, **options)
    assert fast == reference
    return dicomfile._FAST_PATH.taken > taken


def ct(path: Path, *, charset: Charset = "GB18030", patient_name: str = "Zhang^San=张^三", **options: Any) -> Path:
    options.setdefault("rows", 16)
    options.setdefault("cols", 16)
    return make_ct_slice(
        path,
        study_uid=options.pop("study_uid", new_uid()),
        series_uid=options.pop("series_uid", new_uid()),
        sop_uid=options.pop("sop_uid", new_uid()),
        patient_name=patient_name,
        charset=charset,
        **options,
    )


# ----------------------------------------------------------------------------------------------------------------
# A small Explicit VR Little Endian writer, for structures pydicom does not write (undefined lengths, odd values)


def element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == "UI" else b" "
    if vr in EXPLICIT_VR_LENGTH_32:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def item(content: bytes, *, defined: bool) -> bytes:
    if defined:
        return struct.pack("<HHL", 0xFFFE, 0xE000, len(content)) + content
    return struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + content + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)


def sequence(tag: int, items: list[bytes], *, defined: bool, items_defined: bool) -> bytes:
    body = b"".join(item(content, defined=items_defined) for content in items)
    if defined:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"SQ", 0, len(body)) + body
    header = struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, b"SQ", 0, 0xFFFFFFFF)
    return header + body + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)


def part10(dataset: bytes, *, sop_class: str, sop_uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = b"".join(
        (
            element(0x00020001, "OB", b"\x00\x01"),
            element(0x00020002, "UI", sop_class.encode()),
            element(0x00020003, "UI", sop_uid.encode()),
            element(0x00020010, "UI", transfer_syntax.encode()),
            element(0x00020012, "UI", b"1.2.826.0.1.3680043.8.498"),
        )
    )
    return bytes(128) + b"DICM" + element(0x00020000, "UL", struct.pack("<L", len(meta))) + meta + dataset


def crafted(
    *,
    style: str,
    charset: bytes | None = b"ISO_IR 192",
    pixels: str = "none",
    large: bool = True,
    extra: dict[int, bytes] | None = None,
) -> bytes:
    """A file with every structure the fast path handles: sequences of defined and undefined length, nested,
    an item with its own character set, private tags, empty values, several values, bulk and oversized values,
    values that cannot be decoded, group lengths, and trailing padding or Pixel Data. ``large`` adds two values
    of 70 kB (beyond the inline text limit); ``extra`` adds elements."""
    sequence_defined = style in {"defined", "mixed"}
    items_defined = style in {"defined", "mixed-items"}

    def nested(tag: int, items: list[bytes], depth: int = 0) -> bytes:
        # Alternate the encodings with depth in the "mixed" styles, so that every combination meets every other.
        flip = style.startswith("mixed") and depth % 2 == 1
        return sequence(
            tag,
            items,
            defined=sequence_defined != flip,
            items_defined=items_defined != flip,
        )

    sop_class = CT_IMAGE_STORAGE if pixels != "none" else BASIC_TEXT_SR
    sop_uid = new_uid()
    code = element(0x00080100, "SH", b"T-D3000") + element(0x00080104, "LO", "胸部".encode())
    deep_bulk = element(0x00091030, "OB", bytes(3000))  # bulkdata/0040A043/0/0040A168/0/00091030
    references = [
        element(0x00081150, "UI", CT_IMAGE_STORAGE.encode()) + element(0x00081155, "UI", new_uid().encode())
        for _ in range(3)
    ]
    own_charset = (
        element(0x00080005, "CS", b"\\ISO 2022 IR 58")
        + element(0x00321060, "LO", b"\x1b$)A\xd0\xd8\xb2\xbf")  # 胸部 in GB 2312, designated (PS3.5 K.2)
        + element(0x00401001, "SH", b"RP1")
    )
    icon = (
        element(0x00280010, "US", struct.pack("<H", 8))
        + element(0x00280011, "US", struct.pack("<H", 8))
        + element(0x7FE00010, "OB", bytes(range(256)) * 8)  # bulk, inside an item
    )
    elements: dict[int, bytes] = {
        0x00080000: element(0x00080000, "UL", struct.pack("<L", 0)),  # group length: left out of the model
        0x00080008: element(0x00080008, "CS", b"ORIGINAL\\PRIMARY\\\\AXIAL"),
        0x00080016: element(0x00080016, "UI", sop_class.encode()),
        0x00080018: element(0x00080018, "UI", sop_uid.encode()),
        0x00080020: element(0x00080020, "DA", b"20240315"),
        0x00080030: element(0x00080030, "TM", b"093012.123456"),
        0x00080050: element(0x00080050, "SH", b""),
        0x00080060: element(0x00080060, "CS", b"OT"),
        0x00080090: element(0x00080090, "PN", "王^医生".encode()),
        0x00081030: element(0x00081030, "LO", "胸部CT平扫".encode()),
        0x00081140: nested(0x00081140, references),
        0x00089215: nested(0x00089215, [code]),
        0x00091010: element(0x00091010, "LO", b"ACME 1.0"),
        0x00091011: element(0x00091011, "SS", struct.pack("<hh", 1, -1)),
        0x00091012: element(0x00091012, "OB", bytes(2000)),
        0x00091013: element(0x00091013, "OB", b"\x01\x02\x03\x04"),
        0x00091014: element(0x00091014, "FL", struct.pack("<3f", math.nan, math.inf, 1.5)),
        0x00091015: element(0x00091015, "FD", struct.pack("<d", math.nan)),
        0x00091016: element(0x00091016, "SV", struct.pack("<q", 2**60)),
        0x00091017: element(0x00091017, "UV", struct.pack("<Q", 5)),
        0x00091018: element(0x00091018, "AT", struct.pack("<HHHH", 0x0018, 0x1063, 0x0020, 0x9056)),
        0x0009101B: element(0x0009101B, "UL", b"\x01\x02\x03\x04\x05\x06"),  # not a whole number of values
        0x0009101C: element(0x0009101C, "DS", b"1.5\\abc\\\\ 2 \\1e400"),
        0x0009101D: element(0x0009101D, "IS", b"12\\x\\ -3"),
        0x0009101E: element(0x0009101E, "PN", "Zhang^San=张^三\\Li^Si".encode()),
        0x0009101F: element(0x0009101F, "OW", bytes(8)),
        0x00091020: element(0x00091020, "UL", b""),
        0x00091021: element(0x00091021, "SQ", b""),
        0x00091022: nested(0x00091022, []),
        0x00091023: nested(0x00091023, [b"", b""]),
        0x00091024: element(0x00091024, "LO", b"\xff\xfe\xfd\xfc"),
        0x00091025: element(0x00091025, "FL", struct.pack("<f", 2.5)),
        0x00091026: element(0x00091026, "UL", struct.pack("<L", 4000000000)),
        0x00091027: element(0x00091027, "LT", b" leading spaces stay "),
        0x00091028: element(0x00091028, "US", struct.pack("<3H", 1, 2, 3)),
        0x00100010: element(0x00100010, "PN", "Zhang^San=张^三".encode()),
        0x00100020: element(0x00100020, "LO", b"P000001"),
        0x0020000D: element(0x0020000D, "UI", new_uid().encode()),
        0x0020000E: element(0x0020000E, "UI", new_uid().encode()),
        0x00200013: element(0x00200013, "IS", b"7"),
        0x00400275: nested(0x00400275, [own_charset]),
        0x0040A043: nested(0x0040A043, [code + nested(0x0040A168, [code + deep_bulk, b""], depth=2)], depth=1),
        0x00880200: nested(0x00880200, [icon]),
    }
    if charset is not None:
        elements[0x00080005] = element(0x00080005, "CS", charset)
    if large:
        elements[0x00091019] = element(0x00091019, "UT", b"x" * 70000)  # text, as bulk data
        elements[0x0009101A] = element(0x0009101A, "UR", b"http://example.org/" + b"y" * 70000)  # left out
    elements.update(extra or {})
    if pixels == "none":
        elements[0xFFFCFFFC] = element(0xFFFCFFFC, "OB", bytes(64))
    else:
        elements[0x00280004] = element(0x00280004, "CS", b"MONOCHROME2")
        elements[0x00280010] = element(0x00280010, "US", struct.pack("<H", 4))
        elements[0x00280011] = element(0x00280011, "US", struct.pack("<H", 4))
    dataset = b"".join(elements[tag] for tag in sorted(elements))
    transfer_syntax = ExplicitVRLittleEndian
    if pixels == "native":
        dataset += element(0x7FE00010, "OW", bytes(32))
    elif pixels == "encapsulated":
        transfer_syntax = RLELossless
        fragments = item(bytes(8), defined=True) + item(bytes(20), defined=True) + item(bytes(12), defined=True)
        pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF)
        dataset += pixel_header + fragments + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return part10(dataset, sop_class=sop_class, sop_uid=sop_uid, transfer_syntax=transfer_syntax)


def load_imaging_support() -> ModuleType:
    """``loadtests/imaging_support.py``, which makes the benchmark's instances; loadtests is not a package."""
    path = Path(__file__).resolve().parents[2] / "loadtests" / "imaging_support.py"
    spec = importlib.util.spec_from_file_location("imaging_support", path)
    assert spec is not None
    assert spec.loader is not None
    module = sys.modules.get("imaging_support") or importlib.util.module_from_spec(spec)
    if "imaging_support" not in sys.modules:
        sys.modules["imaging_support"] = module
        spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Ordinary files: identical, and read by the fast path


@pytest.mark.parametrize(
    "transfer_syntax", [ExplicitVRLittleEndian, RLELossless, JPEGBaseline8Bit, JPEGLSLossless], ids=str
)
@pytest.mark.parametrize(("declared", "written_as", "name"), CHARSET_CASES, ids=CHARSET_IDS)
def test_factory_slices_in_every_character_set(
    tmp_path: Path, declared: Charset, written_as: Charset, name: str, transfer_syntax: str
) -> None:
    path = ct(
        tmp_path / "ct.dcm",
        charset=declared,
        text_encoding=written_as,
        patient_name=name,
        study_description="胸部CT平扫" if not name.isascii() and "Müller" not in name else "CT CHEST",
        transfer_syntax=transfer_syntax,
    )

    for default_charset in ("GB18030", "ISO_IR 192", "ISO_IR 100"):
        assert same_both_ways(path, default_charset=default_charset)


@pytest.mark.parametrize("bulk_data_threshold", [0, 16, 1024, 100_000])
def test_factory_images_with_sequences_multiframe_and_extras(tmp_path: Path, bulk_data_threshold: int) -> None:
    extra = {
        **varied_attributes(),
        "RedPaletteColorLookupTableData": bytes(4096),
        "ImageComments": "",
        "ImageType": ["ORIGINAL", "", "AXIAL"],
    }
    files = [
        ct(tmp_path / "extras.dcm", charset="ISO_IR 192", extra=extra),
        ct(tmp_path / "multiframe.dcm", frames=5),
        ct(tmp_path / "multiframe-rle.dcm", frames=3, transfer_syntax=RLELossless),
        make_xray(
            tmp_path / "dx.dcm",
            study_uid=new_uid(),
            series_uid=new_uid(),
            sop_uid=new_uid(),
            patient_name="李四",
            charset="GB18030",
            rows=32,
            cols=32,
        ),
        make_multiframe_xa(
            tmp_path / "xa.dcm",
            study_uid=new_uid(),
            series_uid=new_uid(),
            sop_uid=new_uid(),
            patient_name="王五",
            charset=None,
            text_encoding="GB18030",
        ),
        ct(tmp_path / "big.dcm", rows=512, cols=512),
    ]

    for path in files:
        assert same_both_ways(path, bulk_data_threshold=bulk_data_threshold), path.name


@pytest.mark.parametrize("style", ["defined", "undefined", "mixed", "mixed-items"])
@pytest.mark.parametrize("pixels", ["none", "native", "encapsulated"])
@pytest.mark.parametrize(
    "charset",
    [b"ISO_IR 192", b"GB18030", b"ISO_IR 100\\", b" ISO_IR 100\\\xe9", b"KLINGON", b"", None],
    ids=lambda c: repr(c),
)
def test_crafted_structures(tmp_path: Path, style: str, pixels: str, charset: bytes | None) -> None:
    path = tmp_path / "crafted.dcm"
    path.write_bytes(crafted(style=style, charset=charset, pixels=pixels))

    for bulk_data_threshold in (1024, 100_000):
        assert same_both_ways(path, bulk_data_threshold=bulk_data_threshold)

    header = read_header(path)
    assert header.warnings, "the crafted file has values that cannot be decoded or are too large"
    if style != "defined":
        assert b"\xff\xff\xff\xff" in path.read_bytes()[:2000], "undefined lengths were written"


def test_benchmark_instances(tmp_path: Path) -> None:
    factory = load_imaging_support().InstanceFactory()
    study = factory.write_study(tmp_path / "bench", instances=4, per_series=2)
    real_size = load_imaging_support().InstanceFactory(size=512).write_study(tmp_path / "bench512", instances=1)

    for path in (*study.files, *real_size.files):
        assert same_both_ways(path)
        assert same_both_ways(path, default_charset="ISO_IR 192")


# Well-known files among pydicom's own that the fast path must read itself (explicit VR LE, JPEG, RLE, SR, ...).
PYDICOM_ORDINARY = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_padded.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "SC_rgb_rle_2frame.dcm",
    "examples_palette.dcm",
    "liver_1frame.dcm",
    "test-SR.dcm",
    "waveform_ecg.dcm",
]


def test_pydicom_test_files() -> None:
    taken: set[str] = set()
    files = [Path(name) for name in get_testdata_files() if Path(name).is_file()]
    assert len(files) > 100

    for path in files:
        if same_both_ways(path):
            taken.add(path.name)
        same_both_ways(path, default_charset="ISO_IR 192", bulk_data_threshold=64)

    assert set(PYDICOM_ORDINARY) <= taken


# ----------------------------------------------------------------------------------------------------------------
# What the fast path leaves to the reference path


@pytest.mark.parametrize("transfer_syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian], ids=str)
def test_other_encodings_fall_back(tmp_path: Path, transfer_syntax: str) -> None:
    path = ct(tmp_path / "ct.dcm", transfer_syntax=transfer_syntax)

    assert not same_both_ways(path)


def test_file_without_preamble_falls_back(tmp_path: Path) -> None:
    bare = strip_preamble(ct(tmp_path / "ct.dcm"), tmp_path / "bare.dcm")

    assert not same_both_ways(bare)


def test_explicit_un_falls_back(tmp_path: Path) -> None:
    # Window Center sent as UN by a system that did not know it: the data dictionary says DS (PS3.5 §6.2.2).
    path = tmp_path / "un.dcm"
    path.write_bytes(crafted(style="defined", pixels="native", extra={0x00281050: element(0x00281050, "UN", b"40")}))

    assert not same_both_ways(path)
    assert read_header(path).dataset_json["00281050"] == {"vr": "DS", "Value": [40]}


def test_strict_pydicom_configuration_falls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = ct(tmp_path / "ct.dcm")
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode", pydicom.config.RAISE)

    assert not same_both_ways(path)


# ----------------------------------------------------------------------------------------------------------------
# Bad input: the fast path steps aside, and the reason codes are the reference path's


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n" * 40, b"\x89PNG\r\n\x1a\n" + bytes(300), random.Random(7).randbytes(4096)],
    ids=["empty", "text", "png", "random"],
)
def test_not_dicom(content: bytes) -> None:
    assert not same_both_ways(content)
    assert not same_both_ways(bytes(128) + b"DICM" + content)


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, RLELossless], ids=["explicit", "rle"])
def test_truncated(tmp_path: Path, transfer_syntax: str) -> None:
    whole = ct(tmp_path / "ct.dcm", rows=64, cols=64, transfer_syntax=transfer_syntax)
    size = whole.stat().st_size

    for cut in (300, 700, 1001, size // 2, -8, -1):
        assert not same_both_ways(copy_truncated(whole, tmp_path / "cut.dcm", cut))


@pytest.mark.parametrize("keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_uid(tmp_path: Path, keyword: str) -> None:
    assert not same_both_ways(ct(tmp_path / "ct.dcm", omit=[keyword]))


@pytest.mark.parametrize("option", ["study_uid", "series_uid", "sop_uid"])
def test_empty_uid(tmp_path: Path, option: str) -> None:
    assert not same_both_ways(ct(tmp_path / "ct.dcm", **{option: ""}))


@pytest.mark.parametrize(
    "uid",
    ["1.2.3/../../etc/passwd", "../../1.2.3", "1.2.3\\4.5", "1..2", "1.2.03", "1.2.3.", "1.2.3a", "1" * 65, "１.２"],
)
def test_invalid_uid(tmp_path: Path, uid: str) -> None:
    assert not same_both_ways(ct(tmp_path / "ct.dcm", sop_uid=uid))


def test_lengths_beyond_the_file(tmp_path: Path) -> None:
    far = ct(tmp_path / "far.dcm", extra={"TextValue": "x" * 100})
    set_element_length(far, 0x0040A160, 0x7FFFFFF0)
    near = ct(tmp_path / "near.dcm")
    set_element_length(near, 0x00081030, 0xFFFE)

    assert not same_both_ways(far)
    assert not same_both_ways(near)


@pytest.mark.parametrize(
    "transfer_syntax",
    [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless],
    ids=["explicit", "implicit", "rle"],
)
def test_a_file_cut_anywhere(tmp_path: Path, transfer_syntax: str) -> None:
    path = ct(tmp_path / "ct.dcm", rows=4, cols=4, transfer_syntax=transfer_syntax, extra={"TextValue": "x" * 300})
    data = path.read_bytes()

    for size in range(len(data)):
        assert not same_both_ways(data[:size])
    assert same_both_ways(data) == (transfer_syntax != ImplicitVRLittleEndian)


def test_crafted_file_cut_anywhere() -> None:
    data = crafted(style="mixed", pixels="encapsulated", large=False)

    for size in range(0, len(data), 3):
        assert not same_both_ways(data[:size])


def mutations(data: bytes, seed: int, count: int) -> Iterator[bytes]:
    """Copies of ``data`` with a few bytes changed in the header: flipped, a length rewritten, or bytes shifted."""
    rng = random.Random(seed)
    pixel_data = data.rfind(b"\xe0\x7f\x10\x00")
    end = pixel_data + 12 if pixel_data > 0 else len(data)
    for _ in range(count):
        mutated = bytearray(data)
        position = rng.randrange(132, end)
        kind = rng.randrange(4)
        if kind == 0:
            mutated[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            mutated[position] = rng.randrange(256)
        elif kind == 2:
            mutated[position : position + 2] = rng.randbytes(2)
        else:
            mutated[position:position] = rng.randbytes(rng.choice((1, 2, 4)))
        yield bytes(mutated)


def test_damaged_files_get_the_reference_outcome(tmp_path: Path) -> None:
    # Whatever a damaged file holds, the fast path either reads it exactly as the reference path does, or leaves it.
    bases = [
        ct(tmp_path / "ct.dcm", rows=4, cols=4, extra={"WindowCenter": ["40", "300"]}).read_bytes(),
        ct(tmp_path / "rle.dcm", rows=4, cols=4, transfer_syntax=RLELossless).read_bytes(),
        crafted(style="mixed", pixels="native"),
        crafted(style="undefined", charset=b"GB18030", pixels="encapsulated"),
    ]
    outcomes: set[str] = set()

    for seed, base in enumerate(bases):
        for mutated in mutations(base, seed, 150):
            same_both_ways(mutated)
            outcomes.add(outcome(read_header, mutated)[0])

    assert outcomes == {"header", "refused"}


# ----------------------------------------------------------------------------------------------------------------
# Properties of the fast path itself


def test_reads_from_a_file_object_positioned_at_the_start(tmp_path: Path) -> None:
    data = ct(tmp_path / "ct.dcm").read_bytes()
    embedded = io.BytesIO(b"JUNK" + data)
    embedded.seek(4)
    taken = dicomfile._FAST_PATH.taken

    assert read_header(embedded) == read_header_slow(io.BytesIO(data))
    assert dicomfile._FAST_PATH.taken == taken + 1


class CountingReader(io.FileIO):
    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_large_values_before_pixel_data_are_skipped_unread(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", rows=512, cols=512, extra={"RedPaletteColorLookupTableData": bytes(4_000_000)})
    taken = dicomfile._FAST_PATH.taken

    with CountingReader(path) as file:
        header = read_header(file)
        bytes_read = file.bytes_read

    assert dicomfile._FAST_PATH.taken == taken + 1
    assert header.dataset_json["00281201"] == {"vr": "OW", "BulkDataURI": "bulkdata/00281201"}
    assert bytes_read < 64 * 1024


def test_headers_share_no_mutable_values(tmp_path: Path) -> None:
    path = ct(tmp_path / "ct.dcm", extra={"ImageType": ["ORIGINAL", "PRIMARY"]})
    first = read_header(path)
    first.dataset_json["00080008"]["Value"].append("CHANGED")
    first.dataset_json["00080060"]["Value"][0] = "XX"

    second = read_header(path)

    assert second.dataset_json["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}
    assert second.dataset_json["00080060"] == {"vr": "CS", "Value": ["CT"]}
    assert second == read_header_slow(path)


def test_long_length_vrs_agree_with_pydicom() -> None:
    assert {str(vr) for vr in EXPLICIT_VR_LENGTH_32} == dicomfile._LONG_LENGTH_VRS
