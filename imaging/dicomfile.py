"""The header of a DICOM Part-10 file, read for ingest without touching pixel data.

:func:`read_header` parses a file (PS3.10 §7: 128-byte preamble, ``DICM``, File Meta Information, data set) up
to the Pixel Data element, checks that the file is whole and that its identifying UIDs are safe to index, and
returns an :class:`InstanceHeader`: the attributes an index needs, plus the DICOM JSON model (PS3.18 Annex F) of
the header so that WADO-RS metadata can be served from the index without re-reading files.

Text is decoded here rather than by pydicom, because the Chinese cases need policy that pydicom does not have:

* no Specific Character Set (0008,0005): the site default (GB18030 in China) is used, after a check for UTF-8
  that cannot misfire on GB text (see :func:`_looks_like_cjk_utf8`);
* ``ISO 2022 IR 58``: pydicom 3.0 leaves the ``ESC $ ) A`` designations in the decoded text and decodes GB 2312
  bytes sent without an escape as Latin-1; both are handled here (PS3.5 §6.1.2.5, Annex K);
* common misspellings (``GB2312``, ``UTF-8``, ``ISO_IR 58``) are mapped to the defined terms of PS3.3 C.12.1.1.2.

Two paths read a file, with the same result. The reference path has pydicom parse the data set. The fast path,
taken for the common file (preamble and ``DICM``, an Explicit VR Little Endian data set), walks the elements
straight from the bytes, several times faster, and hands the file to the reference path whenever it meets
anything it does not handle with certainty, so bad input is always classified by the reference path.
``tests/imaging/test_fastheader.py`` proves the two equal; ``loadtests/bench_header.py`` measures them.
"""

from __future__ import annotations

import base64
import functools
import math
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import IO, Any, ClassVar, Final, cast

import pydicom
import pydicom.config
import pydicom.hooks
from pydicom.charset import decode_bytes, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID

__all__ = [
    "BULK_DATA_URI_PREFIX",
    "DEFAULT_BULK_DATA_THRESHOLD",
    "DicomProblem",
    "InstanceHeader",
    "InvalidDicom",
    "read_header",
    "resolve_bulk_data_uris",
    "validate_uid",
]

#: Binary values longer than this many bytes are left out of the JSON model and replaced by a BulkDataURI.
DEFAULT_BULK_DATA_THRESHOLD: Final = 1024
#: Text values up to this size stay inline; beyond it they become bulk data too (PS3.18 F.2.2 allows it).
_INLINE_TEXT_LIMIT: Final = 64 * 1024
#: Prefix of the BulkDataURI placeholders in :attr:`InstanceHeader.dataset_json`. The index does not know the
#: public base URL, so the placeholder is relative to the instance's WADO-RS URL; see
#: :func:`resolve_bulk_data_uris`. Path segments after the prefix: tag, then item index and tag for nested items.
BULK_DATA_URI_PREFIX: Final = "bulkdata/"

_UID_MAX_LENGTH: Final = 64
_UID_SHAPE: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_FAR_BEYOND_BYTES: Final = 64 * 1024 * 1024
_PIXEL_DATA_TAGS: Final = {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}
_ITEM_TAG: Final = 0xFFFEE000
_SEQUENCE_DELIMITER_TAG: Final = 0xFFFEE0DD
_DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"
_ENCODING_TO_TRANSFER_SYNTAX: Final = {
    (True, True): "1.2.840.10008.1.2",  # implicit VR little endian
    (False, True): "1.2.840.10008.1.2.1",  # explicit VR little endian
    (False, False): "1.2.840.10008.1.2.2",  # explicit VR big endian (retired)
}

# PS3.5 Table 6.2-1 value representations, grouped by how the JSON model encodes them (PS3.18 Table F.2.3-1).
_BINARY_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_NUMERIC_VRS: Final = {"FL": "f", "FD": "d", "SL": "l", "SS": "h", "SV": "q", "UL": "L", "US": "H", "UV": "Q"}
_STRING_VRS: Final = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_SINGLE_VALUED_STRING_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
# Leading spaces are significant in these (PS3.5 §6.2), so only trailing padding is removed.
_TRAILING_PADDING_ONLY_VRS: Final = frozenset({"LT", "ST", "UT", "UR", "DT", "DA", "TM", "PN"})
_TEXT_BULK_VRS: Final = frozenset({"DS", "IS", "LT", "ST", "UC", "UT"})
_KNOWN_VRS: Final = _BINARY_VRS | frozenset(_NUMERIC_VRS) | _STRING_VRS | {"AT", "SQ"}
_INTEGER_STRING: Final = re.compile(r"[+-]?[0-9]{1,12}")
_DECIMAL_STRING: Final = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_SAFE_JSON_INTEGER: Final = 2**53  # beyond this a JSON Number loses precision in JavaScript viewers

# Delimiters that return ISO 2022 decoding to the initial character set (PS3.5 §6.1.2.5.3).
_PN_DELIMITERS: Final = {0x5C, 0x3D, 0x5E}
_TEXT_DELIMITERS: Final = {0x5C, 0x0D, 0x0A, 0x09, 0x0C}
# Designate GB 2312 to G1 / return G0 to ASCII. DICOM sends GB 2312 in GR, so once these are removed the bytes
# are EUC-CN, which the GB18030 codec decodes (PS3.5 Annex K).
_GB2312_ESCAPES: Final = (b"\x1b$)A", b"\x1b(B")

# Non-standard spellings seen from Chinese modalities and PACS, mapped to the PS3.3 C.12.1.1.2 defined terms.
# GB2312 data is a subset of GB18030, so GB18030 decodes it and also the GBK-only characters
# (e.g. 喆, 堃, 誠) that a strict GB2312 codec would refuse.
_CHARSET_ALIASES: Final = {
    "GB2312": "GB18030",
    "GB-2312": "GB18030",
    "GB_2312": "GB18030",
    "EUC-CN": "GB18030",
    "CHINESE": "GB18030",
    "ISO_IR 58": "GB18030",
    "ISO 2022 58": "ISO 2022 IR 58",
    "CP936": "GBK",
    "ISO 2022 GBK": "GBK",
    "GB 18030": "GB18030",
    "GB18030-2005": "GB18030",
    "UTF-8": "ISO_IR 192",
    "UTF8": "ISO_IR 192",
}
_ASCII_TERMS: Final = frozenset({"", "ISO_IR 6", "ISO 2022 IR 6"})


class DicomProblem(StrEnum):
    """Why a file is refused; each value is a stable reason code for API clients and STOW responses."""

    not_dicom = "dicom.not_dicom"
    malformed = "dicom.malformed"
    truncated = "dicom.truncated"
    length_beyond_file = "dicom.length_beyond_file"
    missing_uid = "dicom.missing_uid"
    invalid_uid = "dicom.invalid_uid"


class InvalidDicom(ValueError):
    """A file that cannot be ingested. Messages never contain patient data (CONVENTIONS: no PHI in errors)."""

    http_status: ClassVar[int] = 400
    #: Failure Reason for the STOW-RS response: 0xC000 "Error: Cannot understand" (PS3.18 §10.5.3, PS3.4 GG.4).
    failure_reason: ClassVar[int] = 0xC000

    def __init__(
        self, reason_code: DicomProblem, message_en: str, message_zh: str, *, attribute: str | None = None
    ) -> None:
        super().__init__(f"{reason_code.value}: {message_en}")
        self.reason_code = reason_code
        self.message_en = message_en
        self.message_zh = message_zh
        #: The keyword of the attribute at fault (``SOPInstanceUID``), or a tag like ``(0010,0010)``.
        self.attribute = attribute


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """What ingest learns from one instance without reading its pixel data.

    Text attributes are ``None`` when absent or empty; person names are the full decoded value, component
    groups joined by ``=`` (PS3.5 §6.2.1.1), e.g. ``"Zhang^San=张^三"`` or just ``"张三"``. Dates and times stay
    the DICOM strings (DA ``YYYYMMDD``, TM ``HHMMSS.FFFFFF``): they carry no time zone, and a malformed date must
    not cost an image; the index decides how to interpret them.
    """

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    study_description: str | None
    referring_physician_name: str | None
    modality: str | None
    body_part_examined: str | None
    series_number: int | None
    series_description: str | None
    instance_number: int | None
    #: NumberOfFrames when given; otherwise 1 for an image (Rows and Columns present) and 0 for a non-image.
    number_of_frames: int
    rows: int | None
    columns: int | None
    #: (0008,0005) exactly as declared; empty when the file declares none.
    specific_character_set: tuple[str, ...]
    #: PS3.18 F.2 DICOM JSON model of the data set (no File Meta group), bulk values as BulkDataURI
    #: placeholders (see :data:`BULK_DATA_URI_PREFIX`). Treat it as read-only.
    dataset_json: dict[str, Any] = field(repr=False)
    #: Non-fatal problems, by tag only (never values): undecodable text, values omitted as oversized, ...
    warnings: tuple[str, ...] = ()


