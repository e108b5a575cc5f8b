"""Validation by execution: the sandbox that runs untrusted code, its child, and the checks of each kind."""
