"""Data layer: ParticleStack, preprocessing, CTF, image transforms, poses and simulation (imports io only)."""
