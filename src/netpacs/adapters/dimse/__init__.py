"""The DIMSE adapter: DICOM upper layer (PS3.8) and DIMSE-C services (PS3.7, PS3.4)."""
