"""emgroup: pose-disentangled representation learning for cryo-EM particles and volumes."""

__version__ = "0.1.0"
