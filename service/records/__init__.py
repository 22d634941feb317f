"""Traceability: the audit trail of every answered prediction (owner: service.records.store), its
evidence archive, the database and its migrations, and the runtime that ties them to the app."""

# The review station's table (service.records.reviews, migration 0002) shares this schema: importing it
# here puts it on tables.Base.metadata whenever the records are used, so metadata and migrations agree.
from service.records import reviews as reviews
