"""Fake of modules/sd_unet.py (1.10.1): no custom UNet (TensorRT etc.) is ever active."""

current_unet = None


def apply_unet(option: object = None) -> None:
    """mirrors modules/sd_unet.py: apply_unet (1.10.1) - nothing to apply in the fake."""
