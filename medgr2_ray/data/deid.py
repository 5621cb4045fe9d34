"""De-identification of DICOM datasets, after the PS3.15 Annex E basic application confidentiality profile.

Applied to every dataset right after it is read, before anything is taken from it, so no later step
can leak what it removed. What it does:

- removes private tags, overlays and curves (they can carry text), and every attribute of the profile's
  remove/zero/dummy lists (names, IDs, birth date, addresses, institution, physicians, operators,
  device serials, free-text comments and descriptions, ...);
- removes every element whose VR is PN (person name) anywhere, nested sequences included, and every
  date/time (DA, DT, TM) — the profile's option to keep longitudinal dates is not offered;
- replaces UIDs (study, series, instance, frame of reference, ...) by salted-hash UIDs under the 2.25
  root, so that slices of one study still share a study UID and splits by study stay correct, while the
  original UID cannot be recovered without the salt;
- reports whether the header says BurnedInAnnotation=YES: text burned into the pixels is out of scope
  and is flagged, not removed.

Simplified: the full Annex E table has ~400 rows with per-IOD conditions; here a name/VR based superset
is removed instead (strictly more is dropped than the profile demands). Pure pydicom; no Ray.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.dataelem import DataElement

# Attributes of the basic profile that are not caught by the PN/date/UID rules below (keywords).
_REMOVE_KEYWORDS: frozenset[str] = frozenset({
    "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence", "IssuerOfPatientID",
    "PatientBirthName", "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers",
    "PatientAge", "PatientSize", "PatientWeight", "PatientSex", "EthnicGroup", "Occupation",
    "MilitaryRank", "BranchOfService", "MedicalRecordLocator", "PatientReligiousPreference",
    "AdditionalPatientHistory", "PatientComments", "PatientState", "PregnancyStatus",
    "MedicalAlerts", "Allergies", "SmokingStatus", "CountryOfResidence", "RegionOfResidence",
    "InsurancePlanIdentification", "PatientInsurancePlanCodeSequence", "ResponsibleOrganization",
    "AccessionNumber", "StudyID", "InstitutionName", "InstitutionAddress",
    "InstitutionalDepartmentName", "InstitutionCodeSequence", "StationName", "DeviceSerialNumber",
    "DeviceUID", "PlateID", "GantryID", "DetectorID", "CassetteID", "GeneratorID",
    "RequestingService", "RequestedProcedureID", "ScheduledProcedureStepID",
    "PerformedProcedureStepID", "PerformedProcedureStepDescription", "PerformedStationName",
    "PerformedLocation", "ScheduledStationName", "AdmissionID", "AdmittingDiagnosesDescription",
    "AdmittingDiagnosesCodeSequence", "CurrentPatientLocation", "PatientInstitutionResidence",
    "VisitComments", "StudyDescription", "SeriesDescription", "ProtocolName", "ImageComments",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "ReferencedPerformedProcedureStepSequence", "DerivationDescription", "TextString",
    "ContentSequence", "AcquisitionComments", "StudyComments", "InterpretationText",
    "ReasonForStudy", "RequestedProcedureDescription", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "OrderEntererLocation", "OriginalAttributesSequence",
    "ModifiedAttributesSequence", "DigitalSignaturesSequence", "IconImageSequence",
    "SourceApplicationEntityTitle", "StorageMediaFileSetID", "StorageMediaFileSetUID",
    "DeidentificationMethod",
    "PatientName", "ReferringPhysicianName", "PatientBirthDate", "PatientBirthTime",
})

# UIDs that name a standard (SOP class, transfer syntax, coding scheme), not an instance: kept.
_KEEP_UID_KEYWORDS: frozenset[str] = frozenset({
    "SOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID", "ReferencedSOPClassUID",
    "ImplementationClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
    "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "SOPClassesInStudy",
})

_DATE_VRS = frozenset({"DA", "DT", "TM"})


@dataclass(frozen=True)
class DeidReport:
    """What de-identification did to one dataset."""

    removed: int  # elements removed (names, IDs, dates, private tags, ...)
    uids_replaced: int
    burned_in_annotation: str  # "YES" | "NO" | "unknown" (attribute absent)


def hash_uid(uid: str, salt: bytes) -> str:
    """A salted-hash UID under the 2.25 (UUID-derived) root: same input and salt -> same UID."""
    digest = hashlib.sha256(salt + b"uid:" + uid.strip().encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def hash_text(text: str, salt: bytes, length: int = 16) -> str:
    """A salted hex digest of any identifier (file paths, study keys); not reversible without salt."""
    return hashlib.sha256(salt + b"txt:" + text.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def _is_overlay_or_curve(elem: DataElement) -> bool:
    """Repeating groups 50xx (curves) and 60xx (overlays) can hold text and graphics: dropped."""
    return (elem.tag.group & 0xFF00) in (0x5000, 0x6000)


def _scrub(ds: Dataset, salt: bytes, counts: dict[str, int]) -> None:
    """Remove/replace in place, recursing into sequences."""
    for elem in list(ds):
        kw = elem.keyword
        if (elem.tag.is_private or _is_overlay_or_curve(elem) or elem.VR == "PN" or elem.VR in _DATE_VRS
                or kw in _REMOVE_KEYWORDS):
            del ds[elem.tag]
            counts["removed"] += 1
        elif elem.VR == "UI" and kw not in _KEEP_UID_KEYWORDS and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            hashed = [hash_uid(str(v), salt) for v in values]
            elem.value = hashed if elem.VM > 1 else hashed[0]
            counts["uids"] += 1
        elif elem.VR == "SQ":
            for item in elem.value:
                _scrub(item, salt, counts)


def deidentify(ds: Dataset, salt: bytes) -> DeidReport:
    """De-identify `ds` in place (file meta included) and report what was done.

    `salt` must be secret and stable per installation (see `ingest.load_or_create_salt`): the same
    salt maps the same study UID to the same hashed UID across ingestion runs.
    """
    if not salt:
        raise ValueError("deidentify: an empty salt would make hashed UIDs reversible by lookup")
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() or "unknown"
    counts = {"removed": 0, "uids": 0}
    _scrub(ds, salt, counts)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _scrub(meta, salt, counts)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "PS3.15 basic profile superset (medgr2_ray)"
    return DeidReport(removed=counts["removed"], uids_replaced=counts["uids"], burned_in_annotation=burned)
