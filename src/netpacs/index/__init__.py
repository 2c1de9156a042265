"""The index: SQLAlchemy tables, engine set-up, migrations and writers."""
