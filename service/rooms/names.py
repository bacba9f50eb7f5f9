"""Names shared by the settings, the service and its operator commands (no Django imports)."""

CHANNEL_LAYER_PREFIX = "wsapp"
CONTROL_ALL = "control.all"
DRAIN = "control.drain"
UNDRAIN = "control.undrain"


def control_group(color):
    return f"control.{color}"
