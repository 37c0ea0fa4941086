"""Errors the sandbox layer raises; their messages are written for the user."""


class SandboxError(Exception):
    """A sandbox could not be created, reached or used."""
