"""Choices that several commands and settings offer, declared once (torch-free): the CLIs' ``choices=``,
the settings' and config files' types all come from here."""

from __future__ import annotations

from typing import Literal, get_args

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

DEVICES: tuple[str, ...] = get_args(DeviceName)
DTYPES: tuple[str, ...] = get_args(DtypeName)
# transformers' (accelerate's) automatic placements of one model over the GPUs there are.
DeviceMapName = Literal["auto", "balanced", "balanced_low_0", "sequential"]
DEVICE_MAPS: tuple[str, ...] = get_args(DeviceMapName)
# One named device: where a whole model goes (cuda:N picks a GPU; auto: the first GPU, else the CPU).
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"

DTYPE_HELP = "model weights' dtype; auto = bfloat16 on GPU, float32 on CPU; log-softmax is float32 always"
