"""Never a silent wrong answer, never a crash from a bad file: checksums on load, faults on
a file cut short under a running model, and options that mean what they say."""
import os

import pytest
import torch
from torch import nn

import litcore
import litcore.jit
from conftest import run_python
from models import Block


def _build():
    return nn.Sequential(*[Block(64) for _ in range(6)])


@pytest.fixture
def model_file(tmp):
    torch.manual_seed(0)
    ref = _build().eval()
    litcore.save(ref.state_dict(), tmp / "m.lit")
    return ref, tmp / "m.lit"


def _flip_a_byte(path, tensor):
    with litcore.Store(path) as store:
        offset = store.info(tensor).offset + 5
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


@pytest.mark.parametrize("budget", ["auto", "60KB"])
@pytest.mark.parametrize("verify", ["lazy", "full"])
def test_a_flipped_byte_is_never_a_silent_wrong_answer(model_file, budget, verify):
    _, path = model_file
    _flip_a_byte(path, "3.fc2.weight")
    x = torch.randn(2, 5, 64)
    with pytest.raises(litcore.FormatError, match=r"m\.lit.*checksum|checksum.*m\.lit") as info:
        lit = litcore.LitModule.from_params(path, _build, memory_budget=budget, verify=verify)
        lit(x)
    assert "'3.fc2.weight'" in str(info.value)
    # no checks (the default: lazy checks cost more than the 5% a default may, docs/benchmarks.md)
    lit = litcore.LitModule.from_params(path, _build, memory_budget=budget)
    assert lit(x).shape == (2, 5, 64)


def test_lazy_verification_checks_each_tensor_once(model_file):
    ref, path = model_file
    lit = litcore.LitModule.from_params(path, _build, memory_budget="60KB", verify="lazy")
    x = torch.randn(2, 5, 64)
    for _ in range(3):
        with torch.no_grad():
            assert torch.equal(lit(x), ref(x))
    _flip_a_byte(path, "5.fc1.weight")  # after every tensor was checked: not re-read by the check
    lit(x)


def test_torchscript_and_cpp_verify_too(tmp, cpp_app):
    import subprocess

    torch.manual_seed(0)
    scripted = torch.jit.script(_build().eval())
    litcore.jit.save(scripted, tmp / "s.pt", tmp / "s.lit")
    _flip_a_byte(tmp / "s.lit", "2.fc1.weight")
    x = torch.randn(2, 5, 64)
    with pytest.raises(Exception, match=r"s\.lit.*2\.fc1\.weight.*checksum"):
        with torch.no_grad():
            litcore.jit.load(tmp / "s.pt", tmp / "s.lit", verify="lazy")(x)
    with pytest.raises(Exception, match=r"2\.fc1\.weight"):
        litcore.jit.load(tmp / "s.pt", tmp / "s.lit", verify="full")
    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "s.pt"), str(tmp / "s.lit"), "--shape", "2,5,64",
                        "--verify", "lazy"], capture_output=True, text=True)
    assert r.returncode == 4 and "'2.fc1.weight': checksum mismatch" in r.stderr, r.stderr
    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "s.pt"), str(tmp / "s.lit"), "--shape", "2,5,64"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # the default, as in Python: no checks


def test_a_file_truncated_under_a_store_raises_instead_of_killing(model_file):
    _, path = model_file
    out = run_python(f"""
        import os, litcore, torch
        store = litcore.Store({str(path)!r})
        t = store["5.fc2.weight"]
        os.truncate({str(path)!r}, 4096)
        total = float(t.sum())  # would be a bare "Bus error" and a dead process
        try:
            store["0.fc1.weight"]
        except OSError as e:
            print("OSError", e)
        """)
    assert "OSError" in out.stdout and "m.lit" in out.stdout and "truncated" in out.stdout


@pytest.mark.parametrize("budget, read_mode", [("auto", "sendfile"), ("60KB", "sendfile"), ("60KB", "direct")])
def test_a_file_truncated_under_a_running_model_fails_the_forward(model_file, budget, read_mode):
    _, path = model_file
    out = run_python(f"""
        import os, sys, torch, litcore
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from models import Block
        build = lambda: torch.nn.Sequential(*[Block(64) for _ in range(6)])
        lit = litcore.LitModule.from_params({str(path)!r}, build, memory_budget={budget!r}, verify="none",
                                            read_mode={read_mode!r})
        x = torch.randn(2, 5, 64)
        lit(x)
        os.truncate({str(path)!r}, 8192)
        try:
            lit(x)
        except OSError as e:
            print("OSError", e)
        """)
    assert "OSError" in out.stdout and "m.lit" in out.stdout, out.stdout + out.stderr


