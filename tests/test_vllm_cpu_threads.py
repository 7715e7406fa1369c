"""runtime.configure_vllm_cpu_threads: the OpenMP binding handed to vLLM's CPU engine (no vLLM needed)."""

from __future__ import annotations

import os

import pytest

from eedi.config import load_config
from eedi.errors import ConfigError
from eedi.runtime import configure_vllm_cpu_threads

BIND = "VLLM_CPU_OMP_THREADS_BIND"


@pytest.fixture(autouse=True)
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 0, 5, 1})


def test_unset_binds_every_affinity_core():
    env = {}
    assert configure_vllm_cpu_threads(None, "cpu", environ=env) == "0,1,3,5"
    assert env[BIND] == "0,1,3,5"


def test_explicit_thread_count_takes_the_first_cores():
    env = {}
    assert configure_vllm_cpu_threads(2, "cpu", environ=env) == "0,1"
    assert env[BIND] == "0,1"


def test_more_threads_than_cores_is_capped():
    env = {}
    assert configure_vllm_cpu_threads(16, "cpu", environ=env) == "0,1,3,5"


@pytest.mark.parametrize(
    "user", [{BIND: "auto"}, {BIND: "0-1"}, {BIND: "nobind"}, {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}]
)
def test_keeps_what_the_user_set(user):
    env = dict(user)
    assert configure_vllm_cpu_threads(None, "cpu", environ=env) is None
    assert env == user


def test_its_own_earlier_value_is_replaced():
    env = {}
    configure_vllm_cpu_threads(None, "cpu", environ=env)
    assert configure_vllm_cpu_threads(1, "cpu", environ=env) == "0"
    assert env[BIND] == "0"


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_nothing_on_cuda(device):
    env = {}
    assert configure_vllm_cpu_threads(None, device, environ=env) is None
    assert env == {}


def test_tensor_parallel_keeps_vllm_numa_binding():
    env = {}
    assert configure_vllm_cpu_threads(None, "cpu", tensor_parallel_size=2, environ=env) is None
    assert env == {}


def test_config_key_is_validated():
    assert load_config(None).runtime.vllm_cpu_threads is None
    assert load_config(None, ["runtime.vllm_cpu_threads=2"]).runtime.vllm_cpu_threads == 2
    with pytest.raises(ConfigError, match="vllm_cpu_threads"):
        load_config(None, ["runtime.vllm_cpu_threads=0"])
