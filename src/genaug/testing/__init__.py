"""Offline test helpers: tiny random models written with save_pretrained."""
