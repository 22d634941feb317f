"""The review station: pages at /ui where quality staff see each part's evidence and review the verdict
(owner: service.ui.routes; login and CSRF in service.ui.auth; pictures in service.ui.images)."""
