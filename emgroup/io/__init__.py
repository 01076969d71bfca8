"""File formats: MRC/MRCS, STAR, cryoSPARC .cs, Topaz coordinates, atomic models. numpy/pandas only."""
