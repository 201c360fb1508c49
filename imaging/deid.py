"""De-identified export of DICOM instances: the Basic Application Level Confidentiality Profile of PS3.15 E.1.

What is done to each attribute is data, :data:`TABLE_E1_1`: attribute keyword → the action code of PS3.15
Table E.1-1 (``X`` remove, ``Z`` empty or dummy, ``D`` dummy, ``U`` new UID consistent within the export, and the
combined codes). The profile's codes depend on each attribute's Type in the IOD at hand (``X/Z``: remove unless
Type 2, ``Z/D``: empty unless Type 1 ...); this module does not carry the IOD tables, so it resolves every combined
code to the action that keeps *any* IOD conformant, see :func:`resolve_action`. Attributes that the table does
not list are kept, as the profile says, except private attributes, which are all removed (E.1.1 item 3; the
Retain Safe Private Option is not offered), curve data (50xx) and overlay data and comments (60xx,3000/4000).
Sequences are walked to any depth, so identifiers inside items are treated like top-level ones and a Referenced
SOP Instance UID maps to the same new UID as the instance it points to.

The export records what was done (PS3.15 E.1.1 items 5-6; PS3.3 C.12.1.1.2): Patient Identity Removed (0012,0062)
= ``YES``, De-identification Method (0012,0063) and De-identification Method Code Sequence (0012,0064) with
``113100`` (PS3.16 CID 7050) plus the code of each retain option used.

Pixel data is not examined. An instance whose Burned In Annotation (0028,0301) is ``YES`` carries identifying text
in its pixels; de-identifying its header alone would not be enough (the Clean Pixel Data Option, E.3.1, is not
implemented), so it is refused unless the caller opts in with ``allow_burned_in_annotation``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Final

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID

__all__ = [
    "ACTION_CODES",
    "TABLE_E1_1",
    "Action",
    "BurnedInAnnotationRefused",
    "DeidentificationError",
    "ProfileOptions",
    "UidMapper",
    "deidentify",
    "deidentify_study_files",
    "profile_actions",
    "resolve_action",
]


class Action(StrEnum):
    """What happens to one attribute (PS3.15 E.1.1 Table E.1-1 legend)."""

    remove = "X"
    empty = "Z"
    dummy = "D"
    replace_uid = "U"
    keep = "K"
    #: ``X/Z/U*`` resolved: the sequence stays and the UIDs and other listed attributes inside it are treated.
    clean_items = "U*"


#: PS3.15 Table E.1-1, Basic Profile column, by attribute keyword (PS3.6). Not the whole table: the attributes
#: image objects from county equipment carry, plus the SR, RT and presentation-state ones that name people.
TABLE_E1_1: Final[Mapping[str, str]] = {
    # Patient
    "PatientName": "Z",
    "PatientID": "Z",
    "IssuerOfPatientID": "X",
    "PatientBirthDate": "Z",
    "PatientBirthTime": "X",
    "PatientBirthDateInAlternativeCalendar": "X",
    "PatientDeathDateInAlternativeCalendar": "X",
    "PatientAlternativeCalendar": "X",
    "PatientSex": "Z",
    "PatientAge": "X",
    "PatientSize": "X",
    "PatientWeight": "X",
    "PatientAddress": "X",
    "PatientTelephoneNumbers": "X",
    "PatientBirthName": "X",
    "PatientMotherBirthName": "X",
    "OtherPatientIDs": "X",
    "OtherPatientIDsSequence": "X",
    "OtherPatientNames": "X",
    "PatientComments": "X",
    "PatientInsurancePlanCodeSequence": "X",
    "PatientPrimaryLanguageCodeSequence": "X",
    "PatientPrimaryLanguageModifierCodeSequence": "X",
    "PatientReligiousPreference": "X",
    "PatientState": "X",
    "PatientTransportArrangements": "X",
    "PatientInstitutionResidence": "X",
    "ReferencedPatientSequence": "X",
    "ReferencedPatientAliasSequence": "X",
    "MedicalRecordLocator": "X",
    "MedicalAlerts": "X",
    "Allergies": "X",
    "AdditionalPatientHistory": "X",
    "PregnancyStatus": "X",
    "LastMenstrualDate": "X",
    "SmokingStatus": "X",
    "SpecialNeeds": "X",
    "EthnicGroup": "X",
    "Occupation": "X",
    "MilitaryRank": "X",
    "BranchOfService": "X",
    "CountryOfResidence": "X",
    "RegionOfResidence": "X",
    "InsurancePlanIdentification": "X",
    "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X",
    "ConfidentialityConstraintOnPatientDataDescription": "X",
    # Visit and admission
    "AdmissionID": "X",
    "IssuerOfAdmissionID": "X",
    "AdmittingDate": "X",
    "AdmittingTime": "X",
    "AdmittingDiagnosesDescription": "X",
    "AdmittingDiagnosesCodeSequence": "X",
    "DischargeDiagnosisDescription": "X",
    "CurrentPatientLocation": "X",
    "ServiceEpisodeID": "X",
    "IssuerOfServiceEpisodeID": "X",
    "ServiceEpisodeDescription": "X",
    "VisitComments": "X",
    "ScheduledPatientInstitutionResidence": "X",
    # Study
    "StudyInstanceUID": "U",
    "StudyDate": "Z",
    "StudyTime": "Z",
    "StudyID": "Z",
    "StudyIDIssuer": "X",
    "AccessionNumber": "Z",
    "IssuerOfAccessionNumberSequence": "X",
    "StudyDescription": "X",
    "StudyComments": "X",
    "ReferringPhysicianName": "Z",
    "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X",
    "ReferringPhysicianIdentificationSequence": "X",
    "ConsultingPhysicianName": "X",
    "ConsultingPhysicianIdentificationSequence": "X",
    "PhysiciansOfRecord": "X",
    "PhysiciansOfRecordIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X",
    "PhysiciansReadingStudyIdentificationSequence": "X",
    "ReasonForStudy": "X",
    "ReferencedStudySequence": "X/Z",
    "ProcedureCodeSequence": "X/Z",
    "TimezoneOffsetFromUTC": "X",
    # Series, equipment, acquisition
    "SeriesInstanceUID": "U",
    "SeriesDate": "X/D",
    "SeriesTime": "X/D",
    "SeriesDescription": "X",
    "PerformingPhysicianName": "X",
    "PerformingPhysicianIdentificationSequence": "X",
    "OperatorsName": "X/Z/D",
    "OperatorIdentificationSequence": "X/D",
    "ProtocolName": "X/D",
    "AcquisitionDate": "X/Z",
    "AcquisitionTime": "X/Z",
    "AcquisitionDateTime": "X/Z/D",
    "StartAcquisitionDateTime": "X/D",
    "EndAcquisitionDateTime": "X/D",
    "FrameAcquisitionDateTime": "X/D",
    "FrameReferenceDateTime": "X/D",
    "AcquisitionComments": "X",
    "AcquisitionContextSequence": "X",
    "AcquisitionProtocolDescription": "X",
    "AcquisitionDeviceProcessingDescription": "X/D",
    "ContrastBolusAgent": "Z/D",
    "InstitutionName": "X/Z/D",
    "InstitutionAddress": "X",
    "InstitutionCodeSequence": "X/Z/D",
    "InstitutionalDepartmentName": "X",
    "StationName": "X/Z/D",
    "DeviceSerialNumber": "X/Z/D",
    "DeviceUID": "U",
    "DetectorID": "X/D",
    "GantryID": "X",
    "GeneratorID": "X",
    "CassetteID": "X",
    "PlateID": "X",
    "SourceSerialNumber": "X",
    "DateOfLastCalibration": "X",
    "TimeOfLastCalibration": "X",
    "DateOfSecondaryCapture": "X",
    "TimeOfSecondaryCapture": "X",
    "FrameOfReferenceUID": "U",
    "SynchronizationFrameOfReferenceUID": "U",
    "DimensionOrganizationUID": "U",
    "ConcatenationUID": "U",
    "IrradiationEventUID": "U",
    # Instance
    "SOPInstanceUID": "U",
    "MediaStorageSOPInstanceUID": "U",
    "ReferencedSOPInstanceUIDInFile": "U",
    "InstanceCreatorUID": "U",
    "InstanceCreationDate": "X/D",
    "InstanceCreationTime": "X/Z/D",
    "InstanceCoercionDateTime": "X",
    "ContentDate": "Z/D",
    "ContentTime": "Z/D",
    "ImageComments": "X",
    "FrameComments": "X",
    "ImagePresentationComments": "X",
    "DerivationDescription": "X",
    "IdentifyingComments": "X",
    "IconImageSequence": "X",
    "ReferencedImageSequence": "X/Z/U*",
    "SourceImageSequence": "X/Z/U*",
    "ReferencedSOPInstanceUID": "U",
    "ReferencedFrameOfReferenceUID": "U",
    "RelatedFrameOfReferenceUID": "U",
    "FailedSOPInstanceUIDList": "U",
    "TransactionUID": "U",
    "ContextGroupExtensionCreatorUID": "U",
    "CreatorVersionUID": "U",
    "TemplateExtensionCreatorUID": "U",
    "TemplateExtensionOrganizationUID": "U",
    "PaletteColorLookupTableUID": "U",
    "LargePaletteColorLookupTableUID": "U",
    "StorageMediaFileSetUID": "U",
    "DoseReferenceUID": "U",
    "FiducialUID": "U",
    "SpecimenUID": "U",
    "TrackingUID": "U",
    "ObservationUID": "U",
    "UID": "U",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",
    "ModifiedAttributesSequence": "X",
    "OriginalAttributesSequence": "X",
    "ModifiedImageDescription": "X",
    "ModifyingDeviceID": "X",
    "ModifyingDeviceManufacturer": "X",
    "DigitalSignatureUID": "X",
    "DigitalSignaturesSequence": "X",
    "ReferencedDigitalSignatureSequence": "X",
    "ReferencedSOPInstanceMACSequence": "X",
    "MAC": "X",
    "DataSetTrailingPadding": "X",
    "Arbitrary": "X",
    "TextComments": "X",
    "TextString": "X",
    "CurveDate": "X",
    "CurveTime": "X",
    "OverlayDate": "X",
    "OverlayTime": "X",
    # Orders, requests, procedure steps
    "RequestAttributesSequence": "X",
    "RequestedProcedureDescription": "X/Z",
    "RequestedProcedureID": "X",
    "RequestedProcedureLocation": "X",
    "RequestedProcedureComments": "X",
    "RequestedContrastAgent": "X",
    "RequestingPhysician": "X",
    "RequestingService": "X",
    "ReasonForTheImagingServiceRequest": "X",
    "ImagingServiceRequestComments": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z",
    "FillerOrderNumberImagingServiceRequest": "Z",
    "OrderCallbackPhoneNumber": "X",
    "OrderEnteredBy": "X",
    "OrderEntererLocation": "X",
    "ReferencedPerformedProcedureStepSequence": "X/Z/D",
    "PerformedProcedureStepID": "X",
    "PerformedProcedureStepDescription": "X",
    "PerformedProcedureStepStartDate": "X",
    "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X",
    "PerformedProcedureStepEndTime": "X",
    "CommentsOnThePerformedProcedureStep": "X",
    "PerformedLocation": "X",
    "PerformedStationAETitle": "X",
    "PerformedStationName": "X",
    "PerformedStationNameCodeSequence": "X",
    "PerformedStationGeographicLocationCodeSequence": "X",
    "ActualHumanPerformersSequence": "X",
    "HumanPerformerName": "X",
    "HumanPerformerOrganization": "X",
    "ScheduledProcedureStepID": "X",
    "ScheduledProcedureStepDescription": "X",
    "ScheduledProcedureStepStartDate": "X",
    "ScheduledProcedureStepStartTime": "X",
    "ScheduledProcedureStepEndDate": "X",
    "ScheduledProcedureStepEndTime": "X",
    "ScheduledProcedureStepLocation": "X",
    "ScheduledPerformingPhysicianName": "X",
    "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "ScheduledHumanPerformersSequence": "X",
    "ScheduledStationAETitle": "X",
    "ScheduledStationName": "X",
    "ScheduledStationNameCodeSequence": "X",
    "ScheduledStationGeographicLocationCodeSequence": "X",
    "ScheduledStudyLocation": "X",
    "ScheduledStudyLocationAETitle": "X",
    "PreMedication": "X",
    "NamesOfIntendedRecipientsOfResults": "X",
    "IntendedRecipientsOfResultsIdentificationSequence": "X",
    "PersonAddress": "X",
    "PersonTelephoneNumbers": "X",
    "PersonName": "D",
    "PersonIdentificationCodeSequence": "D",
    # Structured reports, results, interpretations, presentation states, RT
    "ContentSequence": "X",
    "AuthorObserverSequence": "X",
    "ParticipantSequence": "X",
    "CustodialOrganizationSequence": "X",
    "VerifyingObserverSequence": "D",
    "VerifyingObserverName": "D",
    "VerifyingObserverIdentificationCodeSequence": "Z",
    "VerifyingOrganization": "X",
    "ContentCreatorName": "Z",
    "ContentCreatorIdentificationCodeSequence": "X",
    "GraphicAnnotationSequence": "D",
    "ContributionDescription": "X",
    "ReviewerName": "X/Z",
    "Impressions": "X",
    "InterpretationText": "X",
    "InterpretationAuthor": "X",
    "InterpretationRecorder": "X",
    "InterpretationTranscriber": "X",
    "InterpretationApproverSequence": "X",
    "InterpretationDiagnosisDescription": "X",
    "InterpretationIDIssuer": "X",
    "PhysicianApprovingInterpretation": "X",
    "ResultsComments": "X",
    "ResultsDistributionListSequence": "X",
    "ResultsIDIssuer": "X",
    "DistributionName": "X",
    "DistributionAddress": "X",
    "TopicTitle": "X",
    "TopicSubject": "X",
    "TopicAuthor": "X",
    "TopicKeywords": "X",
}

#: Identifying attributes of the File Meta Information (PS3.10 §7.1), removed from the exported files.
_FILE_META_REMOVED: Final = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "SourcePresentationAddress",
    "SendingPresentationAddress",
    "ReceivingPresentationAddress",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)

#: The attributes each retain option keeps (PS3.15 E.3, the "K" entries of its column in Table E.1-1).
_PATIENT_CHARACTERISTICS: Final = frozenset(
    {"PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup", "PregnancyStatus", "SmokingStatus"}
)
_DEVICE_IDENTITY: Final = frozenset(
    {
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "DetectorID",
        "GantryID",
        "GeneratorID",
        "CassetteID",
        "PlateID",
        "SourceSerialNumber",
        "DateOfLastCalibration",
        "TimeOfLastCalibration",
    }
)
_INSTITUTION_IDENTITY: Final = frozenset(
    {"InstitutionName", "InstitutionAddress", "InstitutionCodeSequence", "InstitutionalDepartmentName"}
)

#: PS3.16 CID 7050 "De-identification Method": the profile and each option (scheme DCM).
ACTION_CODES: Final[Mapping[str, tuple[str, str]]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "retain_long_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}

_METHOD_DESCRIPTION: Final = "DICOM PS3.15 E.1 Basic Profile (telemed)"
_DUMMY_TEXT: Final = "ANONYMIZED"
_DUMMIES: Final[Mapping[str, str]] = {
    "PN": _DUMMY_TEXT,
    "LO": _DUMMY_TEXT,
    "SH": _DUMMY_TEXT,
    "ST": _DUMMY_TEXT,
    "LT": _DUMMY_TEXT,
    "UT": _DUMMY_TEXT,
    "UC": _DUMMY_TEXT,
    "AE": _DUMMY_TEXT,
    "CS": _DUMMY_TEXT,
    "DA": "19000101",
    "TM": "000000",
    "DT": "19000101000000",
    "AS": "000Y",
    "IS": "0",
    "DS": "0",
}
#: Value representations whose values are free text or dates: scrubbed inside items of a ``D`` sequence.
_SCRUBBED_VRS: Final = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "DA", "TM", "DT"})
_TEMPORAL_VRS: Final = frozenset({"DA", "TM", "DT"})
_STRING_VRS: Final = frozenset(_DUMMIES) | {"UR", "UI"}


class DeidentificationError(ValueError):
    """An instance this module will not de-identify; ``http_status`` is what an export endpoint answers."""

    http_status: ClassVar[int] = 422


class BurnedInAnnotationRefused(DeidentificationError):
    """Burned In Annotation is YES: identifying text may be in the pixels (PS3.15 E.1.1 item 3, E.3.1)."""

    http_status: ClassVar[int] = 409


def resolve_action(code: str, vr: str) -> Action:
    """The action taken for a Table E.1-1 code, without knowing the attribute's Type in the IOD.

    Every combined code is resolved to an action that is valid whatever the Type (PS3.5 §7.4: Type 1 needs a
    value, Type 2 may be empty, Type 3 may be empty or absent):

    * ``X/Z`` → empty; ``X/D``, ``Z/D``, ``X/Z/D`` → dummy value;
    * for a sequence, a code with ``X`` in it → removed (except ``X/Z/U*``: kept, the UIDs in its items are
      replaced), ``Z/D`` → empty, ``D`` → kept with every text and date value in its items replaced by a dummy.
    """
    if code == "X/Z/U*":
        return Action.clean_items
    parts = set(code.split("/"))
    if vr == "SQ":
        if "X" in parts:
            return Action.remove
        if parts == {"D"}:
            return Action.dummy
        if "Z" in parts:
            return Action.empty
    if parts == {"X"}:
        return Action.remove
    if parts == {"U"}:
        return Action.replace_uid
    if parts == {"K"}:
        return Action.keep
    if "D" in parts:
        return Action.dummy
    if "Z" in parts:
        return Action.empty
    raise ValueError(f"unknown Table E.1-1 action code {code!r}")


@dataclass(frozen=True, slots=True)
class ProfileOptions:
    """Options of the profile (PS3.15 E.3) this module offers, and the burned-in annotation opt-in."""

    #: E.3.9: keep the original UIDs (for re-linking within a trusted research project).
    retain_uids: bool = False
    #: E.3.6: keep dates and times as they are.
    retain_long_full_dates: bool = False
    #: E.3.7: keep sex, age, size, weight, ethnic group, pregnancy and smoking status.
    retain_patient_characteristics: bool = False
    #: E.3.8: keep station name, device serial number and the other device identifiers.
    retain_device_identity: bool = False
    #: E.3.11: keep the institution name, address, code and department (e.g. for the health bureau).
    retain_institution_identity: bool = False
    #: A study-level pseudonym written into Patient's Name and Patient ID (``Z`` allows a dummy value), so that
    #: the instances of one patient stay together in a viewer; empty when None.
    patient_pseudonym: str | None = None
    #: Export instances marked Burned In Annotation = YES anyway (the pixels are NOT cleaned).
    allow_burned_in_annotation: bool = False

    def option_keys(self) -> list[str]:
        return [
            key
            for key in (
                "retain_long_full_dates",
                "retain_patient_characteristics",
                "retain_device_identity",
                "retain_uids",
                "retain_institution_identity",
            )
            if getattr(self, key)
        ]


def _tag(keyword: str) -> BaseTag:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise LookupError(f"{keyword} is not a DICOM keyword")
    return Tag(tag)


def profile_actions(options: ProfileOptions = ProfileOptions()) -> dict[BaseTag, Action]:
    """Tag → action for the Basic Profile with ``options``; tags that are not listed are kept."""
    kept: set[str] = set()
    if options.retain_patient_characteristics:
        kept |= _PATIENT_CHARACTERISTICS
    if options.retain_device_identity:
        kept |= _DEVICE_IDENTITY
    if options.retain_institution_identity:
        kept |= _INSTITUTION_IDENTITY
    actions: dict[BaseTag, Action] = {}
    for keyword, code in TABLE_E1_1.items():
        tag = _tag(keyword)
        vr = dictionary_VR(tag)
        action = resolve_action(code, vr)
        if (
            keyword in kept
            or (options.retain_uids and action is Action.replace_uid)
            or (options.retain_long_full_dates and vr in _TEMPORAL_VRS)
        ):
            action = Action.keep
        actions[tag] = action
    return actions


class UidMapper:
    """Original UID → new ``2.25.<integer>`` UID (PS3.5 B.2), the same for the same UID within one export.

    The new UID is the UUID (RFC 9562 version 8) made of an HMAC-SHA-256 of the original UID under a key:
    deterministic for one mapper (so a study exported in several calls stays one study when the same mapper or
    key is used), unlinkable across exports with different keys, and not reversible without the key. A new
    mapper draws a random key; pass ``key`` only to keep linkage across exports of the same project.
    """

    def __init__(self, key: bytes | None = None) -> None:
        if key is not None and len(key) < 16:
            raise ValueError("a UID mapping key needs at least 16 bytes")
        self._key = key if key is not None else secrets.token_bytes(32)

    def map(self, uid: str) -> str:
        original = uid.strip(" \0")
        if not original:
            return original
        digest = hmac.new(self._key, original.encode("ascii", "replace"), hashlib.sha256).digest()
        value = int.from_bytes(digest[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant 10
        return f"2.25.{value}"

    __call__ = map


def _empty_value(vr: str) -> Any:
    if vr == "SQ":
        return DicomSequence()
    return "" if vr in _STRING_VRS else None


def _dummy_value(vr: str, multiplicity: int) -> Any:
    dummy = _DUMMIES.get(vr)
    if dummy is None:
        return _empty_value(vr)
    return dummy if multiplicity <= 1 else [dummy] * multiplicity


def _map_uids(value: Any, uid_map: UidMapper) -> Any:
    if value is None or value == "":
        return value
    if isinstance(value, MultiValue | list | tuple):
        return [uid_map.map(str(item)) for item in value]
    return uid_map.map(str(value))


def _is_removed_repeating_group(tag: BaseTag) -> bool:
    """Curve Data (50xx,xxxx), Overlay Data (60xx,3000) and Overlay Comments (60xx,4000): X in Table E.1-1."""
    group = tag.group
    if 0x5000 <= group <= 0x50FF and group % 2 == 0:
        return True
    return 0x6000 <= group <= 0x60FF and group % 2 == 0 and tag.element in (0x3000, 0x4000)


def _multiplicity(element: DataElement) -> int:
    value = element.value
    if isinstance(value, MultiValue | list | tuple):
        return len(value)
    return 1


def _clean(dataset: Dataset, actions: Mapping[BaseTag, Action], uid_map: UidMapper, *, scrub: bool) -> None:
    """Apply ``actions`` to ``dataset`` and every item below it; ``scrub`` dummies all text (inside ``D`` items)."""
    for tag in list(dataset.keys()):
        tag = Tag(tag)
        if tag.is_private or tag.element == 0x0000 or _is_removed_repeating_group(tag):
            del dataset[tag]
            continue
        element = dataset[tag]
        vr = element.VR
        action = actions.get(tag)
        if action is None and scrub and vr in _SCRUBBED_VRS:
            action = Action.dummy
        if action is None or action is Action.keep or action is Action.clean_items:
            if vr == "SQ" and element.value:
                for item in element.value:
                    _clean(item, actions, uid_map, scrub=scrub)
            continue
        if action is Action.remove:
            del dataset[tag]
        elif action is Action.empty:
            element.value = _empty_value(vr)
        elif action is Action.replace_uid:
            element.value = _map_uids(element.value, uid_map)
        elif vr == "SQ":  # dummy sequence: keep the items, replace what they say
            for item in element.value or ():
                _clean(item, actions, uid_map, scrub=True)
        else:
            element.value = _dummy_value(vr, _multiplicity(element))


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _record_method(dataset: Dataset, options: ProfileOptions) -> None:
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = _METHOD_DESCRIPTION
    keys = ["basic", *options.option_keys()]
    dataset.DeidentificationMethodCodeSequence = DicomSequence([_code_item(*ACTION_CODES[key]) for key in keys])
    # PS3.3 C.12.1: whether dates were kept, shifted or removed.
    dataset.LongitudinalTemporalInformationModified = "UNMODIFIED" if options.retain_long_full_dates else "REMOVED"


def _check_burned_in(dataset: Dataset, options: ProfileOptions) -> None:
    flag = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper()
    if flag == "YES" and not options.allow_burned_in_annotation:
        raise BurnedInAnnotationRefused(
            "the instance has Burned In Annotation = YES; its pixels may show identifying text and are not "
            "cleaned here: refuse, or opt in with allow_burned_in_annotation"
        )


def _deidentify_in_place(
    dataset: Dataset, uid_map: UidMapper, options: ProfileOptions, actions: Mapping[BaseTag, Action]
) -> None:
    _check_burned_in(dataset, options)
    _clean(dataset, actions, uid_map, scrub=False)
    if options.patient_pseudonym is not None:
        dataset.PatientName = options.patient_pseudonym
        dataset.PatientID = options.patient_pseudonym
    _record_method(dataset, options)

    meta = getattr(dataset, "file_meta", None)
    if isinstance(meta, FileMetaDataset):
        for keyword in _FILE_META_REMOVED:
            if keyword in meta:
                delattr(meta, keyword)
        if "SOPInstanceUID" in dataset:
            meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        elif "MediaStorageSOPInstanceUID" in meta and not options.retain_uids:
            meta.MediaStorageSOPInstanceUID = UID(uid_map.map(str(meta.MediaStorageSOPInstanceUID)))


def deidentify(
    dataset: Dataset,
    *,
    uid_map: UidMapper,
    profile_options: ProfileOptions = ProfileOptions(),
) -> Dataset:
    """A de-identified copy of ``dataset`` (PS3.15 E.1, Basic Profile); ``dataset`` itself is left unchanged.

    Use one ``uid_map`` for every instance of an export, so that the study, series and frame of reference UIDs
    and the references between instances stay consistent. Raises :class:`BurnedInAnnotationRefused` for an
    instance with Burned In Annotation = YES unless ``profile_options.allow_burned_in_annotation``.
    """
    _check_burned_in(dataset, profile_options)
    result = copy.deepcopy(dataset)
    _deidentify_in_place(result, uid_map, profile_options, profile_actions(profile_options))
    return result


def _write_atomically(dataset: Dataset, target: Path) -> None:
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    try:
        dataset.save_as(temporary, enforce_file_format=True)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def deidentify_study_files(
    paths: Iterable[Path | str],
    out_dir: Path | str,
    *,
    uid_map: UidMapper | None = None,
    profile_options: ProfileOptions = ProfileOptions(),
) -> list[Path]:
    """De-identify the instance files of one export into ``out_dir``; returns the new paths in input order.

    Files are named by their new SOP Instance UID. Every header is checked first, so an instance refused for
    burned-in annotation stops the export before anything is written; if a later step fails, the files this
    call wrote are removed again.
    """
    sources: Sequence[Path] = [Path(path) for path in paths]
    target_dir = Path(out_dir)
    target_dir.mkdir(parents=True, exist_ok=True)
    mapper = uid_map or UidMapper()
    actions = profile_actions(profile_options)

    for source in sources:
        _check_burned_in(pydicom.dcmread(source, stop_before_pixels=True), profile_options)

    written: list[Path] = []
    try:
        for source in sources:
            dataset = pydicom.dcmread(source)
            _deidentify_in_place(dataset, mapper, profile_options, actions)
            name = str(dataset.get("SOPInstanceUID") or mapper.map(str(source.resolve())))
            target = target_dir / f"{name}.dcm"
            _write_atomically(dataset, target)
            written.append(target)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return written
