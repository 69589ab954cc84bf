"""Helpers for the metadata the Dagster UI shows on assets and checks."""

import dagster as dg


def table_metadata(records: list[dict], columns: list[tuple[str, str]]) -> dg.TableMetadataValue:
    """A UI table from row dicts and (name, type) columns; types are Dagster's: string, int, float, bool."""
    return dg.MetadataValue.table(
        records=[dg.TableRecord(r) for r in records],
        schema=dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in columns]),
    )