def validate_uid(uid: str) -> bool:
    """Whether ``uid`` is a UID as PS3.5 §9.1 defines it.

    At most 64 characters, components of ASCII digits separated by single dots, no leading zero in a component
    other than ``"0"`` itself. This also guarantees that a UID is safe as a path segment or file name: it cannot
    hold ``/``, ``\\``, ``..``, spaces or anything but digits and dots.
    """
    return 0 < len(uid) <= _UID_MAX_LENGTH and _UID_SHAPE.fullmatch(uid) is not None


# --------------------------------------------------------------------------------------------------------------
# Character sets (PS3.3 C.12.1.1.2, PS3.5 §6.1)


@dataclass(frozen=True, slots=True)
class _TextDecoder:
    """How to turn the bytes of one string value into text, for one Specific Character Set."""

    codec: str
    fallbacks: tuple[str, ...] = ()
    #: Only when no character set is declared: accept bytes that can only be UTF-8 CJK text as UTF-8.
    sniff_utf8: bool = False
    #: Python encodings for ISO 2022 code extensions other than GB 2312 (Japanese, Korean), decoded by pydicom.
    iso2022: tuple[str, ...] = ()

    def decode(self, raw: bytes, delimiters: set[int]) -> tuple[str, bool]:
        """The text and whether it was lossy (bytes replaced by U+FFFD)."""
        if b"\x1b" in raw:
            stripped = raw
            for escape in _GB2312_ESCAPES:
                stripped = stripped.replace(escape, b"")
            if b"\x1b" in stripped and self.iso2022:
                return decode_bytes(raw, list(self.iso2022), delimiters), False
            raw = stripped
        if raw.isascii():
            return raw.decode("ascii"), False
        if self.sniff_utf8 and _looks_like_cjk_utf8(raw):
            return raw.decode("utf-8"), False
        for codec in (self.codec, *self.fallbacks):
            try:
                return raw.decode(codec), False
            except UnicodeDecodeError:
                continue
        return raw.decode(self.codec, errors="replace"), True


def _is_cjk_or_ascii(char: str) -> bool:
    code = ord(char)
    return (
        code < 0x80
        or 0x3000 <= code <= 0x303F  # CJK symbols and punctuation
        or 0x3400 <= code <= 0x4DBF  # CJK extension A
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0xF900 <= code <= 0xFAFF  # CJK compatibility ideographs
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
        or 0x20000 <= code <= 0x3134F  # CJK extensions B-G
    )


def _looks_like_cjk_utf8(raw: bytes) -> bool:
    """Valid UTF-8 whose non-ASCII characters are all CJK.

    GB 2312 text is valid UTF-8 surprisingly often (18% of single characters, 3% of two-character names), but
    then it decodes to Cyrillic, Arabic and the like, never to CJK only: in a test of 800,000 random GB 2312
    names of 1-4 characters this check accepted 5. So it can tell UTF-8 from GB18030 where nothing is declared.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(_is_cjk_or_ascii(char) for char in text)


@functools.lru_cache(maxsize=256)
def _canonical_term(term: str) -> str:
    cleaned = " ".join(term.strip().upper().split())
    if cleaned in _CHARSET_ALIASES:
        return _CHARSET_ALIASES[cleaned]
    if match := re.fullmatch(r"ISO[ _-]?2022[ _-]?IR[ _-]?(\d+)", cleaned):
        return f"ISO 2022 IR {match.group(1)}"
    if match := re.fullmatch(r"ISO[ _-]?IR[ _-]?(\d+)", cleaned):
        cleaned = f"ISO_IR {match.group(1)}"
    return _CHARSET_ALIASES.get(cleaned, cleaned)


def _single_charset_decoder(term: str) -> _TextDecoder:
    if term == "ISO_IR 192":
        # A modality that declares UTF-8 but writes GBK is a known misconfiguration; UTF-8 rejects GB bytes.
        return _TextDecoder("utf-8", fallbacks=("gb18030",))
    if term in {"GB18030", "GBK", "ISO 2022 IR 58"}:
        # GB18030 is a superset of GBK and of EUC-CN (GB 2312 in GR), so one codec covers the three.
        return _TextDecoder("gb18030", fallbacks=("utf-8",))
    return _TextDecoder(python_encoding[term])


@functools.lru_cache(maxsize=16)
def _default_decoder(default_charset: str) -> _TextDecoder:
    term = _canonical_term(default_charset)
    if term not in python_encoding or term.startswith("ISO 2022"):
        raise ValueError(f"default_charset must be a single-byte or stand-alone defined term: {default_charset!r}")
    decoder = _single_charset_decoder(term)
    if decoder.codec == "utf-8":
        return decoder
    return _TextDecoder(decoder.codec, fallbacks=decoder.fallbacks, sniff_utf8=True)


def _decoder_for(declared: tuple[str, ...], default: _TextDecoder) -> tuple[_TextDecoder, str | None]:
    """The decoder for a declared (0008,0005), and a note when the declaration was not usable as given."""
    terms = [_canonical_term(term) for term in declared]
    meaningful = [term for term in terms if term not in _ASCII_TERMS]
    if not meaningful:
        # Absent, or ISO_IR 6 only: pure ASCII reads the same in every default, and bytes above 0x7F
        # mean the writer left the real character set out.
        return default, None
    if any(term not in python_encoding for term in meaningful):
        return default, "(0008,0005): unknown character set, site default applied"
    if len(meaningful) == 1 or set(meaningful) == {"ISO 2022 IR 58"}:
        return _single_charset_decoder(meaningful[0]), None
    # Several code extensions (e.g. Japanese ISO 2022 IR 87 with IR 13): pydicom implements PS3.5 §6.1.2.5.
    encodings = tuple(python_encoding[term] for term in terms)
    return _TextDecoder(encodings[0], iso2022=encodings), None


# --------------------------------------------------------------------------------------------------------------
# Reading


class _GuardedReader:
    """The file as pydicom sees it: reads never ask for more than remains, and a partial read is noted.

    pydicom reads a declared length with a single ``read(n)``; CPython allocates ``n`` bytes up front, so a
    hostile length of 4 GB would be a 4 GB allocation. pydicom also accepts a short read silently, which is how a
    truncated file would slip through.
    """

    def __init__(self, raw: IO[bytes], end: int) -> None:
        self._raw = raw
        self._start = raw.tell()
        self._end = end
        #: Where the first read came back short, and how many bytes it asked for.
        self.partial_read: tuple[int, int] | None = None

    def read(self, size: int | None = -1) -> bytes:
        position = self._raw.tell()
        remaining = max(self._end - position, 0)
        wanted = remaining if size is None or size < 0 else size
        data = self._raw.read(min(wanted, remaining))
        if 0 < len(data) < wanted and self.partial_read is None:
            self.partial_read = (position, wanted)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    @property
    def end(self) -> int:
        return self._end

    @property
    def size(self) -> int:
        return self._end - self._start

    def at_end(self) -> bool:
        return self._raw.tell() >= self._end

    def read_exactly(self, position: int, size: int) -> bytes:
        self._raw.seek(position)
        return self._raw.read(size)


def _tags(ds: Dataset) -> list[int]:
    # Not ``iter(ds)``: iterating a pydicom Dataset converts every element, reading deferred values.
    return sorted(map(int, ds.keys()))


def _problem(problem: DicomProblem, en: str, zh: str, *, attribute: str | None = None) -> InvalidDicom:
    return InvalidDicom(problem, en, zh, attribute=attribute)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _overrun(tag: int | None, length: int, missing: int, file_size: int) -> InvalidDicom:
    """The error for a value that runs ``missing`` bytes past the end of the file.

    A cut transfer leaves the last element short by whatever did not arrive, so the two cases differ only in
    scale: a value that would need more than the file's own size and more than 64 MiB beyond its end is a
    corrupt or hostile length, not an interrupted upload. Pixel Data, the last and largest element, is always
    reported as truncated: a cut upload of a large multi-frame image is far more common than a forged length.
    """
    where = _tag_text(tag) if tag is not None else "?"
    if missing > max(file_size, _FAR_BEYOND_BYTES) and tag not in _PIXEL_DATA_TAGS:
        return _problem(
            DicomProblem.length_beyond_file,
            f"Element {where} declares a length of {length} bytes, more than the whole file ({file_size} bytes).",
            f"元素 {where} 声明的长度为 {length} 字节，超过整个文件的大小（{file_size} 字节），文件已损坏。",
            attribute=where,
        )
    return _truncated(
        f"element {where} is cut short by {missing} bytes",
        f"元素 {where} 缺少 {missing} 字节",
        attribute=where,
    )


def _truncated(detail_en: str, detail_zh: str, *, attribute: str | None = None) -> InvalidDicom:
    return _problem(
        DicomProblem.truncated,
        f"The file is truncated: {detail_en}. The transfer was probably interrupted.",
        f"文件不完整：{detail_zh}，可能是传输中断。",
        attribute=attribute,
    )


def _truncated_at(position: int) -> InvalidDicom:
    return _truncated(
        f"it ends inside a data element header at byte {position}",
        f"在第 {position} 字节处的数据元素头部中途结束",
    )


def _short_read_error(reader: _GuardedReader, ds: Dataset | None) -> InvalidDicom:
    """The error for a read that came back short: a value that overruns the file, or a cut element header."""
    assert reader.partial_read is not None
    position, wanted = reader.partial_read
    file_size = reader.size
    elements = [ds.get_item(tag, keep_deferred=True) for tag in _tags(ds)] if ds is not None else []
    for element in elements:
        if isinstance(element, RawDataElement) and element.value_tell == position:
            return _overrun(int(element.tag), element.length, position + element.length - reader.end, file_size)
    if wanted > file_size:
        return _overrun(None, wanted, position + wanted - reader.end, file_size)
    return _truncated_at(position)


def _not_dicom() -> InvalidDicom:
    return _problem(
        DicomProblem.not_dicom,
        "Not a DICOM file: no 'DICM' prefix at byte 128, and the content does not parse as a DICOM data set.",
        "不是 DICOM 文件：第 128 字节处没有 DICM 标识，内容也无法按 DICOM 数据集解析。",
    )


def _malformed(detail: str) -> InvalidDicom:
    return _problem(
        DicomProblem.malformed,
        f"The DICOM data set could not be parsed: {detail}.",
        f"无法解析 DICOM 数据集：{detail}。",
    )


def _parse(reader: _GuardedReader, *, force: bool, defer_size: int | None) -> Dataset:
    # pydicom raises a wide range of exception types on hostile input (struct.error, OSError "No tag to read",
    # ValueError, KeyError, IndexError ...), so everything it raises is mapped to a reason code here. Running out
    # of bytes is what a cut transfer looks like, so reaching the end of the file means "truncated".
    try:
        return pydicom.dcmread(reader, stop_before_pixels=True, defer_size=defer_size, force=force)
    except InvalidDicomError:
        raise _not_dicom() from None
    except Exception as exc:
        if reader.partial_read is not None:
            raise _short_read_error(reader, None) from None
        if reader.at_end() or isinstance(exc, EOFError):
            raise _truncated("it ends inside a data element", "在数据元素中途结束") from None
        raise _malformed(type(exc).__name__) from None


@dataclass(slots=True)
class _Context:
    """State shared by the walk over one file's data set."""

    reader: _GuardedReader
    file_end: int
    file_size: int
    check_extents: bool
    bulk_data_threshold: int
    warnings: list[str] = field(default_factory=list)


