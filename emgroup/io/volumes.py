"""Volume files: MRC maps and NIfTI images (read with the optional ``nibabel``), opened without reading voxels.

MRC volumes are z-y-x as mrcfile returns them; NIfTI is stored i-j-k and is seen transposed to k-j-i so that its
first axis is z; a 4-D NIfTI file holds one volume per index of its 4th axis. The voxel size is in Å for MRC and
in the NIfTI header's units (mm for MRI).
"""

import numpy as np

from emgroup.errors import InputError
from emgroup.io.mrc import open_volume

VOLUME_SUFFIXES = (".mrc", ".map", ".nii", ".nii.gz")


def is_volume_file(path) -> bool:
    """Whether ``path`` names a file of one of :data:`VOLUME_SUFFIXES`."""
    return str(path).lower().endswith(VOLUME_SUFFIXES)


def open_volumes(path):
    """(array-like ``(n, D1, D2, D3)`` z-y-x indexed by one volume number, voxel size or None) of one file.
    :class:`InputError` for an unreadable file, a NIfTI image that is not 3-D or 4-D, or NIfTI without nibabel."""
    if not str(path).lower().endswith((".nii", ".nii.gz")):
        data, voxel_size = open_volume(path)
        return data[np.newaxis], voxel_size
    try:
        import nibabel
    except ImportError:
        raise InputError("reading NIfTI volumes needs the optional package nibabel (pip install nibabel)") from None
    try:
        image = nibabel.load(path)
    except Exception as err:  # nibabel raises several types for a bad file; the message says which
        raise InputError(f"not a readable NIfTI file ({err})", path) from None
    if image.ndim not in (3, 4):
        raise InputError(f"NIfTI image has {image.ndim} dimensions (expected 3, or 4 for several volumes)", path)
    zooms = image.header.get_zooms()[:3]
    return _NiftiVolumes(image.dataobj), float(zooms[0]) if zooms[0] > 0 else None


class _NiftiVolumes:
    """A NIfTI data proxy (i-j-k[-t]) seen as ``(n, D, D, D)`` z-y-x volumes (reads one volume per index)."""

    def __init__(self, proxy):
        self.proxy = proxy
        self.shape = (proxy.shape[3] if len(proxy.shape) == 4 else 1, *proxy.shape[2::-1])

    def __getitem__(self, index: int) -> np.ndarray:
        volume = self.proxy[..., index] if len(self.proxy.shape) == 4 else self.proxy[...]
        return np.asarray(volume, dtype=np.float32).transpose(2, 1, 0)
