"""Names shared by the settings, the service and its operator commands (no Django imports)."""

CHANNEL_LAYER_PREFIX = "wsapp"
DRAIN = "control.drain"
UNDRAIN = "control.undrain"


def control_group(color):
    return f"control.{color}"