def test_options_that_mean_what_they_say(model_file, tmp):
    _, path = model_file
    for bad in (0, -1, 1000):
        with pytest.raises(ValueError, match="threads must be between 1 and 64"):
            litcore.LitModule.from_params(path, _build, threads=bad)
    with pytest.raises(TypeError, match="threads"):
        litcore.LitModule.from_params(path, _build, threads=1.5)
    with pytest.raises(ValueError, match="verify"):
        litcore.LitModule.from_params(path, _build, verify="sometimes")
    with pytest.raises(ValueError, match="memory_budget.*'abc'"):
        litcore.LitModule.from_params(path, _build, memory_budget="abc")
    with pytest.raises(ValueError, match="memory_budget must be positive"):
        litcore.LitModule.from_params(path, _build, memory_budget=-5)
    with pytest.warns(UserWarning, match="memory_budget .* more than this machine has"):
        litcore.LitModule.from_params(path, _build, memory_budget="100TB")


def test_jit_budget_too_small_names_the_module(tmp):
    torch.manual_seed(0)
    litcore.jit.save(torch.jit.script(_build().eval()), tmp / "s.pt", tmp / "s.lit")
    with pytest.raises(Exception, match=r"too small.*module '\d\.fc\d'"):
        litcore.jit.load(tmp / "s.pt", tmp / "s.lit", memory_budget=1000)
    with pytest.raises(ValueError, match="threads"):
        litcore.jit.load(tmp / "s.pt", tmp / "s.lit", threads=0)


@pytest.mark.parametrize("args, message", [
    (["--budget", "abc"], "--budget: cannot parse 'abc'"),
    (["--budget", "-5"], "--budget: cannot parse '-5'"),
    (["--budget", "0"], "--budget must be a positive size"),
    (["--repeat", "x"], "--repeat takes a positive whole number"),
    (["--threads", "0"], "--threads takes a positive whole number"),
    (["--threads", "65"], "threads must be between 1 and 64"),
    (["--verify", "maybe"], "verify must be 'none', 'lazy' or 'full'"),
    (["--device", "gpu"], "device must be 'cpu', 'cuda' or 'cuda:N', not 'gpu'"),
    (["--device", "cuda:x"], "device must be 'cpu', 'cuda' or 'cuda:N', not 'cuda:x'"),
    (["--budget"], "--budget needs a value"),
])
def test_cpp_app_options_fail_clearly(tmp, cpp_app, args, message):
    import subprocess

    litcore.jit.save(torch.jit.script(_build().eval()), tmp / "s.pt", tmp / "s.lit")
    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "s.pt"), str(tmp / "s.lit"), *args],
                       capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    r = subprocess.run([str(cpp_app / "run_model"), str(tmp / "s.pt"), str(tmp / "s.lit"), "--budget", "1.5GiB",
                        "--shape", "2,5,64"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_destinations_are_checked_first_and_named(tmp):
    weights = {"w": torch.ones(3)}
    with pytest.raises(OSError, match=r"cannot write '.*nowhere/x\.lit': its directory"):
        litcore.save(weights, tmp / "nowhere" / "x.lit")
    (tmp / "adir").mkdir()
    with pytest.raises(OSError, match=r"cannot write '.*adir': it is a directory"):
        litcore.save(weights, tmp / "adir")
    scripted = torch.jit.script(_build().eval())
    with pytest.raises(OSError, match=r"nowhere/s\.pt"):
        litcore.jit.save(scripted, tmp / "nowhere" / "s.pt", tmp / "s.lit")
    assert not (tmp / "s.lit").exists()  # checked before the weights were written
    litcore.jit.save(scripted, tmp / "s.pt", tmp / "s.lit")
    assert [p.name for p in tmp.iterdir() if "partial" in p.name] == []


def test_jit_save_uses_the_atomic_writer(tmp):
    stale = tmp / ".s.pt.999999999.litcore-partial"  # left by a writer that died
    stale.write_bytes(b"half a program")
    litcore.jit.save(torch.jit.script(_build().eval()), tmp / "s.pt", tmp / "s.lit")
    assert not stale.exists() and (tmp / "s.pt").exists()
    assert sorted(p.name for p in tmp.iterdir()) == ["s.lit", "s.pt"]