def read_header(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    default_charset: str = "GB18030",
    bulk_data_threshold: int = DEFAULT_BULK_DATA_THRESHOLD,
) -> InstanceHeader:
    """Parse the header of a DICOM Part-10 file (PS3.10 §7.1), stopping before Pixel Data.

    ``source`` is a path, or a seekable binary file positioned at the start of the DICOM file. A file without
    the preamble and ``DICM`` prefix is still read when it parses as a data set that carries the SOP Instance UID,
    since older equipment wrote such files; otherwise it is ``not_dicom``.

    ``default_charset`` is the defined term (PS3.3 C.12.1.1.2) applied when a file declares no Specific
    Character Set, as Chinese equipment often does: ``GB18030`` for Chinese sites, ``ISO_IR 192`` for UTF-8.

    Every element length is checked against the file size, Pixel Data included (for encapsulated Pixel Data by
    walking its item headers without reading the fragments), so a cut upload is caught here rather than when a
    viewer asks for the last frame.

    Raises :class:`InvalidDicom`; ``OSError`` only when the file itself cannot be opened or read.
    """
    return _open_and_read(source, default_charset, bulk_data_threshold, fast=True)


def _read_header_slow(
    source: str | os.PathLike[str] | IO[bytes],
    *,
    default_charset: str = "GB18030",
    bulk_data_threshold: int = DEFAULT_BULK_DATA_THRESHOLD,
) -> InstanceHeader:
    """:func:`read_header` by the reference path (pydicom) alone: what the fast path must equal, in tests and
    benchmarks."""
    return _open_and_read(source, default_charset, bulk_data_threshold, fast=False)


def _open_and_read(
    source: str | os.PathLike[str] | IO[bytes], default_charset: str, bulk_data_threshold: int, *, fast: bool
) -> InstanceHeader:
    default = _default_decoder(default_charset)
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as file:
            return _read_header(file, default, bulk_data_threshold, fast=fast)
    return _read_header(source, default, bulk_data_threshold, fast=fast)


def _read_header(file: IO[bytes], default: _TextDecoder, bulk_data_threshold: int, *, fast: bool) -> InstanceHeader:
    start = file.tell()
    end = file.seek(0, os.SEEK_END)
    file.seek(start)
    prefix = file.read(132)
    file.seek(start)
    has_prefix = len(prefix) == 132 and prefix[128:] == b"DICM"
    if has_prefix and fast:
        header = _read_header_fast(file, start, end, default, bulk_data_threshold)
        if header is not None:
            return header
        file.seek(start)
    return _read_header_reference(file, start, end, has_prefix, default, bulk_data_threshold)


def _read_header_reference(
    file: IO[bytes], start: int, end: int, has_prefix: bool, default: _TextDecoder, bulk_data_threshold: int
) -> InstanceHeader:
    """The reference path: pydicom parses the data set, then the JSON model is built from its elements."""
    file_size = end - start
    reader = _GuardedReader(file, end)
    defer_size = max(bulk_data_threshold, _INLINE_TEXT_LIMIT)
    if has_prefix:
        ds = _parse(reader, force=False, defer_size=defer_size)
    else:
        try:
            ds = _parse(reader, force=True, defer_size=defer_size)
        except InvalidDicom:
            raise _not_dicom() from None
        # force=True turns any bytes into "elements"; only a real SOP Instance UID makes them a data set.
        sop_instance = ds.get_item(0x00080018, keep_deferred=True)
        if sop_instance is None or not isinstance(sop_instance.value, bytes):
            raise _not_dicom()
        if not validate_uid(sop_instance.value.rstrip(b"\x00 ").decode("ascii", "replace")):
            raise _not_dicom()

    transfer_syntax = _transfer_syntax(ds)
    deflated = transfer_syntax == _DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN
    if deflated:
        # pydicom inflates the data set into memory, so offsets no longer point into the file and deferred
        # values cannot be read back from it; read again without deferring (rare: mostly SR, no pixels).
        file.seek(start)
        reader = _GuardedReader(file, end)
        ds = _parse(reader, force=not has_prefix, defer_size=None)
    elif reader.partial_read is not None:
        raise _short_read_error(reader, ds)

    context = _Context(
        reader=reader,
        file_end=end,
        file_size=file_size,
        check_extents=not deflated,
        bulk_data_threshold=bulk_data_threshold,
    )
    pixel_data: tuple[int, str] | None = None
    if not deflated:
        # pydicom leaves the file at the start of the Pixel Data element when it stopped before it.
        is_implicit, is_little = ds.original_encoding
        pixel_data = _check_pixel_data(context, bool(is_implicit), bool(is_little), reader.tell())

    declared = _declared_charset(ds)
    decoder, note = _decoder_for(declared, default)
    if note:
        context.warnings.append(note)
    dataset_json = _dataset_to_json(ds, context, decoder, path=(), base=0, ancestors=())
    return _finish_header(
        dataset_json,
        pixel_data,
        transfer_syntax=transfer_syntax,
        declared=declared,
        warnings=context.warnings,
        check_cut_short=not deflated,
    )


