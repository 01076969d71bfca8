"""Atomic models (PDB/mmCIF) read with gemmi: coordinates and element symbols of the first model."""

from pathlib import Path

import gemmi
import numpy as np

from emgroup.errors import InputError


def read_atoms(path) -> tuple[np.ndarray, list[str]]:
    """``(xyz (n, 3) float64 in Å, elements list of n symbols)`` of the first model (alternative conformations
    removed, hydrogens kept).

    A PDB file without element symbols (columns 77-78 blank, as CHARMM writes them) gets the first letter of each
    atom name as its element: gemmi's guess from left-justified names mistakes e.g. ``CA`` for calcium.
    """
    path = Path(path)
    try:
        structure = gemmi.read_structure(str(path))
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(f"cannot read the atomic model ({err})", path) from None
    structure.remove_alternative_conformations()
    if len(structure) == 0 or structure[0].count_atom_sites() == 0:
        raise InputError("the atomic model has no atoms", path)
    atoms = [cra.atom for cra in structure[0].all()]
    xyz = np.array([atom.pos.tolist() for atom in atoms])
    if structure.input_format == gemmi.CoorFormat.Pdb and not _pdb_has_element_symbols(path):
        return xyz, [atom.name.lstrip("0123456789")[0].upper() for atom in atoms]
    return xyz, [atom.element.name for atom in atoms]


def _pdb_has_element_symbols(path: Path) -> bool:
    with open(path, errors="replace") as handle:
        return any(line[76:78].strip() for line in handle if line.startswith(("ATOM", "HETATM")))


def read_trajectory(path) -> tuple[np.ndarray, list[str]]:
    """``(coords (F, n, 3) float64 in Å, elements list of n symbols)`` from an ``.npz`` with keys ``coords`` and
    ``elements`` (frames of one molecule, atoms in the same order in every frame)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            coords, elements = np.asarray(data["coords"], dtype=float), [str(e) for e in data["elements"]]
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"not a trajectory .npz with 'coords' (F, n, 3) and 'elements' (n,) ({err})", path) from None
    if coords.ndim != 3 or coords.shape[2] != 3 or coords.shape[1] != len(elements) or len(coords) < 2:
        raise InputError(f"'coords' {coords.shape} must be (F >= 2, n, 3) with n = {len(elements)} elements", path)
    return coords, elements
