"""Versioned SQL migrations, applied in file-name order by `warehouse.db.migrate`."""