def _finish_header(
    dataset_json: dict[str, Any],
    pixel_data: tuple[int, str] | None,
    *,
    transfer_syntax: str,
    declared: tuple[str, ...],
    warnings: list[str],
    check_cut_short: bool,
) -> InstanceHeader:
    """The checks and index fields that both paths derive from the JSON model alike."""
    if pixel_data is not None:
        tag, vr = pixel_data
        key = f"{tag:08X}"
        dataset_json[key] = {"vr": vr, "BulkDataURI": BULK_DATA_URI_PREFIX + key}

    if pixel_data is None and check_cut_short:
        _check_not_cut_short(dataset_json, max((int(key, 16) for key in dataset_json), default=0))
    uids = {keyword: _required_uid(dataset_json, tag, keyword, zh) for tag, keyword, zh in _REQUIRED_UIDS}
    if not validate_uid(transfer_syntax):
        raise _problem(
            DicomProblem.invalid_uid,
            "TransferSyntaxUID (0002,0010) is not a valid UID (PS3.5 §9.1).",
            "传输语法 UID（0002,0010）格式不合法（PS3.5 §9.1）。",
            attribute="TransferSyntaxUID",
        )

    rows = _integer(dataset_json, "00280010")
    columns = _integer(dataset_json, "00280011")
    frames = _integer(dataset_json, "00280008")
    if frames is None or frames < 1:
        frames = 1 if rows and columns else 0
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        patient_name=_person_name(dataset_json, "00100010"),
        patient_id=_text(dataset_json, "00100020"),
        patient_birth_date=_text(dataset_json, "00100030"),
        patient_sex=_text(dataset_json, "00100040"),
        study_date=_text(dataset_json, "00080020"),
        study_time=_text(dataset_json, "00080030"),
        accession_number=_text(dataset_json, "00080050"),
        study_description=_text(dataset_json, "00081030"),
        referring_physician_name=_person_name(dataset_json, "00080090"),
        modality=_text(dataset_json, "00080060"),
        body_part_examined=_text(dataset_json, "00180015"),
        series_number=_integer(dataset_json, "00200011"),
        series_description=_text(dataset_json, "0008103E"),
        instance_number=_integer(dataset_json, "00200013"),
        number_of_frames=frames,
        rows=rows,
        columns=columns,
        specific_character_set=declared,
        dataset_json=dataset_json,
        warnings=tuple(warnings),
    )


_REQUIRED_UIDS: Final = (
    (0x00080016, "SOPClassUID", "SOP 类 UID"),
    (0x00080018, "SOPInstanceUID", "SOP 实例 UID"),
    (0x0020000D, "StudyInstanceUID", "检查实例 UID"),
    (0x0020000E, "SeriesInstanceUID", "序列实例 UID"),
)


def _check_not_cut_short(dataset_json: Mapping[str, Any], last_tag: int) -> None:
    """Catch a file cut exactly between two elements, which otherwise reads like a complete one.

    Elements are in ascending tag order (PS3.5 §7.1.1), so a required UID that is missing and would have come
    after the last element present was most likely lost with the rest of the file. An image without its Pixel
    Data, which comes last, was cut short too: an image is an instance of an "... Image Storage" SOP class, or
    one with the Image Pixel Module's Photometric Interpretation (PS3.3 C.7.6.3).
    """
    for tag, keyword, _ in _REQUIRED_UIDS:
        if tag > last_tag and not dataset_json.get(f"{tag:08X}", {}).get("Value"):
            raise _truncated(
                f"it ends before {keyword} {_tag_text(tag)}", f"在 {keyword} {_tag_text(tag)} 之前就结束了"
            )
    sop_class = _first(dataset_json, "00080016")
    is_image_class = isinstance(sop_class, str) and "Image Storage" in UID(sop_class).name
    if is_image_class or "00280004" in dataset_json:
        raise _truncated("it ends before the Pixel Data", "在像素数据之前就结束了", attribute="(7FE0,0010)")


def _required_uid(dataset_json: Mapping[str, Any], tag: int, keyword: str, label_zh: str) -> str:
    where = _tag_text(tag)
    values = dataset_json.get(f"{tag:08X}", {}).get("Value")
    if not values or values[0] is None:
        raise _problem(
            DicomProblem.missing_uid,
            f"Required attribute {keyword} {where} is missing or empty.",
            f"缺少必需的属性 {label_zh}（{keyword} {where}）。",
            attribute=keyword,
        )
    if len(values) != 1 or not isinstance(values[0], str) or not validate_uid(values[0]):
        raise _problem(
            DicomProblem.invalid_uid,
            f"{keyword} {where} is not a valid UID: digits and dots only, at most 64 characters (PS3.5 §9.1).",
            f"{label_zh}（{keyword} {where}）格式不合法：只能由数字和点组成，最长 64 个字符（PS3.5 §9.1）。",
            attribute=keyword,
        )
    return values[0]


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    element = meta.get_item(0x00020010) if meta is not None else None
    if element is not None and element.value:
        value = element.value
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
        return text.rstrip("\x00 ")
    # No File Meta (a bare data set): name the encoding pydicom found (PS3.5 Annex A.1-A.3).
    is_implicit, is_little = ds.original_encoding
    return _ENCODING_TO_TRANSFER_SYNTAX.get((bool(is_implicit), bool(is_little)), "1.2.840.10008.1.2.1")


def _declared_charset(ds: Dataset) -> tuple[str, ...]:
    element = ds.get_item(0x00080005, keep_deferred=True)
    if element is None:
        return ()
    return _charset_terms(element.value)


def _charset_terms(value: Any) -> tuple[str, ...]:
    """(0008,0005) as declared: from the raw bytes, or from the value pydicom converted (top-level data set)."""
    if isinstance(value, bytes):
        return tuple(part.decode("ascii", "replace").strip(" \x00") for part in value.split(b"\\"))
    if isinstance(value, str):
        return (value,)
    return tuple(str(part) for part in value or ())


def _check_pixel_data(context: _Context, is_implicit: bool, is_little: bool, position: int) -> tuple[int, str] | None:
    """Check that Pixel Data ends inside the file; return its tag and VR, or None when there is none.

    ``position`` is the file offset where the data set stopped: the Pixel Data element, or the end of the file.
    Native Pixel Data has one length (PS3.5 §7.1). Encapsulated Pixel Data has undefined length and a sequence
    of items ended by a Sequence Delimitation Item (PS3.5 A.4); only the 8-byte item headers are read.
    """
    reader, end = context.reader, context.file_end
    endian = "<" if is_little else ">"
    header = reader.read_exactly(position, 8)
    if len(header) < 8:
        if header:
            raise _truncated_at(position)
        return None
    group, element = struct.unpack(f"{endian}HH", header[:4])
    tag = group << 16 | element
    if tag not in _PIXEL_DATA_TAGS:
        return None
    vr = _PIXEL_DATA_TAGS[tag]
    if is_implicit:
        (length,) = struct.unpack(f"{endian}L", header[4:8])
        value_start = position + 8
    else:
        vr = header[4:6].decode("ascii", "replace")
        extra = reader.read_exactly(position + 8, 4)
        if len(extra) < 4:
            raise _truncated_at(position)
        (length,) = struct.unpack(f"{endian}L", extra)
        value_start = position + 12
    if length != _UNDEFINED_LENGTH:
        if value_start + length > end:
            raise _overrun(tag, length, value_start + length - end, context.file_size)
        return tag, vr
    item_position = value_start
    while True:
        item = reader.read_exactly(item_position, 8)
        if len(item) < 8:
            raise _truncated(
                f"encapsulated Pixel Data {_tag_text(tag)} has no Sequence Delimitation Item",
                f"封装的像素数据 {_tag_text(tag)} 缺少序列结束标记",
                attribute=_tag_text(tag),
            )
        item_group, item_element, item_length = struct.unpack(f"{endian}HHL", item)
        item_tag = item_group << 16 | item_element
        if item_tag == _SEQUENCE_DELIMITER_TAG:
            return tag, vr
        if item_tag != _ITEM_TAG or item_length == _UNDEFINED_LENGTH:
            raise _malformed("encapsulated Pixel Data holds something other than items (PS3.5 A.4)")
        item_position += 8 + item_length
        if item_position > end:
            raise _overrun(tag, item_length, item_position - end, context.file_size)


