"""Scale past one device and one process: the same training run on 8 simulated devices, and on 2 processes of 2
devices each (a multi-host run on one machine, through `fsq --coordinator-address ...`), against one device.

Each run is the `fsq` command in a fresh subprocess, since the device count and the distributed runtime are fixed
when JAX starts."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fsq_ref.common.errors import InputError
from fsq_ref.training import distributed, tokenizer_train

TRAIN = ["train", "autoencoder", "--data", "procedural:64", "--preset", "tiny", "--levels", "5,5,5",
         "--batch-size", "16", "--steps", "4", "--eval-every", "4"]


def _fsq(args, devices: int, **env) -> subprocess.Popen:
    environment = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **env}
    return subprocess.Popen([sys.executable, "-m", "fsq_ref.cli", *map(str, args)], env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def _losses_and_params(workdir):
    losses = [json.loads(line)["loss"] for line in open(workdir / "metrics.jsonl") if '"train"' in line]
    model, _, header = tokenizer_train.load(workdir)
    return losses, jax.tree.leaves(model), header


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one") / "run"
    _finish(_fsq([*TRAIN, "--workdir", workdir], devices=1))
    return _losses_and_params(workdir)


def _assert_same_run(a, b):
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
    # As in test_train: Adam turns reduction-order noise on ~0 gradients into updates of up to +-lr per step.
    for x, y in zip(a[1], b[1]):
        np.testing.assert_allclose(x, y, atol=1e-3)
    assert a[2]["step"] == b[2]["step"] == 4


@pytest.mark.slow  # the 4-device tests of test_train and the 2-process test below cover the default suite
def test_eight_devices_match_one(one_device, tmp_path):
    _finish(_fsq([*TRAIN, "--workdir", tmp_path / "run"], devices=8))
    _assert_same_run(_losses_and_params(tmp_path / "run"), one_device)


def test_two_processes_match_one(one_device, tmp_path):
    workdir, address = tmp_path / "run", f"localhost:{_free_port()}"
    processes = [_fsq(["--coordinator-address", address, "--num-processes", 2, "--process-id", i, *TRAIN,
                       "--workdir", workdir], devices=2) for i in range(2)]
    outputs = [_finish(p) for p in processes]
    assert "checkpoint:" in outputs[0]
    # Process 0 alone wrote the files: one log line per logging interval, not two.
    assert len([line for line in open(workdir / "metrics.jsonl") if '"eval"' in line]) == 1
    _assert_same_run(_losses_and_params(workdir), one_device)


def test_settings_are_checked(monkeypatch):
    with pytest.raises(InputError, match="needs all of"):
        distributed.initialize("localhost:1234", None, 0)
    with pytest.raises(InputError, match="process-id must be in"):
        distributed.initialize("localhost:1234", 2, 2)
    monkeypatch.setenv("FSQ_NUM_PROCESSES", "two")
    with pytest.raises(InputError, match="FSQ_NUM_PROCESSES"):
        distributed.initialize()
