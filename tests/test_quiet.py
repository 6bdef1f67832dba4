"""quiet: the known third-party noise is silenced at its source; other warnings and log lines stay."""

import logging
import os
import subprocess
import sys
import warnings

from drift_lite.quiet import quiet_known_noise

BNB_REPO = "kernels-community/quantization-bitsandbytes"


def test_bnb_probe_answered_locally_and_its_line_dropped(monkeypatch, caplog):
    monkeypatch.setenv("LOCAL_KERNELS", "org/mine=/opt/k")
    quiet_known_noise()
    quiet_known_noise()  # idempotent
    local = os.environ["LOCAL_KERNELS"].split(":")
    assert local[0] == "org/mine=/opt/k" and sum(e.startswith(f"{BNB_REPO}=") for e in local) == 1
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "refused")
        logger.warning("a real bitsandbytes warning")
    assert [r.getMessage() for r in caplog.records] == ["a real bitsandbytes warning"]


def test_a_users_own_override_of_the_repo_wins(monkeypatch):
    monkeypatch.setenv("LOCAL_KERNELS", f"{BNB_REPO}=/my/build")
    quiet_known_noise()
    assert os.environ["LOCAL_KERNELS"] == f"{BNB_REPO}=/my/build"


def test_known_deprecation_silenced_other_warnings_stay(monkeypatch):
    monkeypatch.delenv("LOCAL_KERNELS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_noise()
        for message in ("`is_gradient_checkpointing` is deprecated and will be removed in v6.", "a real one"):
            warnings.warn_explicit(
                message, FutureWarning, "modeling_utils.py", 1, module="transformers.modeling_utils"
            )
        warnings.warn_explicit(
            "`is_gradient_checkpointing` is deprecated", FutureWarning, "x.py", 1, module="someone.else"
        )
    assert [str(w.message) for w in caught] == ["a real one", "`is_gradient_checkpointing` is deprecated"]


def test_importing_bitsandbytes_prints_no_probe_line():
    code = "import drift_lite.quiet as q; q.quiet_known_noise(); import bitsandbytes; print('ok')"
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_KERNELS"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok" and "Failed to load" not in proc.stderr
