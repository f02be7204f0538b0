"""The one exception of tools/bpg."""


class BpgError(ValueError):
    """Malformed, truncated or unsupported BPG data (the message names the field)."""
