import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _distribution_validation():
    # Importing sbi.inference (collected with tests/test_sbi.py) runs torch._dynamo's patcher,
    # which turns torch's distribution validation off for the whole process; every test starts
    # from torch's default (on), as a user's program does.
    torch.distributions.Distribution.set_default_validate_args(True)


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
