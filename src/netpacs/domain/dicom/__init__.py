"""DICOM encoding utilities below the services: Part 10 framing and header parsing.

Pure Python, no I/O.
"""
