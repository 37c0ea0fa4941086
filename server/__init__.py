"""Offload language server, CLI, task manager and agent."""
