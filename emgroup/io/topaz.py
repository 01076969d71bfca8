"""Topaz particle coordinate tables: tab-separated ``image_name x_coord y_coord score``, pixels of the micrograph
(x = column, y = row)."""

from pathlib import Path

import numpy as np
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
    bad = ~np.isfinite(table[["x_coord", "y_coord"]].to_numpy()).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise InputError(f"coordinate {first + 1} ({table['image_name'].iloc[first]}: x {table['x_coord'].iloc[first]}, "
                         f"y {table['y_coord'].iloc[first]}) is not a number", path)
    return table
