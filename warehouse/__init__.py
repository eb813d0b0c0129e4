"""DuckDB warehouse: schema, migrations, sources, validation, reads and writes."""
