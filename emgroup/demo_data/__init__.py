"""Public-domain data shipped for the demo: adenylate kinase closed (1AKE) and open (4AKE) atomic models."""
