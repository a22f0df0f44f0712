"""Composition root: settings, app assembly, CLI, topic admin, local services."""
