"""With norm="bn" (and plain VGG with "none") our models are torchvision's: same keys,
same shapes, and a torchvision state_dict gives identical outputs."""

import pytest
import torch
import torchvision

import zoo

PAIRS = ([(f"resnet{d}_bn", f"resnet{d}") for d in (18, 34, 50, 101, 152)]
         + [(f"vgg{d}_bn", f"vgg{d}_bn") for d in (11, 13, 16, 19)]
         + [(f"vgg{d}_none", f"vgg{d}") for d in (11, 13, 16, 19)])


def _randomize(state_dict, generator):
    """Every tensor random (running variances positive), so a misplaced layer shows; counters
    zero."""
    for key, t in state_dict.items():
        if not t.is_floating_point():
            t.zero_()
            continue
        if key.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=generator) + 0.5)
        else:
            t.copy_(torch.randn(t.shape, generator=generator) * 0.05
                    + (1.0 if key.endswith("weight") and t.dim() == 1 else 0.0))
    return state_dict


@pytest.mark.parametrize("ours, theirs", PAIRS)
def test_same_keys_shapes_and_outputs_as_torchvision(ours, theirs):
    # built on the meta device: every tensor is replaced below, so the default inits (seconds
    # for a VGG's 100 M-parameter classifier) would be thrown away
    with torch.device("meta"):
        reference = getattr(torchvision.models, theirs)(weights=None)
        model = zoo.create_model(ours)
    ref_sd, our_sd = reference.state_dict(), model.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert [t.shape for t in our_sd.values()] == [t.shape for t in ref_sd.values()]

    reference.to_empty(device="cpu")
    model.to_empty(device="cpu")
    ref_sd = _randomize(reference.state_dict(), torch.Generator().manual_seed(0))
    reference.load_state_dict(ref_sd)
    model.load_state_dict(ref_sd, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reference.eval()(x))
        torch.manual_seed(2)
        train_out = model.train()(x)
        torch.manual_seed(2)  # same dropout masks
        assert torch.equal(train_out, reference.train()(x))
    for (key, ours_t), ref_t in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(ours_t, ref_t), key  # running statistics updated alike
