"""The build: every op has its schema, CPU kernel, fake kernel and (in a CUDA build) CUDA kernel."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

import atspeed_ext
from atspeed_ext import _ops


def _registered_ops() -> list[str]:
    return sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("atspeed_ext::"))


def test_op_list_matches_the_library():
    assert _registered_ops() == sorted(_ops.OP_NAMES)


@pytest.mark.parametrize("name", _ops.OP_NAMES)
def test_every_op_has_a_cpu_kernel(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"atspeed_ext::{name}", "CPU")


@pytest.mark.parametrize("name", _ops.OP_NAMES)
def test_every_op_has_a_fake_kernel(name):
    from torch._library.simple_registry import singleton

    assert singleton.find(f"atspeed_ext::{name}").fake_impl.kernel is not None


@pytest.mark.parametrize("name", _ops.OP_NAMES)
def test_cuda_build_has_a_cuda_kernel_for_every_op(name):
    if not atspeed_ext.built_with_cuda():
        pytest.skip("CPU-only build")
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"atspeed_ext::{name}", "CUDA"), (
        f"atspeed_ext::{name} has no CUDA kernel although the extension was built with CUDA")


def test_cuda_kernels_were_built_when_required():
    # CI sets ATSPEED_REQUIRE_CUDA=1 with a CUDA build of torch: a build that silently dropped the .cu files fails.
    if os.environ.get("ATSPEED_REQUIRE_CUDA") != "1":
        pytest.skip("ATSPEED_REQUIRE_CUDA is not set")
    assert torch.version.cuda, "ATSPEED_REQUIRE_CUDA=1 but torch is not a CUDA build"
    assert atspeed_ext.built_with_cuda()


def test_import_refuses_a_torch_other_than_the_builds(monkeypatch):
    from atspeed_ext import _build_check, _build_info

    _build_check.check_torch_matches_build()  # the installed torch is the build's
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match="built against torch 1.0.0"):
        _build_check.check_torch_matches_build()


def test_the_extension_uses_the_shared_cxx_runtime():
    # A static copy of libstdc++ inside _C (a toolchain that links it statically) keeps its own iostreams and
    # locales, and number formatting in error messages breaks against torch's: CMakeLists.txt links the shared one.
    nm, readelf = shutil.which("nm"), shutil.which("readelf")
    if not sys.platform.startswith("linux") or nm is None or readelf is None:
        pytest.skip("needs Linux, nm and readelf")
    from atspeed_ext import _C

    dynamic = subprocess.run([readelf, "-d", _C.__file__], capture_output=True, text=True, check=True).stdout
    assert "[libstdc++.so.6]" in dynamic, "_C does not load the shared libstdc++"
    defined = subprocess.run([nm, "-D", "--defined-only", _C.__file__], capture_output=True, text=True,
                             check=True).stdout
    for symbol, name in [("_ZNSo9_M_insertIlEERSoT_", "std::ostream::_M_insert<long>"),
                         ("_ZNSt6locale7classicEv", "std::locale::classic"), ("_ZSt4cout", "std::cout")]:
        assert symbol not in defined, f"_C defines {name}: a static copy of libstdc++"