# --------------------------------------------------------------------------------------------------------------
# The fast path: an Explicit VR Little Endian data set walked straight from the bytes
#
# For the common file (Part 10 with preamble and DICM, Explicit VR Little Endian data set, defined lengths and
# undefined-length sequences) the elements are read with ``struct.unpack_from`` from the file head in memory,
# and the JSON model is built as they are met, with the same helpers as the reference path. Whenever the walk
# meets anything it does not handle with certainty, it gives up and the reference path (pydicom) reads the file:
# bad input and the rarer encodings are classified there, exactly as before.


class _NotFast(Exception):
    """The fast path cannot be sure of this file; the reference path reads it instead."""


@dataclass(slots=True)
class _FastPathCounters:
    """How many headers each path produced; tests use it to prove that the fast path is really taken."""

    taken: int = 0
    fell_back: int = 0


_FAST_PATH: Final = _FastPathCounters()
#: Transfer syntaxes whose data set pydicom reads as Explicit VR Little Endian (PS3.5 A.2, A.4.1-A.4.2): the
#: native one, the encapsulated JPEG family and RLE. The raw UI value may carry one byte of padding.
_FAST_TRANSFER_SYNTAX: Final = re.compile(rb"(1\.2\.840\.10008\.1\.2\.(?:1|4\.[1-9][0-9]*|5))[\x00 ]?")
# VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 §7.1.2, Table 7.1-1).
_LONG_LENGTH_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
# How the walk treats a value: text; one integer or one floating-point number (when the length is that of one
# value); the general case (_value_json: binary, AT, several numbers, empty or bulk values); a sequence.
_STRING: Final = 0
_INTEGER: Final = 1
_FLOAT: Final = 2
_OTHER: Final = 3
_SEQUENCE: Final = 4


def _fast_category(vr: str) -> int:
    if vr in _STRING_VRS:
        return _STRING
    if vr in {"SL", "SS", "UL", "US"}:
        return _INTEGER
    if vr in {"FL", "FD"}:
        return _FLOAT
    return _SEQUENCE if vr == "SQ" else _OTHER


_TEXT_MEMO_VALUE_SIZE: Final = 64
_TEXT_MEMO_ENTRIES: Final = 1024
#: VR -> (VR, has a 4-byte length, category, the struct of one value for numbers, the memo of short ASCII
#: values for text VRs other than PN, whose JSON values are dicts and so must not be shared between headers).
#: UN is left to the reference path: its VR comes from the data dictionary, and with undefined length it is a
#: sequence in implicit VR (PS3.5 §6.2.2).
_FAST_VRS: Final[dict[bytes, tuple[str, bool, int, struct.Struct, dict[bytes, tuple[Any, ...]] | None]]] = {
    vr.encode("ascii"): (
        vr,
        vr in _LONG_LENGTH_VRS,
        _fast_category(vr),
        struct.Struct("<" + _NUMERIC_VRS.get(vr, "B")),
        {} if vr in _STRING_VRS and vr != "PN" else None,
    )
    for vr in sorted(_KNOWN_VRS - {"UN"})
}
_FIRST_PIXEL_DATA_TAG: Final = min(_PIXEL_DATA_TAGS)
_FAST_PIXEL_VRS: Final = frozenset({b"OB", b"OW", b"OF", b"OD"})
_ELEMENT_HEADER: Final = struct.Struct("<HH2sH")
_ITEM_HEADER: Final = struct.Struct("<HHL")
_LONG_LENGTH: Final = struct.Struct("<L")
_ITEM_DELIMITER_TAG: Final = 0xFFFEE00D
_SPECIFIC_CHARACTER_SET_TAG: Final = 0x00080005
_TRAILING_PADDING_TAG: Final = 0xFFFCFFFC
# The first read holds the header of a typical CT or MR slice without reaching far into its pixel data.
_FAST_FIRST_READ: Final = 4096
_FAST_MAX_READ: Final = 1024 * 1024


def _pydicom_reads_as_usual() -> bool:
    """Whether pydicom is configured as the fast path assumes: warnings, not exceptions; no custom hooks."""
    return (
        pydicom.config.settings.reading_validation_mode != pydicom.config.RAISE
        and pydicom.config.data_element_callback is None
        and pydicom.hooks.hooks.raw_element_vr is pydicom.hooks.raw_element_vr
        and pydicom.hooks.hooks.raw_element_value is pydicom.hooks.raw_element_value
        and not pydicom.hooks.hooks.raw_element_kwargs
    )


class _FastReader:
    """The head of the file in memory, read on demand; positions count from the start of the DICOM file.

    The walk only moves forward, so bytes already passed are dropped when more are read, and a value that is not
    needed (bulk data) is skipped without being read.
    """

    __slots__ = ("_chunk", "_file", "_start", "base", "data", "size")

    def __init__(self, file: IO[bytes], start: int, size: int) -> None:
        self._file = file
        self._start = start
        self._chunk = _FAST_FIRST_READ
        self.size = size
        self.base = 0
        self.data = b""

    def fill(self, position: int, need: int) -> int:
        """Make :attr:`data` hold ``need`` bytes from ``position`` on; the offset of ``position`` in it."""
        offset = position - self.base
        if offset >= 0 and offset + need <= len(self.data):
            return offset
        end = position + need
        if end > self.size:
            raise _NotFast
        if 0 <= offset <= len(self.data):
            # Reading on: each read twice the last, so a long header costs few reads.
            kept = self.data[offset:]
            chunk = self._chunk
        else:
            # Past a value that was skipped (bulk data): start small again, as at the start of the file.
            kept = b""
            chunk = _FAST_FIRST_READ
        self._chunk = min(chunk * 2, _FAST_MAX_READ)
        have = position + len(kept)
        wanted = min(max(end, have + chunk), self.size) - have
        self._file.seek(self._start + have)
        more = self._file.read(wanted)
        if len(more) != wanted:
            raise _NotFast
        self.data = kept + more
        self.base = position
        return 0


