"""Tests for fsq_ref.allocator: glibc's malloc configured to keep freed memory, and the way to opt out."""

import platform

import pytest

from fsq_ref.training import allocator


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_glibc_accepts_every_setting():
    assert allocator.keep_freed_memory() is True


def test_system_allocator_is_left_alone_on_request(monkeypatch):
    monkeypatch.setenv("FSQ_MALLOC", "system")
    assert allocator.keep_freed_memory() is False
