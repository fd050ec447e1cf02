"""PyTorch-LIT compatibility: code written for `pip install pytorch-lit` runs on litcore.

    from pytorch_lit.export import prepare_params
    prepare_params(model.state_dict(), ".models/my-model", dtype="float32")
    from pytorch_lit import LitModule
    model = LitModule.from_params(".models/my-model", lambda: MyModel(), device="cpu")
"""
from litcore import LitModule
from pytorch_lit.export import prepare_params

__all__ = ["LitModule", "prepare_params"]
