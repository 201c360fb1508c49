"""Frames and rendered images of a stored DICOM instance, for WADO-RS.

* :func:`extract_frame` serves ``.../frames/{n}`` (PS3.18 §10.4.1.1.3, "Frame Pixel Data"): the pixel bytes of
  one frame as they are in the file. Native (uncompressed) frames are sliced out of the Pixel Data value at their
  offset (PS3.5 §8.1.1, frames stored one after another); encapsulated frames are read through the Basic or
  Extended Offset Table (PS3.5 Annex A.4) and returned still compressed, with their transfer syntax. Only the
  header and the requested frame are read from the file.
* :func:`render` serves ``.../rendered`` (PS3.18 §10.4.1.1.4 and §8.3.5.1, "Rendered Media Types" with the
  ``window``, ``viewport`` and ``quality`` parameters): a JPEG or PNG image for display.
* :func:`thumbnail` serves ``.../thumbnail`` (PS3.18 §10.4.1.1.5 / §9.5): a small JPEG of the middle frame.

The grayscale pipeline is the one of PS3.3 C.11 / PS3.4 N.2: stored values → Modality LUT (C.11.1: Rescale Slope
and Intercept, or a Modality LUT Sequence) → VOI LUT (C.11.2: window centre/width with the LINEAR, LINEAR_EXACT or
SIGMOID function of C.11.2.1.2-3, or a VOI LUT Sequence) → polarity (MONOCHROME1, C.7.6.3.1.2, and Presentation
LUT Shape INVERSE, C.11.6) → 8-bit display values. For enhanced multi-frame objects the per-frame and shared
functional groups (C.7.6.16.2.9 Pixel Value Transformation, C.7.6.16.2.10 Frame VOI LUT) come before the
top-level attributes. Colour images (RGB, YBR converted to RGB, PALETTE COLOR through its LUT, C.7.6.3.1.5)
skip the grayscale steps.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, ClassVar, Final, Literal

import numpy as np
import pydicom
from numpy.typing import NDArray
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

__all__ = [
    "PRESETS",
    "FrameData",
    "FrameNotFound",
    "InvalidRenderParameter",
    "NoPixelData",
    "PixelDataError",
    "RenderError",
    "RenderedMediaType",
    "VoiFunction",
    "apply_window",
    "extract_frame",
    "number_of_frames",
    "render",
    "thumbnail",
]

RenderedMediaType = Literal["image/jpeg", "image/png"]

#: Window presets (centre, width) in Hounsfield units for CT reading; the values radiologists use by default.
PRESETS: Final[Mapping[str, tuple[float, float]]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (40.0, 400.0),
}

_PIXEL_DATA_TAGS: Final = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_LONG_LENGTH_VRS: Final = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"UN"})
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF
_DISPLAY_MAX: Final = 255.0


class VoiFunction(StrEnum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.3; also the third part of the WADO-RS ``window`` parameter."""

    linear = "LINEAR"
    linear_exact = "LINEAR_EXACT"
    sigmoid = "SIGMOID"


class RenderError(Exception):
    """Base of the errors of this module; ``http_status`` is what a WADO-RS handler answers."""

    http_status: ClassVar[int] = 500


class FrameNotFound(RenderError, LookupError):
    """The frame number is outside 1..Number of Frames (PS3.18 §10.4.1.1.3 answers 404)."""

    http_status: ClassVar[int] = 404

    def __init__(self, frame_number: int, number_of_frames: int) -> None:
        super().__init__(f"frame {frame_number} does not exist: the instance has {number_of_frames} frame(s)")
        self.frame_number = frame_number
        self.number_of_frames = number_of_frames


class NoPixelData(RenderError):
    """The instance has no Pixel Data (a structured report, a presentation state, a JPIP-referenced image...)."""

    http_status: ClassVar[int] = 404


class PixelDataError(RenderError):
    """The pixel data is truncated, inconsistent with the Image Pixel module, or cannot be decoded here."""

    http_status: ClassVar[int] = 500


