"""Topaz particle coordinate tables: tab-separated ``image_name x_coord y_coord score``, pixels of the micrograph
(x = column, y = row)."""

from pathlib import Path

import pandas as pd

from emgroup.errors import InputError

COLUMNS = ["image_name", "x_coord", "y_coord", "score"]


def read_topaz(path) -> pd.DataFrame:
    """The coordinate table: ``image_name`` (str), ``x_coord``, ``y_coord`` (px), ``score`` (NaN when absent)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        table = pd.read_csv(path, sep="\t", dtype={"image_name": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"not a Topaz coordinate table ({err})", path) from None
    missing = [c for c in COLUMNS[:3] if c not in table]
    if missing:
        raise InputError(f"not a Topaz coordinate table (no {', '.join(missing)} column)", path)
    if "score" not in table:
        table["score"] = float("nan")
    try:
        table = table[COLUMNS].astype({"x_coord": float, "y_coord": float, "score": float})
    except ValueError as err:
        raise InputError(f"non-numeric coordinate or score ({err})", path) from None
    if table.empty:
        raise InputError("no coordinates", path)
    return table
