"""Alembic migrations of the records database, run by service.records.database at start-up."""
