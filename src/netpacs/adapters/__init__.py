"""Adapters: translate protocols (DIMSE, DICOMweb, HL7) into service calls."""