class _FastWalker:
    """Builds the JSON model exactly as :func:`_dataset_to_json` does for what pydicom would have read.

    Conditions under which it gives up (:class:`_NotFast`): File Meta that does not open with its group length
    or lacks a transfer syntax of :data:`_FAST_TRANSFER_SYNTAX`; a VR it does not know, or UN; undefined length
    on anything but a sequence; a tag out of ascending order, repeated, in groups 0000-0002 or FFFE where an
    element is expected; an item, sequence or value that does not end exactly where its parent says, or beyond
    the file; text before (0008,0005) is settled; a Specific Character Set that is not CS; Pixel Data whose VR
    is not OB, OW, OF or OD.
    """

    __slots__ = ("declared", "default", "note", "pixel_position", "reader", "threshold", "warnings")

    def __init__(self, reader: _FastReader, default: _TextDecoder, bulk_data_threshold: int) -> None:
        self.reader = reader
        self.default = default
        self.threshold = bulk_data_threshold
        self.warnings: list[str] = []
        self.declared: tuple[str, ...] = ()
        self.note: str | None = None
        self.pixel_position: int | None = None

    def file_meta(self) -> tuple[str, int]:
        """The transfer syntax and where the data set starts (PS3.10 §7.1)."""
        reader = self.reader
        position = 132
        transfer_syntax: str | None = None
        previous = -1
        while True:
            offset = reader.fill(position, 8)
            group, element, vr_code, length = _ELEMENT_HEADER.unpack_from(reader.data, offset)
            if group != 0x0002:
                break
            tag = group << 16 | element
            kind = _FAST_VRS.get(vr_code)
            if kind is None or kind[0] == "SQ" or tag <= previous:
                raise _NotFast
            # pydicom converts the first element to check the encoding (issue #503); a group length cannot fail.
            if previous < 0 and (tag != 0x00020000 or vr_code != b"UL" or length != 4):
                raise _NotFast
            previous = tag
            value_position = position + 8
            if kind[1]:
                offset = reader.fill(position, 12)
                (length,) = _LONG_LENGTH.unpack_from(reader.data, offset + 8)
                value_position += 4
            if length == _UNDEFINED_LENGTH or value_position + length > reader.size:
                raise _NotFast
            if tag == 0x00020010:
                offset = reader.fill(value_position, length)
                match = _FAST_TRANSFER_SYNTAX.fullmatch(reader.data, offset, offset + length)
                if kind[0] != "UI" or match is None:
                    raise _NotFast
                transfer_syntax = match.group(1).decode("ascii")
            position = value_position + length
        if transfer_syntax is None or transfer_syntax in pydicom.uid.PrivateTransferSyntaxes:
            raise _NotFast
        return transfer_syntax, position

    def dataset(
        self,
        position: int,
        end: int | None,
        limit: int,
        inherited: _TextDecoder | None,
        prefix: str,
    ) -> tuple[dict[str, Any], int]:
        """One data set from ``position``: to ``end``, or to an Item Delimitation Item when ``end`` is None.

        ``inherited`` is the parent's decoder, None for the top level (which stops at Pixel Data). Nothing may
        reach beyond ``limit``. ``prefix`` is the BulkDataURI path of the data set.
        """
        reader = self.reader
        size = reader.size
        data, base = reader.data, reader.base
        available = len(data)
        threshold = min(self.threshold, _INLINE_TEXT_LIMIT)
        top = inherited is None
        bound = limit if end is None else end
        result: dict[str, Any] = {}
        decoder: _TextDecoder | None = None
        previous = -1
        while position < bound:
            offset = position - base
            if offset + 12 > available:
                # 12 bytes hold the longest element header; only the last element of the file may be shorter.
                if size - position < 8:
                    raise _NotFast
                offset = reader.fill(position, min(12, size - position))
                data, base = reader.data, reader.base
                available = len(data)
            group, element, vr_code, length = _ELEMENT_HEADER.unpack_from(data, offset)
            tag = group << 16 | element
            if tag >= _FIRST_PIXEL_DATA_TAG:
                if end is None and tag == _ITEM_DELIMITER_TAG:
                    if vr_code != b"\x00\x00" or length:
                        raise _NotFast
                    return result, position + 8
                if top and tag in _PIXEL_DATA_TAGS:
                    # pydicom stops before Pixel Data at the top level only (stop_before_pixels).
                    if vr_code not in _FAST_PIXEL_VRS:
                        raise _NotFast
                    self.pixel_position = position
                    return result, position
            kind = _FAST_VRS.get(vr_code)
            if kind is None or tag <= previous or group <= 0x0002 or group == 0xFFFE:
                raise _NotFast
            previous = tag
            vr, long_length, category, one_number, memo = kind
            if long_length:
                if offset + 12 > available:
                    raise _NotFast
                (length,) = _LONG_LENGTH.unpack_from(data, offset + 8)
                value_position = position + 12
            else:
                value_position = position + 8
            defined = length != _UNDEFINED_LENGTH
            value_end = value_position + length
            if defined and value_end > limit:
                raise _NotFast
            if element == 0 or tag == _TRAILING_PADDING_TAG:
                # Left out of the JSON model (see _dataset_to_json), but pydicom reads them all the same.
                if not defined:
                    raise _NotFast
                position = value_end
                continue

            if decoder is None and tag >= _SPECIFIC_CHARACTER_SET_TAG:
                if tag == _SPECIFIC_CHARACTER_SET_TAG:
                    if vr != "CS" or not defined:
                        raise _NotFast
                    decoder = self._character_set(value_position, length, inherited)
                    data, base = reader.data, reader.base
                    available = len(data)
                    if top:
                        result["00080005"] = self._top_character_set_json(value_position, length)
                        position = value_end
                        continue
                else:
                    decoder = self.default if inherited is None else inherited

            key = f"{tag:08X}"
            if category == _SEQUENCE:
                if decoder is None:
                    raise _NotFast
                items, position = self.sequence(
                    value_position, value_end if defined else None, limit, decoder, f"{prefix}{key}/"
                )
                data, base = reader.data, reader.base
                available = len(data)
                result[key] = {"vr": "SQ", "Value": items}
                continue
            if not defined:
                raise _NotFast
            position = value_end
            if (
                not length
                or length > threshold
                or category == _OTHER
                or (category != _STRING and length != one_number.size)
            ):
                # Empty, bulk or oversized, binary, AT, floating point, several numbers: the general case.
                result[key] = self._value_json(tag, vr, value_position, length, decoder, prefix + key)
                data, base = reader.data, reader.base
                available = len(data)
                continue
            offset = value_position - base
            if offset + length > available:
                offset = reader.fill(value_position, length)
                data, base = reader.data, reader.base
                available = len(data)
            if category == _INTEGER:
                # One number, as _decode_numbers gives it: JSON has no NaN or infinity.
                result[key] = {"vr": vr, "Value": [one_number.unpack_from(data, offset)[0]]}
                continue
            if category == _FLOAT:
                number = one_number.unpack_from(data, offset)[0]
                result[key] = {"vr": vr, "Value": [number if math.isfinite(number) else None]}
                continue
            if decoder is None:
                raise _NotFast
            value = data[offset : value_end - base]
            result[key] = self._text_json(tag, vr, value, decoder, memo)
        if end is None or position != end:
            # An undefined-length item without its delimiter, or a value running past the item's end.
            raise _NotFast
        return result, position

    def sequence(
        self, position: int, end: int | None, limit: int, decoder: _TextDecoder, prefix: str
    ) -> tuple[list[dict[str, Any]], int]:
        """The items of a sequence (PS3.5 §7.5): to ``end``, or to a Sequence Delimitation Item."""
        reader = self.reader
        items: list[dict[str, Any]] = []
        while True:
            if end is not None and position >= end:
                if position > end:
                    raise _NotFast
                break
            offset = reader.fill(position, 8)
            group, element, length = _ITEM_HEADER.unpack_from(reader.data, offset)
            tag = group << 16 | element
            if end is None and tag == _SEQUENCE_DELIMITER_TAG:
                if length:
                    raise _NotFast
                return items, position + 8
            if tag != _ITEM_TAG:
                raise _NotFast
            item_prefix = f"{prefix}{len(items)}/"
            if length == _UNDEFINED_LENGTH:
                item, position = self.dataset(position + 8, None, limit, decoder, item_prefix)
            else:
                item_end = position + 8 + length
                if item_end > limit:
                    raise _NotFast
                item, position = self.dataset(position + 8, item_end, item_end, decoder, item_prefix)
            items.append(item)
        return items, position

    def _character_set(self, position: int, length: int, inherited: _TextDecoder | None) -> _TextDecoder:
        """The decoder for a data set that declares (0008,0005); for the top level, also what it declared."""
        if inherited is not None:
            # An item's own character set, as the reference path reads it: raw bytes (PS3.5 §7.5.3).
            offset = self.reader.fill(position, length)
            decoder, _ = _decoder_for(_charset_terms(self.reader.data[offset : offset + length]), inherited)
            return decoder
        self.declared = _charset_terms(self._top_character_set(position, length).value)
        decoder, self.note = _decoder_for(self.declared, self.default)
        return decoder

    def _top_character_set(self, position: int, length: int) -> DataElement:
        # At the top level pydicom converts (0008,0005) to learn the encoding; the same conversion is used here.
        offset = self.reader.fill(position, length)
        # Like pydicom's reader: an empty value is b"" (or None, with config.use_none_as_empty_text_VR_value).
        empty = cast(bytes | None, empty_value_for_VR("CS", raw=True))
        value = self.reader.data[offset : offset + length] if length else empty
        raw = RawDataElement(Tag(_SPECIFIC_CHARACTER_SET_TAG), "CS", length, value, position, False, True)
        return convert_raw_data_element(raw, encoding=default_encoding)

    def _top_character_set_json(self, position: int, length: int) -> dict[str, Any]:
        return _converted_to_json(self._top_character_set(position, length), "CS")

    def _text_json(
        self, tag: int, vr: str, value: bytes, decoder: _TextDecoder, memo: dict[bytes, tuple[Any, ...]] | None
    ) -> dict[str, Any]:
        """A text value as :func:`_element_to_json` gives it.

        Short ASCII values decode the same under every character set, and the same values recur in every file
        (modality, dates, spacing, study UIDs within a study), so their result is remembered, per VR.
        """
        remember = memo is not None and len(value) <= _TEXT_MEMO_VALUE_SIZE and value.isascii() and 27 not in value
        if remember:
            assert memo is not None
            known = memo.get(value)
            if known is not None:
                return {"vr": vr, "Value": list(known)} if known else {"vr": vr}
        try:
            text, lossy = decoder.decode(value, _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS)
            values = _text_values(vr, text)
        except (struct.error, ValueError):
            self.warnings.append(f"{_tag_text(tag)}: {vr} value could not be decoded")
            return {"vr": vr}
        if lossy:
            self.warnings.append(f"{_tag_text(tag)}: text not valid in the declared character set")
        elif remember:
            assert memo is not None
            if len(memo) >= _TEXT_MEMO_ENTRIES:
                memo.clear()
            memo[value] = tuple(values)
        return {"vr": vr, "Value": values} if values else {"vr": vr}

    def _value_json(
        self, tag: int, vr: str, position: int, length: int, decoder: _TextDecoder | None, path: str
    ) -> dict[str, Any]:
        """What :func:`_element_to_json` makes of a raw element with a defined length and a known VR."""
        if _is_bulk(vr, length, self.threshold):
            return {"vr": vr, "BulkDataURI": BULK_DATA_URI_PREFIX + path}
        if length > _INLINE_TEXT_LIMIT:
            self.warnings.append(f"{_tag_text(tag)}: {length}-byte {vr} value left out of the JSON model")
            return {"vr": vr}
        if not length:
            return {"vr": vr}
        offset = self.reader.fill(position, length)
        value = self.reader.data[offset : offset + length]
        if vr in _BINARY_VRS:
            return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
        if decoder is None:
            if vr in _STRING_VRS:
                raise _NotFast  # text before (0008,0005) is settled
            decoder = self.default  # not used for numbers and AT
        try:
            values, lossy = _decode_value(vr, value, True, decoder)
        except (struct.error, ValueError):
            self.warnings.append(f"{_tag_text(tag)}: {vr} value could not be decoded")
            return {"vr": vr}
        if lossy:
            self.warnings.append(f"{_tag_text(tag)}: text not valid in the declared character set")
        return {"vr": vr, "Value": values} if values else {"vr": vr}