class InvalidRenderParameter(RenderError, ValueError):
    """A rendering parameter out of range (window width, viewport, quality, media type)."""

    http_status: ClassVar[int] = 400


@dataclass(frozen=True, slots=True)
class FrameData:
    """One frame as stored: native pixel bytes, or the compressed bit stream of an encapsulated frame."""

    data: bytes
    transfer_syntax_uid: str
    frame_number: int
    number_of_frames: int
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    photometric_interpretation: str

    @property
    def is_encapsulated(self) -> bool:
        return UID(self.transfer_syntax_uid).is_encapsulated


# --------------------------------------------------------------------------------------------------- reading


def _read_header(fp: BinaryIO) -> Dataset:
    """Everything before the Pixel Data element; ``fp`` is left at the first byte of that element."""
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, struct.error, ValueError) as exc:
        raise PixelDataError(f"not a readable DICOM file: {type(exc).__name__}") from None


def _transfer_syntax(header: Dataset) -> UID:
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if not syntax:
        raise PixelDataError("the file has no Transfer Syntax UID (0002,0010)")
    return UID(str(syntax))


def _int_attribute(header: Dataset, keyword: str, default: int | None = None) -> int:
    value = header.get(keyword)
    if value is None or value == "":
        if default is None:
            raise PixelDataError(f"the Image Pixel module lacks {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PixelDataError(f"{keyword} is not a number") from None


def number_of_frames(header: Dataset) -> int:
    """Number of Frames (0028,0008), 1 when absent or empty (single-frame IODs, PS3.3 C.7.6.6)."""
    frames = _int_attribute(header, "NumberOfFrames", 1)
    if frames < 1:
        raise PixelDataError("Number of Frames is below 1")
    return frames


def _check_frame_number(frame_number: int, frames: int) -> None:
    if not 1 <= frame_number <= frames:
        raise FrameNotFound(frame_number, frames)


def _native_frame_bits(header: Dataset) -> int:
    """Bits one native frame takes (PS3.5 §8.1.1); YBR_FULL_422 keeps two chroma samples per two pixels (§8.2.2)."""
    rows = _int_attribute(header, "Rows")
    columns = _int_attribute(header, "Columns")
    samples = _int_attribute(header, "SamplesPerPixel", 1)
    bits_allocated = _int_attribute(header, "BitsAllocated")
    photometric = str(header.get("PhotometricInterpretation", ""))
    if photometric == "YBR_FULL_422":
        return rows * columns * 2 * bits_allocated
    return rows * columns * samples * bits_allocated


def _pixel_element_header(fp: BinaryIO, syntax: UID) -> tuple[int, int]:
    """Read the Pixel Data element header at ``fp``; return (tag, value length). ``fp`` ends at the value."""
    endian = "<" if syntax.is_little_endian else ">"
    head = fp.read(8)
    if len(head) < 8:
        raise NoPixelData("the instance has no Pixel Data element")
    group, element = struct.unpack(f"{endian}HH", head[:4])
    tag = group << 16 | element
    if tag not in _PIXEL_DATA_TAGS:
        raise NoPixelData("the instance has no Pixel Data element")
    if syntax.is_implicit_VR:
        (length,) = struct.unpack(f"{endian}L", head[4:])
        return tag, int(length)
    vr = head[4:6]
    if vr in _LONG_LENGTH_VRS:
        more = fp.read(4)
        if len(more) < 4:
            raise PixelDataError("the Pixel Data element header is truncated")
        (length,) = struct.unpack(f"{endian}L", more)
        return tag, int(length)
    (short_length,) = struct.unpack(f"{endian}H", head[6:8])
    return tag, int(short_length)


def _native_frame(read_at: Callable[[int, int], bytes], value_length: int, header: Dataset, index: int) -> bytes:
    """Frame ``index`` (0-based) of native pixel data; ``read_at(offset, size)`` reads from the value."""
    frames = number_of_frames(header)
    frame_bits = _native_frame_bits(header)
    if frame_bits <= 0:
        raise PixelDataError("Rows, Columns, Samples per Pixel and Bits Allocated give an empty frame")
    needed_bytes = math.ceil(frames * frame_bits / 8)
    if value_length != _UNDEFINED_LENGTH and value_length < needed_bytes:
        raise PixelDataError("the pixel data is shorter than Rows x Columns x Samples x Bits x Frames")
    start_bit = index * frame_bits
    if start_bit % 8 == 0 and frame_bits % 8 == 0:
        data = read_at(start_bit // 8, frame_bits // 8)
        if len(data) != frame_bits // 8:
            raise PixelDataError("the pixel data is truncated")
        return data
    # Bits Allocated 1: frames follow each other bit by bit, first pixel in the lowest bit (PS3.5 §8.1.1 and
    # §8.2). The frame is returned starting on a byte boundary, its last byte padded with zero bits.
    first_byte, shift = divmod(start_bit, 8)
    span = math.ceil((shift + frame_bits) / 8)
    chunk = read_at(first_byte, span)
    if len(chunk) != span:
        raise PixelDataError("the pixel data is truncated")
    value = (int.from_bytes(chunk, "little") >> shift) & ((1 << frame_bits) - 1)
    return value.to_bytes(math.ceil(frame_bits / 8), "little")


def _encapsulated_frame(buffer: BinaryIO | bytes, header: Dataset, index: int, syntax: UID) -> bytes:
    frames = number_of_frames(header)
    extended: tuple[bytes, bytes] | None = None
    if "ExtendedOffsetTable" in header and "ExtendedOffsetTableLengths" in header:
        extended = (bytes(header.ExtendedOffsetTable), bytes(header.ExtendedOffsetTableLengths))
    try:
        return get_frame(
            buffer,
            index,
            number_of_frames=frames,
            extended_offsets=extended,
            endianness="<" if syntax.is_little_endian else ">",
        )
    except (ValueError, struct.error, EOFError) as exc:
        raise PixelDataError(f"the encapsulated pixel data cannot be split into frames: {exc}") from None


def _frame_summary(data: bytes, header: Dataset, syntax: UID, frame_number: int) -> FrameData:
    return FrameData(
        data=data,
        transfer_syntax_uid=str(syntax),
        frame_number=frame_number,
        number_of_frames=number_of_frames(header),
        rows=_int_attribute(header, "Rows"),
        columns=_int_attribute(header, "Columns"),
        samples_per_pixel=_int_attribute(header, "SamplesPerPixel", 1),
        bits_allocated=_int_attribute(header, "BitsAllocated"),
        photometric_interpretation=str(header.get("PhotometricInterpretation", "")),
    )


def extract_frame(path: Path | str, frame_number: int) -> FrameData:
    """The stored bytes of frame ``frame_number`` (1-based, PS3.18 §10.4.1.1.3) of the instance at ``path``.

    Native frames come back as raw pixel bytes in the file's byte order; encapsulated frames as their compressed
    bit stream (all fragments of the frame joined, PS3.5 A.4), with the transfer syntax to label them with.
    Raises :class:`FrameNotFound` for a frame number outside 1..Number of Frames, :class:`NoPixelData` for an
    instance without pixels and :class:`PixelDataError` for pixel data that does not match its header.
    """
    with open(path, "rb") as fp:
        header = _read_header(fp)
        syntax = _transfer_syntax(header)
        frames = number_of_frames(header)
        _check_frame_number(frame_number, frames)
        index = frame_number - 1

        if syntax == DeflatedExplicitVRLittleEndian:
            # The whole data set is one deflate stream (PS3.5 A.5): no offset in the file maps to a frame.
            fp.seek(0)
            dataset = pydicom.dcmread(fp)
            if "PixelData" not in dataset:
                raise NoPixelData("the instance has no Pixel Data element")
            value = bytes(dataset.PixelData)
            data = _native_frame(lambda offset, size: value[offset : offset + size], len(value), header, index)
            return _frame_summary(data, header, syntax, frame_number)

        _tag, length = _pixel_element_header(fp, syntax)
        value_start = fp.tell()
        if syntax.is_encapsulated:
            if length != _UNDEFINED_LENGTH:
                raise PixelDataError("encapsulated pixel data must have an undefined length (PS3.5 A.4)")
            data = _encapsulated_frame(fp, header, index, syntax)
        else:
            if length == _UNDEFINED_LENGTH:
                raise PixelDataError("native pixel data must have a defined length (PS3.5 A.4)")

            def read_at(offset: int, size: int) -> bytes:
                fp.seek(value_start + offset)
                return fp.read(size)

            data = _native_frame(read_at, length, header, index)
        return _frame_summary(data, header, syntax, frame_number)


# ------------------------------------------------------------------------------------------------ rendering


def _functional_group_item(header: Dataset, index: int, sequence_keyword: str) -> Dataset | None:
    """The item of a functional group macro for frame ``index``: per-frame first, then shared (PS3.3 C.7.6.16)."""
    for groups_keyword, item_index in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = header.get(groups_keyword)
        if not groups or item_index >= len(groups):
            continue
        macro = groups[item_index].get(sequence_keyword)
        if macro:
            item: Dataset = macro[0]
            return item
    return None


def _first_number(value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _modality_values(raw: NDArray[np.generic], header: Dataset, index: int) -> NDArray[np.float64]:
    """Stored values to modality values (PS3.3 C.11.1), from the frame's Pixel Value Transformation if any."""
    source = _functional_group_item(header, index, "PixelValueTransformationSequence") or header
    if "RescaleSlope" not in source and "ModalityLUTSequence" in header:
        try:
            return np.asarray(apply_modality_lut(raw, header), dtype=np.float64)
        except (ValueError, KeyError, AttributeError, IndexError) as exc:
            raise PixelDataError(f"the Modality LUT Sequence cannot be applied: {exc}") from None
    slope = _first_number(source.get("RescaleSlope"))
    intercept = _first_number(source.get("RescaleIntercept"))
    values = raw.astype(np.float64)
    if slope is not None and slope != 1.0:
        values *= slope
    if intercept is not None and intercept != 0.0:
        values += intercept
    return values


def _file_window(header: Dataset, index: int) -> tuple[float, float, VoiFunction] | None:
    source = _functional_group_item(header, index, "FrameVOILUTSequence") or header
    center = _first_number(source.get("WindowCenter"))
    width = _first_number(source.get("WindowWidth"))
    if center is None or width is None:
        return None
    try:
        function = VoiFunction(str(source.get("VOILUTFunction") or "LINEAR").strip().upper())
    except ValueError:
        function = VoiFunction.linear
    if (width < 1.0) if function is VoiFunction.linear else (width <= 0.0):
        return None  # an unusable stored window falls back to the image's own range
    return center, width, function


def apply_window(
    values: NDArray[np.float64], center: float, width: float, function: VoiFunction = VoiFunction.linear
) -> NDArray[np.float64]:
    """Map modality values to 0..255 with a window (PS3.3 C.11.2.1.2 LINEAR / LINEAR_EXACT, C.11.2.1.3 SIGMOID)."""
    if function is VoiFunction.sigmoid:
        with np.errstate(over="ignore"):  # exp overflow is 0 on the display, as intended
            return _DISPLAY_MAX / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function is VoiFunction.linear_exact:
        scaled = ((values - center) / width + 0.5) * _DISPLAY_MAX
        return np.clip(scaled, 0.0, _DISPLAY_MAX)
    # LINEAR: x <= c - 0.5 - (w-1)/2 → 0; x > c - 0.5 + (w-1)/2 → 255; in between ((x - (c-0.5)) / (w-1) + 0.5).
    if width <= 1.0:
        return np.where(values > center - 0.5, _DISPLAY_MAX, 0.0)
    scaled = ((values - (center - 0.5)) / (width - 1.0) + 0.5) * _DISPLAY_MAX
    return np.clip(scaled, 0.0, _DISPLAY_MAX)


def _voi_lut_values(raw_modality: NDArray[np.float64], header: Dataset) -> NDArray[np.float64] | None:
    """A VOI LUT Sequence (PS3.3 C.11.2.1.1) scaled to 0..255 by its output bit depth, or None."""
    sequence = header.get("VOILUTSequence")
    if not sequence:
        return None
    try:
        bits = int(sequence[0].LUTDescriptor[2])
        looked_up = apply_voi(raw_modality, header, index=0)
    except (AttributeError, IndexError, KeyError, ValueError, TypeError):
        return None
    top = float((1 << bits) - 1) if 0 < bits <= 16 else float(np.max(looked_up) or 1)
    return np.asarray(looked_up, dtype=np.float64) * (_DISPLAY_MAX / top)


def _grayscale_display(
    raw: NDArray[np.generic],
    header: Dataset,
    index: int,
    window: tuple[float, float] | None,
    voi_function: VoiFunction | None,
) -> NDArray[np.uint8]:
    values = _modality_values(raw, header, index)
    if window is not None:
        center, width = window
        function = voi_function or VoiFunction.linear
        display = apply_window(values, center, width, function)
    elif (stored := _file_window(header, index)) is not None:
        center, width, function = stored
        display = apply_window(values, center, width, voi_function or function)
    elif (looked_up := _voi_lut_values(values, header)) is not None:
        display = looked_up
    else:
        low, high = float(np.min(values)), float(np.max(values))
        display = apply_window(values, (low + high) / 2.0 + 0.5, max(high - low + 1.0, 2.0), VoiFunction.linear)

    inverse = str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"
    if str(header.get("PresentationLUTShape", "")).strip() == "INVERSE":
        inverse = not inverse
    if inverse:
        display = _DISPLAY_MAX - display
    return np.rint(display).astype(np.uint8)


def _colour_display(raw: NDArray[np.generic], header: Dataset) -> NDArray[np.uint8]:
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(raw, header)
        except (AttributeError, KeyError, ValueError, IndexError) as exc:
            raise PixelDataError(f"the palette colour LUT cannot be applied: {exc}") from None
        if rgb.dtype.itemsize > 1:
            return (np.asarray(rgb, dtype=np.uint32) >> 8).astype(np.uint8)
        return np.asarray(rgb, dtype=np.uint8)
    bits_stored = _int_attribute(header, "BitsStored", _int_attribute(header, "BitsAllocated"))
    if bits_stored > 8:
        return (np.asarray(raw, dtype=np.uint32) >> (bits_stored - 8)).astype(np.uint8)
    return np.asarray(raw, dtype=np.uint8)


def _square_pixels(image: Image.Image, header: Dataset) -> Image.Image:
    """Stretch non-square pixels (Pixel Spacing rows ≠ columns, or Pixel Aspect Ratio) so shapes look right."""
    ratio: float | None = None
    spacing = header.get("PixelSpacing") or header.get("ImagerPixelSpacing")
    if spacing is not None and len(spacing) == 2:
        row_spacing, column_spacing = _first_number(spacing[0]), _first_number(spacing[1])
        if row_spacing and column_spacing:
            ratio = row_spacing / column_spacing
    elif (aspect := header.get("PixelAspectRatio")) is not None and len(aspect) == 2:
        vertical, horizontal = _first_number(aspect[0]), _first_number(aspect[1])
        if vertical and horizontal:
            ratio = vertical / horizontal
    if ratio is None or abs(ratio - 1.0) < 0.01 or not 0.1 < ratio < 10:
        return image
    width, height = image.size
    return image.resize((width, max(1, round(height * ratio))), Image.Resampling.LANCZOS)


def _decode_frame(path: Path | str, index: int) -> NDArray[np.generic]:
    try:
        with open(path, "rb") as fp:
            array = pixel_array(fp, index=index)
    except (NotImplementedError, RuntimeError, ValueError, AttributeError, KeyError, struct.error) as exc:
        raise PixelDataError(f"the frame cannot be decoded: {type(exc).__name__}: {exc}") from None
    if array.ndim not in (2, 3):
        raise PixelDataError(f"unexpected decoded frame shape {array.shape}")
    return array


def _encode(image: Image.Image, media_type: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if media_type == "image/jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def _render(
    path: Path | str,
    *,
    choose_frame: Callable[[int], int],
    media_type: str,
    window: tuple[float, float] | None,
    voi_function: VoiFunction | None,
    viewport: tuple[int, int] | None,
    quality: int,
) -> bytes:
    if media_type not in ("image/jpeg", "image/png"):
        raise InvalidRenderParameter(f"unsupported rendered media type {media_type!r}")
    if not 1 <= quality <= 100:
        raise InvalidRenderParameter("quality must be within 1..100")
    if viewport is not None and (viewport[0] < 1 or viewport[1] < 1):
        raise InvalidRenderParameter("viewport width and height must be positive")
    if window is not None:
        center, width = window
        if not (math.isfinite(center) and math.isfinite(width)):
            raise InvalidRenderParameter("window centre and width must be finite numbers")
        linear = (voi_function or VoiFunction.linear) is VoiFunction.linear
        if (width < 1.0) if linear else (width <= 0.0):
            raise InvalidRenderParameter("window width must be at least 1 (PS3.3 C.11.2.1.2)")

    with open(path, "rb") as fp:
        header = _read_header(fp)
        syntax = _transfer_syntax(header)
        if syntax != DeflatedExplicitVRLittleEndian:
            _pixel_element_header(fp, syntax)  # raises NoPixelData for an instance without pixels
    frames = number_of_frames(header)
    frame_number = choose_frame(frames)
    _check_frame_number(frame_number, frames)
    index = frame_number - 1

    raw = _decode_frame(path, index)
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    if raw.ndim == 3 or photometric == "PALETTE COLOR":
        image = Image.fromarray(np.ascontiguousarray(_colour_display(raw, header)))
    else:
        image = Image.fromarray(np.ascontiguousarray(_grayscale_display(raw, header, index, window, voi_function)))
    image = _square_pixels(image, header)
    if viewport is not None:
        # PS3.18 §8.3.5.1.3: scaled to fit the viewport, aspect ratio kept; never enlarged here.
        image.thumbnail(viewport, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return _encode(image, media_type, quality)


def render(
    path: Path | str,
    *,
    frame: int = 1,
    media_type: RenderedMediaType = "image/jpeg",
    window: tuple[float, float] | None = None,
    voi_function: VoiFunction | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Frame ``frame`` (1-based) of the instance at ``path`` as a JPEG or PNG for display (PS3.18 §8.3.5.1).

    ``window`` is (centre, width) in modality units (for CT, Hounsfield units: see :data:`PRESETS`); without it
    the frame's stored window is used, then a VOI LUT Sequence, then the frame's own min..max. ``voi_function``
    overrides the stored VOI LUT Function. ``viewport`` (width, height) bounds the output; the image keeps its
    aspect ratio and is never enlarged. ``quality`` applies to JPEG.
    """
    return _render(
        path,
        choose_frame=lambda _frames: frame,
        media_type=media_type,
        window=window,
        voi_function=voi_function,
        viewport=viewport,
        quality=quality,
    )


def thumbnail(path: Path | str, size: int = 128) -> bytes:
    """A JPEG of at most ``size`` x ``size`` pixels of the middle frame (PS3.18 §9.5 / §10.4.1.1.5)."""
    if size < 1:
        raise InvalidRenderParameter("thumbnail size must be positive")
    return _render(
        path,
        choose_frame=lambda frames: (frames + 1) // 2,
        media_type="image/jpeg",
        window=None,
        voi_function=None,
        viewport=(size, size),
        quality=80,
    )
