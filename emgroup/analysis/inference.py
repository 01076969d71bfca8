"""Inference over a particle stack through the model interface (``encode``/``decode``), streamed in batches.

The only model-specific knowledge is which optional keys ``encode`` returns, as the model's ``pose`` declares:
``theta`` (N,) radians and/or ``shift`` (N, 2) pixels (x, y) for in-plane models, ``rotation`` (N, 3, 3) for SO(3)
models (RELION's matrix ``A`` of :mod:`emgroup.data.poses`), and any posteriors (``q_tr``, ...) or model-wide
entries (``mask``) besides.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from emgroup.data.ctf import stack_ctf_parameters
from emgroup.data.poses import matrix_to_euler, relion_from_model
from emgroup.data.stack import require_finite
from emgroup.models.base import GroupAction

#: encode entries that place the object; without them ``decode`` draws the canonical pose
POSE_KEYS = ("theta", "shift", "rotation")
#: pixels decoded per call: coordinate generators hold a (pixels x hidden) activation per layer
DECODE_PIXELS = 2**16


def encode_stack(model, stack, store, batch_size: int = 256, device="cpu",
                 decoded: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None, canonical: bool = False,
                 progress: bool = True) -> dict:
    """Run ``model.encode`` over ``stack`` (a Stack), ``batch_size`` particles at a time on ``device``.

    Every entry of the encoding goes into ``store`` (an ``h5py.Group``) as a float32 dataset of ``len(stack)``
    rows; an entry that is the same for the whole batch (leading size not the batch size, e.g. a model-wide
    ``mask``) is stored once. When ``decoded`` is given it is called with each batch's ``(indices, images,
    reconstructions)``, the last being ``model.decode``'s output as float32 (m, D, D) — each particle in its own
    pose, or in the canonical pose when ``canonical``.
    Memory stays bounded by the batch. Returns ``store``'s datasets by name (read them with ``[:]``).
    :class:`~emgroup.errors.InputError` for a particle with NaN or Inf pixels.
    """
    n = len(stack)
    with torch.inference_mode(), tqdm(total=n, desc="encoding", unit="particle", disable=not progress) as bar:
        for indices, images in stack.iter_chunks(batch_size):
            require_finite(stack, indices, images)
            ctf = (torch.from_numpy(stack_ctf_parameters(stack, indices)).to(device) if model.uses_ctf else None)
            encoding = model.encode(torch.from_numpy(images).to(device), ctf)
            for name, value in encoding.items():
                value = value.float().cpu().numpy()
                per_particle = value.ndim > 0 and len(value) == len(indices)
                if name not in store:
                    store.create_dataset(name, shape=(n, *value.shape[1:]) if per_particle else value.shape,
                                         dtype=np.float32)
                if per_particle:
                    store[name][indices[0]:indices[-1] + 1] = value
                elif indices[0] == 0:
                    store[name][...] = value
            if decoded is not None:
                keep = {k: v for k, v in encoding.items() if not (canonical and k in POSE_KEYS)}
                decoded(indices, images, decode(model, keep, len(indices)))
            bar.update(len(indices))
    return dict(store)


def decode(model, latent: dict, n: int) -> np.ndarray:
    """``model.decode(latent)`` for ``n`` particles as float32 (n, D, D), in pieces of at most
    :data:`DECODE_PIXELS` pixels (entries whose leading size is not ``n`` are passed whole)."""
    step = max(1, DECODE_PIXELS // model.box**2)
    with torch.inference_mode():
        return np.concatenate([
            model.decode({k: v[start:start + step] if v.ndim and len(v) == n else v for k, v in latent.items()})
            .float().cpu().numpy() for start in range(0, n, step)])


def decode_latents(model, z, device="cpu") -> np.ndarray:
    """Images (n, D, D) float32 the generator draws in the canonical pose at latent vectors ``z`` (n, k)."""
    return decode(model, {"z": torch.as_tensor(np.asarray(z), dtype=torch.float32, device=device)}, len(z))


def group_action_examples(model: GroupAction, data: np.ndarray, angles_deg,
                          device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """The true ``T_g x`` and the model's prediction ``D(Phi_g(E x))`` of each of ``data`` (m, D, D[, D]) for g =
    the turns by ``angles_deg`` (degrees; in-plane for images, about the y axis for volumes). Two float32 arrays
    (m, len(angles), D, D[, D])."""
    x = torch.as_tensor(np.asarray(data), dtype=torch.float32, device=device)
    m, k = len(x), len(angles_deg)
    g = model.turns(torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float32, device=device)))
    x, g = x.repeat_interleave(k, 0), g.repeat(m, *(1,) * (g.dim() - 1))
    with torch.inference_mode():
        truth, predicted = model.transform(x, g), model.predict(x, g)
    shape = (m, k, *x.shape[1:])
    return truth.float().cpu().numpy().reshape(shape), predicted.float().cpu().numpy().reshape(shape)


def inplane_pose(encoding: dict, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(theta (n,) radians, shift (n, 2) pixels)`` from an encoding; a missing entry means no rotation/shift.

    For SO(3) models the in-plane angle is RELION's psi of ``rotation``.
    """
    if "theta" in encoding:
        theta = np.asarray(encoding["theta"], dtype=float).reshape(n)
    elif "rotation" in encoding:
        theta = np.radians(matrix_to_euler(np.asarray(encoding["rotation"]))[2])
    else:
        theta = np.zeros(n)
    shift = np.asarray(encoding["shift"], dtype=float).reshape(n, 2) if "shift" in encoding else np.zeros((n, 2))
    return theta, shift


def relion_pose_columns(encoding: dict, n: int, apix: float) -> pd.DataFrame:
    """The inferred poses as RELION 3.1 columns (degrees, Å): ``rlnAnglePsi``, ``rlnOriginXAngst/YAngst``, plus
    ``rlnAngleRot/Tilt`` for models that infer a rotation in SO(3). A model without a pose entry sees each image
    as it is: it gets the identity pose."""
    columns = {}
    if "rotation" in encoding:
        rot, tilt, _ = matrix_to_euler(np.asarray(encoding["rotation"]))
        columns |= {"rlnAngleRot": rot, "rlnAngleTilt": tilt}
    psi, origin_x, origin_y = relion_from_model(*inplane_pose(encoding, n), apix)
    columns |= {"rlnAnglePsi": psi, "rlnOriginXAngst": origin_x, "rlnOriginYAngst": origin_y}
    return pd.DataFrame(columns, index=pd.RangeIndex(n))
