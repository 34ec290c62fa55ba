"""Spreadsheet-safe table cells: text that Excel or LibreOffice would run as a formula is escaped.

A cell whose text begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is read as a
formula by spreadsheet programs (``=cmd|' /C calc'!A0``). Every table SCIseg writes (CSV and .xlsx)
goes through :func:`escape_formulas`, which prefixes such text with a single quote (OWASP's advice).
Numbers stay numbers: a negative value, or text that is exactly a number ("-3.5"), is not touched.
Carriage returns inside text become newlines (so the CSV writer quotes the cell).
"""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def escape_cell(value: object) -> object:
    """``value`` with a leading ``'`` when it is text a spreadsheet would read as a formula; anything else as is.

    Carriage returns inside text become newlines: the CSV writer quotes a cell holding a newline, while a
    bare carriage return would end the row there and start the next one with the rest of the text.
    """
    if not isinstance(value, str):
        return value
    escaped = value
    if value.startswith(FORMULA_STARTS):
        try:
            float(value)
        except ValueError:
            escaped = "'" + value
    return escaped.replace("\r\n", "\n").replace("\r", "\n")


def escape_formulas(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells and column names are spreadsheet-safe (numeric columns untouched)."""
    escaped = table.copy()
    for column in escaped.columns:
        if escaped[column].dtype == object or pd.api.types.is_string_dtype(escaped[column]):
            escaped[column] = escaped[column].map(escape_cell)
    escaped.columns = [escape_cell(str(c)) if isinstance(c, str) else c for c in escaped.columns]
    return escaped
