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
