"""RELION's CTF on the rfft2 grid: physics, agreement with relion_project --ctf, per-optics-group parameters."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from emgroup.ctf import ctf_parameters, ctf_rfft, electron_wavelength
from emgroup.data.ctf import stack_ctf
from emgroup.errors import InputError


def ctf(box, apix, *parameters, **named):
    """CTFs as a numpy array, from the arguments of :func:`ctf_parameters`."""
    return ctf_rfft(box, ctf_parameters(apix, *parameters, **named)).numpy()


def test_wavelength_and_first_zero():
    assert float(electron_wavelength(300.0)) == pytest.approx(0.019687, abs=1e-6)  # 300 keV electrons, in Å
    assert float(electron_wavelength(200.0)) == pytest.approx(0.025079, abs=1e-6)
    # no Cs, no amplitude contrast, no astigmatism: CTF = sin(pi lambda dz s^2), first zero at s^2 = 1 / (lambda dz)
    box, apix, defocus = 256, 1.0, 20000.0
    curve = ctf(box, apix, defocus, defocus, 0.0, 300.0, 0.0, 0.0)[0, 0]
    s = np.fft.rfftfreq(box, d=apix)
    first_zero = np.argmax(curve[1:] < 0) + 1
    expected = 1 / np.sqrt(electron_wavelength(300.0) * defocus)
    assert s[first_zero - 1] <= expected <= s[first_zero]
    assert curve[0] == pytest.approx(0.0, abs=1e-7) and curve[1] > 0  # underfocus: positive first lobe


def test_amplitude_contrast_and_bfactor():
    pair = ctf(64, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, bfactor=[0.0, 200.0])
    assert pair[0, 0, 0] == pytest.approx(0.1, abs=1e-6)  # sin(atan(w / sqrt(1 - w^2))) = w at s = 0
    s2 = np.add.outer(np.fft.fftfreq(64, 2.0) ** 2, np.fft.rfftfreq(64, 2.0) ** 2)
    np.testing.assert_allclose(pair[1], pair[0] * np.exp(-200.0 * s2 / 4), atol=1e-6)


@pytest.mark.relion
def test_matches_relion_project_ctf(blob_volume, relion_project):
    volume, apix = blob_volume
    table = {"rlnAngleRot": [0.0, 40.0], "rlnAngleTilt": [0.0, 70.0], "rlnAnglePsi": [0.0, 10.0],
             "rlnDefocusU": [15000.0, 9000.0], "rlnDefocusV": [12000.0, 5000.0], "rlnDefocusAngle": [30.0, -70.0]}
    plain = relion_project(volume, apix, table)
    with_ctf = relion_project(volume, apix, table, "--ctf")
    filters = ctf(volume.shape[0], apix, table["rlnDefocusU"], table["rlnDefocusV"], table["rlnDefocusAngle"],
                   300.0, 2.7, 0.1)
    ours = np.fft.irfft2(np.fft.rfft2(plain) * filters, s=plain.shape[1:])
    for a, b in zip(ours, with_ctf):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
    # the astigmatism angle's sense matters: mirrored angles do not match
    mirrored = ctf(volume.shape[0], apix, table["rlnDefocusU"], table["rlnDefocusV"],
                        -np.array(table["rlnDefocusAngle"]), 300.0, 2.7, 0.1)
    wrong = np.fft.irfft2(np.fft.rfft2(plain) * mirrored, s=plain.shape[1:])
    assert np.corrcoef(wrong[0].ravel(), with_ctf[0].ravel())[0, 1] < 0.99


def test_stack_ctf_uses_each_particles_optics_group():
    optics = pd.DataFrame({"rlnOpticsGroup": [1, 2], "rlnVoltage": [300.0, 200.0],
                           "rlnSphericalAberration": [2.7, 1.4], "rlnAmplitudeContrast": [0.1, 0.07]})
    meta = pd.DataFrame({"rlnDefocusU": [10000.0, 20000.0, 15000.0], "rlnDefocusV": [9000.0, 19000.0, 15000.0],
                         "rlnDefocusAngle": [10.0, 80.0, 0.0], "rlnOpticsGroup": [2, 1, 2]})
    stack = SimpleNamespace(meta=meta, optics=optics, box=32, apix=1.5)
    got = stack_ctf(stack, [2, 0])
    expected = ctf(32, 1.5, [15000.0, 10000.0], [15000.0, 9000.0], [0.0, 10.0], 200.0, 1.4, 0.07)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(stack_ctf(stack)[1], ctf(32, 1.5, 20000.0, 19000.0, 80.0, 300.0, 2.7, 0.1)[0],
                               atol=1e-6)
    with pytest.raises(InputError, match="rlnDefocusAngle"):
        stack_ctf(SimpleNamespace(meta=meta.drop(columns="rlnDefocusAngle"), optics=optics, box=32, apix=1.5))