def _read_header_fast(
    file: IO[bytes], start: int, end: int, default: _TextDecoder, bulk_data_threshold: int
) -> InstanceHeader | None:
    """The header by the fast path, or None when the reference path must read the file."""
    if not _pydicom_reads_as_usual():
        _FAST_PATH.fell_back += 1
        return None
    reader = _FastReader(file, start, end - start)
    walker = _FastWalker(reader, default, bulk_data_threshold)
    try:
        transfer_syntax, position = walker.file_meta()
        dataset_json, _ = walker.dataset(position, reader.size, reader.size, None, "")
        pixel_data: tuple[int, str] | None = None
        if walker.pixel_position is not None:
            context = _Context(
                reader=_GuardedReader(file, end),
                file_end=end,
                file_size=end - start,
                check_extents=True,
                bulk_data_threshold=bulk_data_threshold,
            )
            pixel_data = _check_pixel_data(context, False, True, start + walker.pixel_position)
        header = _finish_header(
            dataset_json,
            pixel_data,
            transfer_syntax=transfer_syntax,
            declared=walker.declared,
            warnings=walker.warnings if walker.note is None else [walker.note, *walker.warnings],
            check_cut_short=True,
        )
    except (_NotFast, InvalidDicom, struct.error):
        # A problem, or something only the reference path knows how to read: it decides (and names any error).
        _FAST_PATH.fell_back += 1
        return None
    _FAST_PATH.taken += 1
    return header


# --------------------------------------------------------------------------------------------------------------
# The DICOM JSON model (PS3.18 Annex F)


def _dataset_to_json(
    ds: Dataset,
    context: _Context,
    decoder: _TextDecoder,
    *,
    path: tuple[str, ...],
    base: int,
    ancestors: tuple[Dataset, ...],
) -> dict[str, Any]:
    """One data set as a DICOM JSON object (PS3.18 F.2.2), attributes in ascending tag order.

    ``base`` is the file offset that the data set's ``value_tell`` values count from: pydicom gives elements in
    items of a defined-length sequence offsets relative to the sequence value.
    """
    own_charset = ds.get_item(0x00080005, keep_deferred=True) if path else None
    if own_charset is not None:
        # An item may declare its own character set (PS3.5 §7.5.3); otherwise it inherits the parent's.
        decoder, _ = _decoder_for(_declared_charset(ds), decoder)
    result: dict[str, Any] = {}
    for tag_int in _tags(ds):
        # Group lengths are left out of the JSON model (PS3.18 F.2.2), as are command elements and padding.
        if tag_int & 0xFFFF == 0 or tag_int >> 16 in (0x0000, 0x0002) or tag_int == 0xFFFCFFFC:
            continue
        element = ds.get_item(tag_int, keep_deferred=True)
        if element is None:
            continue
        key = f"{tag_int:08X}"
        result[key] = _element_to_json(
            element, ds, context, decoder, path=(*path, key), base=base, ancestors=(ds, *ancestors)
        )
    return result


def _element_to_json(
    element: RawDataElement | DataElement,
    ds: Dataset,
    context: _Context,
    decoder: _TextDecoder,
    *,
    path: tuple[str, ...],
    base: int,
    ancestors: tuple[Dataset, ...],
) -> dict[str, Any]:
    tag = int(element.tag)
    vr, reinterpreted_un = _element_vr(element, ancestors)

    if isinstance(element, DataElement):
        # Sequences of undefined length arrive parsed (their items share our base offset), and pydicom has
        # already converted (0008,0005) to learn the encoding.
        if vr == "SQ":
            return {"vr": "SQ", "Value": _items_to_json(element.value, context, decoder, path, base, ancestors)}
        return _converted_to_json(element, vr)

    length = element.length
    absolute = base + element.value_tell
    if length != _UNDEFINED_LENGTH and context.check_extents and absolute + length > context.file_end:
        raise _overrun(tag, length, absolute + length - context.file_end, context.file_size)
    value = element.value
    if value is not None and length != _UNDEFINED_LENGTH and len(value) < length:
        raise _malformed(f"element {_tag_text(tag)} is longer than the sequence item holding it")
    size = len(value) if value is not None else length

    if vr == "SQ":
        if value is None:
            value = context.reader.read_exactly(absolute, length)
        parsed = _convert(element._replace(value=value), ds)
        return {"vr": "SQ", "Value": _items_to_json(parsed.value, context, decoder, path, absolute, ancestors)}

    if _is_bulk(vr, size, context.bulk_data_threshold):
        return {"vr": vr, "BulkDataURI": BULK_DATA_URI_PREFIX + "/".join(path)}
    if size > _INLINE_TEXT_LIMIT:
        context.warnings.append(f"{_tag_text(tag)}: {size}-byte {vr} value left out of the JSON model")
        return {"vr": vr}
    if value is None:
        value = context.reader.read_exactly(absolute, length)
    if not value:
        return {"vr": vr}

    if vr in _BINARY_VRS:
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    # A UN value is always implicit VR little endian (PS3.5 §6.2.2), whatever the transfer syntax.
    little_endian = bool(element.is_little_endian) or reinterpreted_un
    try:
        values, lossy = _decode_value(vr, value, little_endian, decoder)
    except (struct.error, ValueError):
        context.warnings.append(f"{_tag_text(tag)}: {vr} value could not be decoded")
        return {"vr": vr}
    if lossy:
        context.warnings.append(f"{_tag_text(tag)}: text not valid in the declared character set")
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _converted_to_json(element: DataElement, vr: str) -> dict[str, Any]:
    """An element pydicom has already converted; in practice only (0008,0005), which is ASCII."""
    raw_values = element.value
    if raw_values is None or raw_values == "" or raw_values == b"":
        return {"vr": vr}
    if isinstance(raw_values, bytes):
        return {"vr": vr, "InlineBinary": base64.b64encode(raw_values).decode("ascii")}
    items = list(raw_values) if isinstance(raw_values, MultiValue | list | tuple) else [raw_values]
    values: list[Any] = []
    for item in items:
        if vr == "PN":
            values.append(_person_name_json(str(item).rstrip(" ")))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            values.append(item)
        else:
            values.append(str(item).strip(" \x00") or None)
    return {"vr": vr, "Value": values}


