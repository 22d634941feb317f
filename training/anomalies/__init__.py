"""Anomaly generators used in training: MGAG (`mgag`, Gaussian noise on inputs, features and adapted
features) and UTAG (`texture_anomaly`, textures from `textures` blended over `perlin` masks).
"""
