"""Traceability: the audit trail of every answered prediction (owner: service.records.store), its
evidence archive, the database and its migrations, and the runtime that ties them to the app."""
