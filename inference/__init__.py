"""Runtimes, bundles, pre- and post-processing. Imports no other edge-agent package."""
