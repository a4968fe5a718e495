"""DICOM BodyPartExamined defined terms and their SNOMED CT codes, without pydicom.

The DICOM ingest (:mod:`node.dicom.mapping`) and the FHIR ImagingStudy mapper both read this table
(so both ingests write the same source value); a FHIR ingest worker need not import pydicom for it
(~0.16 s of CPU per worker process).
"""

#: BodyPartExamined (0018,0015) defined terms -> SNOMED CT, after PS3.16 Annex L (CID 4031).
BODY_PART_SNOMED = {
    "ABDOMEN": ("113345001", "Abdominal structure"),
    "ARM": ("40983000", "Upper limb structure"),
    "BRAIN": ("12738006", "Brain structure"),
    "BREAST": ("76752008", "Breast structure"),
    "CHEST": ("51185008", "Thoracic structure"),
    "CSPINE": ("122494005", "Cervical spine structure"),
    "EXTREMITY": ("66019005", "Limb structure"),
    "FOOT": ("56459004", "Foot structure"),
    "HAND": ("85562004", "Hand structure"),
    "HEAD": ("69536005", "Head structure"),
    "HEADNECK": ("774007", "Structure of head and/or neck"),
    "HIP": ("24136001", "Hip joint structure"),
    "KIDNEY": ("64033007", "Kidney structure"),
    "KNEE": ("72696002", "Knee region structure"),
    "LEG": ("30021000", "Lower leg structure"),
    "LIVER": ("10200004", "Liver structure"),
    "LSPINE": ("122496007", "Lumbar spine structure"),
    "LUNG": ("39607008", "Lung structure"),
    "NECK": ("45048000", "Neck structure"),
    "PELVIS": ("12921003", "Pelvic structure"),
    "PROSTATE": ("41216001", "Prostatic structure"),
    "RETROPERITONEUM": ("82849001", "Retroperitoneal structure"),
    "SHOULDER": ("16982005", "Shoulder region structure"),
    "SPINE": ("421060004", "Vertebral column structure"),
    "THIGH": ("68367000", "Thigh structure"),
    "TSPINE": ("122495006", "Thoracic spine structure"),
    "WHOLEBODY": ("38266002", "Entire body as a whole"),
}