def _items_to_json(
    items: Any,
    context: _Context,
    decoder: _TextDecoder,
    path: tuple[str, ...],
    base: int,
    ancestors: tuple[Dataset, ...],
) -> list[dict[str, Any]]:
    return [
        _dataset_to_json(item, context, decoder, path=(*path, str(index)), base=base, ancestors=ancestors)
        for index, item in enumerate(items)
    ]


def _convert(element: RawDataElement, ds: Dataset) -> DataElement:
    """Parse a sequence with pydicom (its item headers and nested elements, left raw)."""
    try:
        return convert_raw_data_element(element, encoding="iso8859", ds=ds)
    except Exception as exc:
        raise _malformed(f"sequence {_tag_text(int(element.tag))} ({type(exc).__name__})") from None


def _is_bulk(vr: str, size: int, threshold: int) -> bool:
    if vr in _BINARY_VRS or vr in _NUMERIC_VRS:
        return size > threshold
    return vr in _TEXT_BULK_VRS and size > _INLINE_TEXT_LIMIT


def _element_vr(element: RawDataElement | DataElement, ancestors: tuple[Dataset, ...]) -> tuple[str, bool]:
    """The VR to report, and whether it replaces a UN.

    Implicit VR transfer syntaxes carry no VR (PS3.5 §6.2.2, Annex A.1), and a system that did not know an
    attribute may have forwarded it as UN; both are looked up in the data dictionary, so that a viewer gets
    e.g. Window Center as a number rather than base64.
    """
    tag = element.tag
    vr = element.VR
    if vr in _KNOWN_VRS and vr != "UN":
        return str(vr), False
    if tag.is_private:
        # Private Creator elements are LO (PS3.5 §7.8.1); other private elements have no known VR.
        return ("LO" if 0x0010 <= tag.element <= 0x00FF else "UN"), False
    try:
        known = str(dictionary_VR(tag))
    except KeyError:
        return "UN", False
    if vr == "UN":
        # Sequences and ambiguous VRs inside a defined-length UN are left alone: guessing wrong would corrupt.
        return ("UN", False) if known == "SQ" or " or " in known else (known, True)
    if known == "US or SS":
        return ("SS" if _pixel_representation(ancestors) == 1 else "US"), False
    if " or " in known:
        # OB or OW, US or OW, US or SS or OW: in implicit VR these are 16-bit words (PS3.5 A.1 c).
        return "OW", False
    return known, False


def _pixel_representation(ancestors: tuple[Dataset, ...]) -> int | None:
    for dataset in ancestors:
        element = dataset.get_item(0x00280103, keep_deferred=True)
        if element is None:
            continue
        value = element.value
        if isinstance(element, RawDataElement) and isinstance(value, bytes) and len(value) == 2:
            return int(struct.unpack("<H" if element.is_little_endian else ">H", value)[0])
        if isinstance(value, int):
            return value
    return None


def _decode_value(vr: str, value: bytes, little_endian: bool, decoder: _TextDecoder) -> tuple[list[Any], bool]:
    """The JSON "Value" array of one element (PS3.18 F.2.4, F.2.5), and whether text decoding was lossy."""
    if vr in _NUMERIC_VRS:
        return _decode_numbers(vr, value, little_endian), False
    if vr == "AT":
        endian = "<" if little_endian else ">"
        return [f"{group:04X}{element:04X}" for group, element in struct.iter_unpack(f"{endian}HH", value)], False

    delimiters = _PN_DELIMITERS if vr == "PN" else _TEXT_DELIMITERS
    # Decode the whole value before splitting at backslashes: in GBK and GB18030 the byte 0x5C is also the
    # second byte of characters such as 誠, so splitting the bytes first would cut them in half.
    text, lossy = decoder.decode(value, delimiters)
    return _text_values(vr, text), lossy


def _text_values(vr: str, text: str) -> list[Any]:
    """The JSON "Value" array of a decoded string value; empty when the value is empty."""
    pieces = [text] if vr in _SINGLE_VALUED_STRING_VRS else text.split("\\")
    if vr in _TRAILING_PADDING_ONLY_VRS:
        cleaned = [piece.rstrip(" \x00") for piece in pieces]
    else:
        cleaned = [piece.strip(" \x00") for piece in pieces]
    if len(cleaned) == 1 and not cleaned[0]:
        return []
    if vr == "PN":
        return [_person_name_json(piece) for piece in cleaned]
    if vr == "IS":
        return [_integer_string(piece) for piece in cleaned]
    if vr == "DS":
        return [_decimal_string(piece) for piece in cleaned]
    # Empty values inside a multi-valued attribute are null (PS3.18 F.2.5).
    return [piece or None for piece in cleaned]


def _decode_numbers(vr: str, value: bytes, little_endian: bool) -> list[Any]:
    code = ("<" if little_endian else ">") + _NUMERIC_VRS[vr]
    result: list[Any] = []
    for (number,) in struct.iter_unpack(code, value):
        if isinstance(number, float) and not math.isfinite(number):
            result.append(None)  # JSON has no NaN or infinity
        elif vr in {"SV", "UV"} and abs(number) > _MAX_SAFE_JSON_INTEGER:
            result.append(str(number))  # PS3.18 Table F.2.3-1 note: a String avoids losing precision
        else:
            result.append(number)
    return result


def _integer_string(piece: str) -> int | str | None:
    """IS as a JSON Number, or the original String when it is not an integer (PS3.18 Table F.2.3-1 note)."""
    if not piece:
        return None
    # A pattern rather than int() alone, which also accepts "1_000" and non-ASCII digits.
    return int(piece) if _INTEGER_STRING.fullmatch(piece) else piece


def _decimal_string(piece: str) -> float | int | str | None:
    """DS as a JSON Number when it is one (PS3.5 Table 6.2-1 syntax, finite), else the original String."""
    if not piece:
        return None
    if _INTEGER_STRING.fullmatch(piece):
        return int(piece)
    if not _DECIMAL_STRING.fullmatch(piece):
        return piece
    number = float(piece)
    return number if math.isfinite(number) else piece


def _person_name_json(piece: str) -> dict[str, str] | None:
    """A PN value as its component groups (PS3.18 F.2.2); only non-empty groups are named."""
    if not piece:
        return None
    groups = piece.split("=")
    named = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), groups, strict=False))
    return {name: group for name, group in named.items() if group}


# --------------------------------------------------------------------------------------------------------------
# Index fields from the JSON model


def _first(dataset_json: Mapping[str, Any], key: str) -> Any:
    values = dataset_json.get(key, {}).get("Value")
    return values[0] if values else None


def _text(dataset_json: Mapping[str, Any], key: str) -> str | None:
    value = _first(dataset_json, key)
    return str(value) if value not in (None, "") else None


def _integer(dataset_json: Mapping[str, Any], key: str) -> int | None:
    value = _first(dataset_json, key)
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(float(value))
    except (TypeError, ValueError, OverflowError):
        return None


def _person_name(dataset_json: Mapping[str, Any], key: str) -> str | None:
    value = _first(dataset_json, key)
    if not isinstance(value, dict) or not value:
        return None
    groups = [value.get("Alphabetic", ""), value.get("Ideographic", ""), value.get("Phonetic", "")]
    while groups and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def resolve_bulk_data_uris(dataset_json: Mapping[str, Any], instance_url: str) -> dict[str, Any]:
    """A copy of ``dataset_json`` whose BulkDataURI placeholders are absolute, for a WADO-RS response.

    ``instance_url`` is the instance's WADO-RS URL (``{root}/studies/{st}/series/{se}/instances/{sop}``); a
    placeholder ``bulkdata/7FE00010`` becomes ``{instance_url}/bulkdata/7FE00010`` (PS3.18 F.2.6).
    """
    prefix = instance_url.rstrip("/") + "/"

    def walk(obj: Mapping[str, Any]) -> dict[str, Any]:
        copy: dict[str, Any] = {}
        for key, attribute in obj.items():
            uri = attribute.get("BulkDataURI")
            if isinstance(uri, str) and uri.startswith(BULK_DATA_URI_PREFIX):
                copy[key] = {**attribute, "BulkDataURI": prefix + uri}
            elif attribute.get("vr") == "SQ" and "Value" in attribute:
                copy[key] = {**attribute, "Value": [walk(item) for item in attribute["Value"]]}
            else:
                copy[key] = attribute
        return copy

    return walk(dataset_json)
