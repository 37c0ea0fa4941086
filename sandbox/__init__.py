"""Sandboxes: workspace snapshots and isolated command execution."""
