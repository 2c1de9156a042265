"""The HL7 v2 adapter: ADT messages over MLLP."""
