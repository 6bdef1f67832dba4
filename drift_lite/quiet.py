"""Silence the third-party output a user would read as an error but that says nothing about their run.

Each item below is one known message, silenced where it starts, with the reason; every other warning stays.
Call `quiet_known_noise()` before torch/transformers/peft/bitsandbytes are imported (it imports none of them).
"""

from __future__ import annotations

import logging
import os
import warnings

# bitsandbytes (0.50) probes the kernel hub when its CPU backend is imported on a CPU with AVX512-BF16
# (peft imports bitsandbytes, so every command that trains or loads a model does it):
# `kernels.get_kernel("kernels-community/quantization-bitsandbytes")` makes network requests at each start,
# and with kernels 0.19 it is refused anyway (the repository fails kernels' publisher trust check, which
# bitsandbytes cannot waive), so bitsandbytes logs "Failed to load CPU gemm_4bit_forward ..." and uses its
# own CPU kernel, as it would without the probe. kernels' LOCAL_KERNELS setting (repo_id=path, read when
# get_kernel runs) maps that one repository to an empty local path: the probe fails at once, offline.
_BNB_KERNEL_REPO = "kernels-community/quantization-bitsandbytes"
_BNB_PROBE_LOGGER = "bitsandbytes.backends.cpu.ops"
_BNB_PROBE_MESSAGE = "Failed to load CPU gemm_4bit_forward"

# transformers 5 deprecations raised from third-party code, not from drift-lite's own calls: peft's
# PeftModel.__init__ (peft 0.21) reads `model.is_gradient_checkpointing`, which transformers 5 deprecated
# for `is_activation_checkpointing`; the FutureWarning names an attribute the user never touched, once per
# adapter load. Each entry is (start of the message, category, module that issues it).
_KNOWN_DEPRECATIONS: list[tuple[str, type[Warning], str]] = [
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning, r"transformers\.modeling_utils"),
]


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with one fixed text; the logger's other records pass."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _skip_bnb_kernel_probe() -> None:
    """Answer bitsandbytes' kernel-hub probe locally (no request) and drop its warning line."""
    current = os.environ.get("LOCAL_KERNELS", "")
    if _BNB_KERNEL_REPO not in current:  # a user's own override of that repository wins
        empty = os.path.join(os.devnull, "no-kernel")  # a path that can never hold a kernel build
        os.environ["LOCAL_KERNELS"] = ":".join(filter(None, [current, f"{_BNB_KERNEL_REPO}={empty}"]))
    logger = logging.getLogger(_BNB_PROBE_LOGGER)
    if not any(isinstance(f, _DropMessage) for f in logger.filters):
        logger.addFilter(_DropMessage(_BNB_PROBE_MESSAGE))


def quiet_known_noise() -> None:
    """Silence the known third-party noise listed in this module (idempotent, imports nothing heavy)."""
    _skip_bnb_kernel_probe()
    for message, category, module in _KNOWN_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
