import os
import subprocess
import sys
import textwrap

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

# Every dtype the format holds, with a generator of a small test tensor.
ALL_DTYPES = [
    torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int8, torch.int16, torch.int32,
    torch.int64, torch.uint8, torch.bool, torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
    torch.float8_e5m2fnuz, torch.uint16, torch.uint32, torch.uint64, torch.complex64, torch.complex128,
]
if hasattr(torch, "float8_e8m0fnu"):
    ALL_DTYPES.append(torch.float8_e8m0fnu)


def sample(dtype: torch.dtype, shape=(3, 5), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, generator=g)
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(0, 100, shape, generator=g).to(dtype)


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, for every dtype (float8 and uints lack some comparison kernels)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return bytes(a.contiguous().view(-1).view(torch.uint8).numpy()) == bytes(b.contiguous().view(-1).view(torch.uint8).numpy())


def run_python(code: str, *args: str, env=None, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (a real subprocess) and returns the result."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture
def litcore_cli(capsys):
    """`litcore ARGS...` run in this process, as a CompletedProcess: the command's own code
    past the interpreter's start (a subprocess imports torch again, ~3 s on 2 cores). The
    entry point itself (`python -m litcore`, the `litcore` script) has its own tests."""
    from litcore import cli

    def run(*args) -> subprocess.CompletedProcess:
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as stop:  # argparse's errors, --help, --version
            code = stop.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture
def tmp(tmp_path):
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def conversion_cache(tmp_path_factory):
    """from_pretrained's conversions go to a scratch directory, never the user's cache."""
    os.environ["LITCORE_CACHE"] = str(tmp_path_factory.mktemp("litcore-cache"))
    yield os.environ["LITCORE_CACHE"]


def cmake_build(source_dir, build_dir) -> None:
    """Configures and builds a C++ project against the installed litcore and torch."""
    import litcore

    prefix = ";".join([litcore.cmake_prefix_path, torch.utils.cmake_prefix_path])
    subprocess.run(["cmake", "-S", str(source_dir), "-B", str(build_dir), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_PREFIX_PATH={prefix}"], check=True, capture_output=True, text=True)
    proc = subprocess.run(["cmake", "--build", str(build_dir)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"C++ build failed:\n{proc.stdout}\n{proc.stderr}")


@pytest.fixture(scope="session")
def cpp_tests(tmp_path_factory):
    """tests/cpp built once per session; returns the build directory."""
    build = tmp_path_factory.mktemp("cpp-build")
    cmake_build(os.path.join(os.path.dirname(__file__), "cpp"), build)
    return build


@pytest.fixture(scope="session")
def cpp_app(tmp_path_factory):
    """examples/cpp built once per session (run_model, plain_jit_load); returns the build dir."""
    build = tmp_path_factory.mktemp("cpp-app")
    cmake_build(os.path.join(os.path.dirname(__file__), "..", "examples", "cpp"), build)
    return build
