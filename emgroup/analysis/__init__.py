"""Inference over a stack, clustering, class averages, denoising, metrics and plots."""
