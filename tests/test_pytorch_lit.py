"""PyTorch-LIT's README code runs unchanged on litcore."""
import os

import pytest
import torch

from conftest import run_python


def test_readme_code_runs_unchanged(tmp):
    out = run_python(f"""
        import os, torch
        os.chdir({str(tmp)!r})
        torch.manual_seed(0)

        class MyModel(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(100, 16)
                self.fc = torch.nn.Linear(16, 4)
                self.register_buffer("bias_scale", torch.tensor(2.0))

            def forward(self, ids):
                return self.fc(self.emb(ids)) * self.bias_scale

        model = MyModel().eval()
        weights = model.state_dict()
        args, kwargs = (torch.tensor([[1, 2, 3]]),), {{}}
        with torch.no_grad():
            expected = model(*args, **kwargs)

        from pytorch_lit.export import prepare_params
        prepare_params(weights, ".models/my-model", dtype="float32")

        from pytorch_lit import LitModule
        model = LitModule.from_params(".models/my-model", lambda: MyModel(), device="cpu")
        result = model(*args, **kwargs)
        assert torch.equal(result, expected)
        print(sorted(os.listdir(".models/my-model")))
        """)
    assert "model.lit" in out.stdout


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", torch.float16])
def test_prepare_params_dtypes(tmp, dtype):
    from pytorch_lit import prepare_params

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
    sd = dict(model.state_dict(), count=torch.tensor(3))
    path = prepare_params(sd, tmp / "m", dtype=dtype)
    assert os.path.basename(path) == "model.lit"
    import litcore

    with litcore.Store(path) as store:
        want = dtype if isinstance(dtype, torch.dtype) else getattr(torch, dtype)
        assert store["0.weight"].dtype == want
        assert store["count"].dtype == torch.int64


def test_prepare_params_rejects_bad_dtype(tmp):
    from pytorch_lit.export import prepare_params

    with pytest.raises(ValueError, match="dtype"):
        prepare_params({"a": torch.ones(1)}, tmp / "m", dtype="int8")


def test_original_positional_signatures(tmp):
    from pytorch_lit import LitModule
    from pytorch_lit.export import prepare_params

    torch.manual_seed(0)

    def build():
        return torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).eval()

    model = build()
    prepare_params(model.state_dict(), str(tmp / "m"), "np-memmap", "float32", False)
    lit = LitModule.from_params(str(tmp / "m"), build, None, "cpu")
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(lit(x), model(x))
    with pytest.raises(RuntimeError, match="Unknown method"):
        prepare_params(model.state_dict(), str(tmp / "n"), "hdf5")
    with pytest.raises(ValueError, match="device"):
        LitModule.from_params(str(tmp / "m"), build)  # PyTorch-LIT's default device is cuda


def test_partial_loader_as_pytorch_lit_tests_use_it(tmp):
    """PyTorch-LIT's own PartialLoader tests: read, mixed dtypes (ints kept), keys."""
    from pytorch_lit import PartialLoader

    f16 = torch.rand((200, 1, 10), dtype=torch.float16)
    ints = torch.randint(0, 1000, (200, 1, 10), dtype=torch.int)
    torch.save({"f16_tensor": f16, "int_tensor": ints}, tmp / "tmp_file.bin")
    loader = PartialLoader(str(tmp / "tmp_file.bin"))
    assert set(loader.keys()) == {"f16_tensor", "int_tensor"}
    got = loader.read_key("f16_tensor")
    assert torch.equal(got, f16) and got.dtype == torch.float16
    got = loader.read_key("int_tensor", device="cpu")
    assert torch.equal(got, ints) and got.dtype == torch.int32
    with pytest.raises(KeyError, match="missing.*tmp_file.bin"):
        loader.read_key("missing")
    loader.close()
    assert torch.equal(got, ints)  # read tensors outlive the loader
    with pytest.raises(ValueError, match="closed"):
        loader.read_key("f16_tensor")


def test_prepare_partial_example_runs_unchanged(tmp):
    """PyTorch-LIT's GPT-J prepare_partial.py, on a small model's pytorch_model.bin."""
    out = run_python(f"""
        import os, torch
        os.chdir({str(tmp)!r})
        torch.manual_seed(0)

        class MyModel(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.emb = torch.nn.Embedding(100, 16)
                self.fc = torch.nn.Linear(16, 4)
                self.register_buffer("steps", torch.tensor([7, 9]))

            def forward(self, ids):
                return self.fc(self.emb(ids)) * self.steps.sum()

        model = MyModel().eval()
        torch.save(model.state_dict(), "pytorch_model.bin")

        from pytorch_lit import prepare_params, PartialLoader
        weights = PartialLoader("pytorch_model.bin")
        prepare_params(weights, ".models/my-model-lit", dtype="float16")

        from pytorch_lit import LitModule
        lit = LitModule.from_params(".models/my-model-lit", lambda: MyModel(), device="cpu")
        assert lit.module.fc.weight.dtype == torch.float16 and lit.module.steps.dtype == torch.int64
        ids = torch.tensor([[1, 2, 3]])
        with torch.no_grad():
            assert torch.equal(lit(ids), model.half()(ids))
        print("ok")
        """)
    assert out.stdout.strip().endswith("ok")


def test_partial_loader_refuses_a_pickle_that_is_not_a_state_dict(tmp):
    from pytorch_lit import PartialLoader

    torch.save({"x": os.system}, tmp / "unsafe.pt")  # loading it would import os.system: refused, never run
    with pytest.raises(ValueError, match="unsafe.pt.*weights_only"):
        PartialLoader(str(tmp / "unsafe.pt"))
