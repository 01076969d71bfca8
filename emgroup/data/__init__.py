"""Data layer: Stack, preprocessing, CTF, image transforms, poses and simulation (imports io only)."""
