"""Real DICOM Part-10 files for tests, interop checks and benchmarks.

Text attributes are written as raw bytes in the character set under test, so a file can declare one character
set and carry another (or declare none), as real equipment does. ``ISO 2022 IR 58`` is written the way PS3.5
Annex K shows it, with ``ESC $ ) A`` before each run of GB 2312 characters: pydicom 3.0 writes that character
set without the escape sequences.

Pixel data is a cheap repeating pattern. For compressed transfer syntaxes the frames are encapsulated as they are
(PS3.5 A.4) without being compressed: fine for header, ingest and storage tests, not for decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.2"
DIGITAL_XRAY_FOR_PRESENTATION: Final = "1.2.840.10008.5.1.4.1.1.1.1"
XA_IMAGE_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.12.1"

#: A Specific Character Set value as in (0008,0005): one term, several (code extensions), or none at all.
Charset = str | Sequence[str] | None

_TEXT_CODECS: Final = {"GB18030": "gb18030", "GBK": "gbk", "ISO_IR 192": "utf-8", "ISO_IR 100": "latin-1"}
_ISO2022_RESETTING: Final = frozenset("^=\\\r\n\t\f")
_FOUR_BYTE_LENGTH_VRS: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR"})


def new_uid() -> str:
    return str(generate_uid())


def _terms(charset: Charset) -> list[str]:
    if charset is None:
        return []
    return [charset] if isinstance(charset, str) else list(charset)


def encode_text(text: str, charset: Charset) -> bytes:
    """``text`` as the bytes a writer using ``charset`` puts in a value (PS3.5 §6.1)."""
    meaningful = [term for term in _terms(charset) if term not in ("", "ISO_IR 6")]
    if not meaningful:
        return text.encode("ascii")
    term = meaningful[0]
    if term == "ISO 2022 IR 58":
        return _encode_iso2022_ir58(text)
    return text.encode(_TEXT_CODECS.get(term) or python_encoding[term])


def _encode_iso2022_ir58(text: str) -> bytes:
    # GB 2312 is designated to G1 with ESC $ ) A and sent in GR; a delimiter returns to the initial state
    # (PS3.5 §6.1.2.5.3), so each run after '^', '=' or '\\' is designated again (PS3.5 Annex K.2).
    out = bytearray()
    designated = False
    for char in text:
        if ord(char) < 0x80:
            out += char.encode("ascii")
            if char in _ISO2022_RESETTING:
                designated = False
            continue
        if not designated:
            out += b"\x1b$)A"
            designated = True
        out += char.encode("gb2312")
    return bytes(out)


def _raw(tag: int, vr: str, value: bytes, *, implicit: bool) -> RawDataElement:
    pad = b"\x00" if vr == "UI" else b" "
    if len(value) % 2:
        value += pad
    return RawDataElement(Tag(tag), vr, len(value), value, 0, implicit, True)


def _pixel_pattern(size: int) -> bytes:
    block = bytes(range(256)) * 64
    repeats, rest = divmod(size, len(block))
    return block * repeats + block[:rest]


def make_dataset(
    *,
    sop_class_uid: str,
    modality: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient_name: str,
    charset: Charset,
    text_encoding: Charset | None = None,
    rows: int,
    cols: int,
    bits_allocated: int = 16,
    frames: int = 1,
    patient_id: str = "P000001",
    study_description: str = "CT CHEST",
    series_description: str = "AXIAL 5mm",
    referring_physician: str = "Li^Si",
    institution: str = "County Hospital",
    series_number: int = 1,
    instance_number: int = 1,
    transfer_syntax: str = ExplicitVRLittleEndian,
    omit: Collection[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> Dataset:
    """A minimal but realistic image instance; text goes in as bytes encoded with ``text_encoding``.

    ``charset`` is what (0008,0005) declares (``None``: the attribute is absent); ``text_encoding`` is how the
    text is really encoded (defaults to ``charset``). ``omit`` drops attributes by keyword after building, and
    ``extra`` sets attributes by keyword (with pydicom's own encoding) before that.
    """
    syntax = UID(transfer_syntax)
    implicit = syntax == ImplicitVRLittleEndian
    encoding = charset if text_encoding is None else text_encoding

    ds = Dataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid or "1.2.3")
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta

    terms = _terms(charset)
    if terms:
        ds.SpecificCharacterSet = terms if len(terms) > 1 else terms[0]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    for tag, value in (
        (0x00080016, sop_class_uid),
        (0x00080018, sop_uid),
        (0x0020000D, study_uid),
        (0x0020000E, series_uid),
        (0x00200052, "1.2.826.0.1.3680043.8.498.1"),
    ):
        # Raw, so that tests can write invalid UIDs without pydicom correcting or warning about them.
        ds[tag] = _raw(tag, "UI", value.encode("utf-8"), implicit=implicit)
    ds.StudyDate = "20240315"
    ds.StudyTime = "093012"
    ds.AccessionNumber = "A20240315001"
    ds.Modality = modality
    for tag, vr, text in (
        (0x00080080, "LO", institution),
        (0x00080090, "PN", referring_physician),
        (0x00081030, "LO", study_description),
        (0x0008103E, "LO", series_description),
        (0x00100010, "PN", patient_name),
    ):
        ds[tag] = _raw(tag, vr, encode_text(text, encoding), implicit=implicit)
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19580704"
    ds.PatientSex = "M"
    ds.BodyPartExamined = "CHEST"
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.PatientPosition = "HFS"

    request = Dataset()
    request[0x00321060] = _raw(0x00321060, "LO", encode_text(study_description, encoding), implicit=implicit)
    request.RequestedProcedureID = "RP1"
    ds.RequestAttributesSequence = [request]
    # pydicom re-encodes raw text on writing unless a data set's "original" character set equals its current
    # one, which would turn the bytes under test into mojibake. An item's current one is pydicom's default
    # until it is written (it does not look at the parent).
    python_encodings = convert_encodings(terms or None)
    request.set_original_encoding(implicit, True, default_encoding)

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = 12 if bits_allocated == 16 else bits_allocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    frame = _pixel_pattern(rows * cols * (bits_allocated // 8))
    if syntax.is_compressed:
        ds.PixelData = encapsulate([frame] * frames)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = frame * frames
        ds["PixelData"].VR = "OW" if bits_allocated > 8 else "OB"

    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    for keyword in omit:
        if keyword in ds:
            delattr(ds, keyword)
    ds.set_original_encoding(implicit, True, python_encodings)
    return ds


def write(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def varied_attributes() -> dict[str, Any]:
    """``extra`` attributes that exercise a header reader: a sequence of 50 items, a nested icon image with its
    own pixel data, multi-valued and empty strings, AT values, a date-time with fractions."""
    references = []
    for _ in range(50):
        reference = Dataset()
        reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        reference.ReferencedSOPInstanceUID = new_uid()
        references.append(reference)
    icon = Dataset()
    icon.Rows = icon.Columns = 64
    icon.BitsAllocated = 8
    icon.PixelData = bytes(4096)
    return {
        "ReferencedImageSequence": references,
        "IconImageSequence": [icon],
        "WindowCenter": ["40", "300"],
        "AcquisitionDateTime": "20240315093012.123456",
        "DerivationDescription": "",
        "PatientAge": "065Y",
        "FrameIncrementPointer": 0x00181063,
        "DimensionIndexPointer": [0x00209056, 0x00209128],
        "SliceLocation": "-12.50",
    }


def make_ct_slice(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient_name: str,
    charset: Charset,
    rows: int = 512,
    cols: int = 512,
    **options: Any,
) -> Path:
    """A CT Image Storage instance (PS3.3 A.3), 16-bit, 512x512 by default, written to ``path``.

    ``options`` are the keyword arguments of :func:`make_dataset` (``text_encoding``, ``instance_number``,
    ``transfer_syntax``, ``omit``, ``extra`` ...).
    """
    options.setdefault("extra", {})
    options["extra"] = {
        "SliceThickness": "5.0",
        "ImagePositionPatient": [-250.0, -250.0, -5.0 * options.get("instance_number", 1)],
        "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
        "PixelSpacing": [0.976562, 0.976562],
        "RescaleIntercept": "-1024",
        "RescaleSlope": "1",
        "WindowCenter": "40",
        "WindowWidth": "400",
        "KVP": "120",
        **options["extra"],
    }
    ds = make_dataset(
        sop_class_uid=CT_IMAGE_STORAGE,
        modality="CT",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        patient_name=patient_name,
        charset=charset,
        rows=rows,
        cols=cols,
        **options,
    )
    return write(ds, path)


def make_xray(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient_name: str,
    charset: Charset,
    rows: int = 1024,
    cols: int = 1024,
    **options: Any,
) -> Path:
    """A Digital X-Ray Image Storage - For Presentation instance (PS3.3 A.26), chest PA."""
    options.setdefault("study_description", "DR CHEST")
    options.setdefault("series_description", "CHEST PA")
    options["extra"] = {
        "PresentationIntentType": "FOR PRESENTATION",
        "ImagerPixelSpacing": [0.139, 0.139],
        "ViewPosition": "PA",
        "ImageType": ["ORIGINAL", "PRIMARY"],
        **options.get("extra", {}),
    }
    ds = make_dataset(
        sop_class_uid=DIGITAL_XRAY_FOR_PRESENTATION,
        modality="DX",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        patient_name=patient_name,
        charset=charset,
        rows=rows,
        cols=cols,
        **options,
    )
    return write(ds, path)


def make_multiframe_xa(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    patient_name: str,
    charset: Charset,
    frames: int = 3,
    rows: int = 64,
    cols: int = 64,
    **options: Any,
) -> Path:
    """An X-Ray Angiographic Image Storage instance (PS3.3 A.14), a cine run of ``frames`` frames.

    Each frame is a left-to-right ramp of 12-bit values shifted by a third of the range per frame, so that
    frames rendered with the stored window (2048/4096) differ visibly from one another.
    """
    options.setdefault("study_description", "XA CORONARY")
    options.setdefault("series_description", "LCA CINE")
    options["extra"] = {
        "FrameTime": "66.7",
        "FrameIncrementPointer": 0x00181063,  # Frame Time (PS3.3 C.7.6.6)
        "PositionerMotion": "STATIC",
        "WindowCenter": "2048",
        "WindowWidth": "4096",
        "ImageType": ["ORIGINAL", "PRIMARY", "SINGLE PLANE"],
        **options.get("extra", {}),
    }
    ds = make_dataset(
        sop_class_uid=XA_IMAGE_STORAGE,
        modality="XA",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        patient_name=patient_name,
        charset=charset,
        rows=rows,
        cols=cols,
        frames=frames,
        **options,
    )
    ramps = []
    for frame in range(frames):
        row = [(column * 4096 // cols + frame * 1365) % 4096 for column in range(cols)]
        ramps.append(struct.pack(f"<{cols}H", *row) * rows)
    ds.PixelData = b"".join(ramps)
    ds["PixelData"].VR = "OW"
    return write(ds, path)


def make_ct_series(
    directory: Path,
    *,
    count: int,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "Zhang^San=张^三",
    charset: Charset = "GB18030",
    rows: int = 512,
    cols: int = 512,
    **options: Any,
) -> list[Path]:
    """``count`` slices of one CT series, named ``ct-0001.dcm`` ...; for interop tests and benchmarks."""
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    return [
        make_ct_slice(
            directory / f"ct-{number:04d}.dcm",
            study_uid=study_uid,
            series_uid=series_uid,
            sop_uid=new_uid(),
            patient_name=patient_name,
            charset=charset,
            rows=rows,
            cols=cols,
            instance_number=number,
            **options,
        )
        for number in range(1, count + 1)
    ]


def copy_truncated(source: Path, target: Path, size: int) -> Path:
    """A copy of ``source`` cut after ``size`` bytes (negative: that many bytes short), like a broken upload."""
    data = source.read_bytes()
    target.write_bytes(data[:size])
    return target


def set_element_length(path: Path, tag: int, length: int) -> None:
    """Overwrite the declared length of the first ``tag`` element in an explicit VR little endian file."""
    data = bytearray(path.read_bytes())
    needle = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    position = data.find(needle, 132)
    if position < 0:
        raise LookupError(f"tag {tag:08X} not found")
    vr = bytes(data[position + 4 : position + 6])
    if vr in _FOUR_BYTE_LENGTH_VRS or vr in {b"UT"}:
        data[position + 8 : position + 12] = struct.pack("<L", length)
    else:
        data[position + 6 : position + 8] = struct.pack("<H", length)
    path.write_bytes(bytes(data))


def strip_preamble(source: Path, target: Path) -> Path:
    """The bare data set (no preamble, no File Meta), as some older equipment writes files."""
    data = source.read_bytes()
    group_length = struct.unpack("<L", data[140:144])[0]
    target.write_bytes(data[144 + group_length :])
    return target
