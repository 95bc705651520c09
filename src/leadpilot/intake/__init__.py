"""Lead intake: read CSV/XLSX, map columns, validate and normalise, de-duplicate, import idempotently."""
