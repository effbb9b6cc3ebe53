"""Backends: where the shared trunk and the task heads live and learn (NumPy or torch)."""

from __future__ import annotations

import functools

from stream_mtl.backends.base import Backend, HeadSpec
from stream_mtl.exceptions import InvalidInput

BACKENDS = ("numpy", "torch")
SHARING = ("hard", "soft")


def make_backend(
    name: str,
    hidden: tuple[int, ...],
    activation: str,
    optimizer: str,
    lr: float,
    dtype: str,
    device: str,
    mixed_precision: bool = False,
    sharing: str = "hard",
    soft_strength: float = 1.0,
    **mixture: float,
) -> Backend:
    """The backend called `name`, empty (no inputs, no heads); with `sharing="soft"`, one
    such backend per task, their trunks pulled together (see `soft`)."""
    if sharing not in SHARING:
        raise InvalidInput(f"unknown sharing {sharing!r}; expected one of {SHARING}")
    args = (name, hidden, activation, optimizer, lr, dtype, device, mixed_precision)
    if sharing == "soft":
        from stream_mtl.backends.soft import SoftSharing

        if not hidden:
            raise InvalidInput("sharing='soft' needs a trunk (hidden layers) to share softly")
        return SoftSharing(functools.partial(make_backend, *args, **mixture), soft_strength)
    if name == "numpy":
        from stream_mtl.backends.numpy import NumpyBackend

        if mixed_precision:
            raise InvalidInput("mixed_precision is a torch backend option; use backend='torch'")
        if device not in ("cpu", "auto"):
            raise InvalidInput(
                f"the numpy backend runs on the CPU only; device={device!r} needs backend='torch'"
            )
        return NumpyBackend(
            hidden=hidden, activation=activation, optimizer=optimizer, lr=lr, dtype=dtype,
            **mixture,
        )  # fmt: skip
    if name == "torch":
        try:
            from stream_mtl.backends.torch import TorchBackend
        except ImportError as error:
            raise ImportError(
                "backend='torch' needs PyTorch, which is an optional extra: "
                "pip install 'stream-mtl[torch]' (from PyPI on Linux that is the CUDA "
                "build; for the CPU build, first pip install torch --index-url "
                "https://download.pytorch.org/whl/cpu)"
            ) from error

        return TorchBackend(
            hidden=hidden, activation=activation, optimizer=optimizer, lr=lr, dtype=dtype,
            device=device, mixed_precision=mixed_precision, **mixture,
        )  # fmt: skip
    raise InvalidInput(f"unknown backend {name!r}; expected one of {BACKENDS}")


__all__ = ["BACKENDS", "SHARING", "Backend", "HeadSpec", "make_backend"]
