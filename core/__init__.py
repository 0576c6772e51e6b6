"""Shared pieces of the toolkit: label schema, dataset location, run reports, training helpers."""
