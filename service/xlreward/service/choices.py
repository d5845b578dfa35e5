"""Choices that several commands and settings offer, declared once (torch-free): the CLIs' ``choices=``,
the settings' and config files' types all come from here."""

from __future__ import annotations

from typing import Literal, get_args

DeviceName = Literal["auto", "cpu", "cuda"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]

DEVICES: tuple[str, ...] = get_args(DeviceName)
DTYPES: tuple[str, ...] = get_args(DtypeName)
DTYPE_HELP = "model weights' dtype; auto = bfloat16 on GPU, float32 on CPU; log-softmax is float32 always"
