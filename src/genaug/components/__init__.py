"""Pretrained-model components, each loading `from_pretrained(hub id or local dir, revision)`."""
