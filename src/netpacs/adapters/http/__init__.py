"""The HTTP adapter: DICOMweb (STOW-RS, QIDO-RS, WADO-RS, WADO-URI), FHIR, pages, viewer."""
