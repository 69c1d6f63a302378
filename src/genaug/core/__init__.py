"""The bottom layer: records, configuration, seeding, devices, logging, file helpers. Imports nothing of genaug."""
