"""``zoo.create_model`` given careless arguments (issue 29: H7): what it returns agrees with
what it says it returns, and anything else is one ValueError that says what to pass."""

import pytest
import torch

import zoo

# One torch thread (the tiny models gain nothing from more); one process, even under torchrun.
pytestmark = pytest.mark.usefixtures("one_thread", "not_distributed")


# H7: features_only's out_indices


def _features(out_indices=None):
    torch.manual_seed(0)  # the same weights every time: maps compare exactly
    return zoo.create_model("resnet20_gn", features_only=True, out_indices=out_indices).eval()


@torch.no_grad()
def test_out_indices_give_the_maps_feature_info_names():
    every = _features()
    x = torch.randn(2, 3, 32, 32)
    stage_maps, stages = every(x), every.feature_info
    assert len(stage_maps) == len(stages) == 4
    # stage indices in the order given, negatives from the end; an int n: the last n (timm's)
    for out_indices, chosen in [((3, 1), [3, 1]), ((-1, 0), [3, 0]), ([2], [2]), (2, [2, 3]),
                                (4, [0, 1, 2, 3]), (range(1, 3), [1, 2])]:
        model = _features(out_indices)
        maps = model(x)
        assert model.feature_info == [stages[i] for i in chosen], out_indices
        assert model.out_indices == tuple(chosen) and model.config["out_indices"] == chosen
        assert len(maps) == len(chosen)
        for fmap, info, i in zip(maps, model.feature_info, chosen):
            assert fmap.shape[1] == info["num_chs"] and 32 // fmap.shape[-1] == info["reduction"]
            assert torch.equal(fmap, stage_maps[i])

    modules = str([s["module"] for s in stages])
    for out_indices, problem in [((1, 1), "stage 1 twice"), ((-1, 3), "stage 3 twice"),
                                 ((4,), "4 is not a stage"), ((-5,), "-5 is not a stage"),
                                 ((), "no stage"), (0, "0 stages"), (5, "5 stages"),
                                 (-1, "-1 stages"), ((1.0,), "1.0 is not a stage"),
                                 ((True,), "True is not a stage"), (("a",), "'a' is not a stage"), (True, "True"),
                                 ("12", "a str"), ({1, 2}, "a set")]:
        with pytest.raises(ValueError) as raised:
            _features(out_indices)
        message = str(raised.value)
        assert type(raised.value) is ValueError and "\n" not in message
        assert message.startswith("out_indices must be stage indices 0..3 (negative from the end),"
                                  " each once, or a number of last stages 1..4"), message
        assert f"resnet20_gn has stages {modules}" in message and problem in message, message


# norm_kwargs of another kind than the norm's defaults: one error before any layer is built
# (a string eps used to fail at the first forward, deep in F.group_norm)

@pytest.mark.parametrize("model, norm_kwargs, shown", [
    ("resnet20_gn", {"eps": "x"}, "eps='x' (its default is 1e-05)"),
    ("resnet20_bn", {"eps": float("nan")}, "eps=nan (its default is 1e-05)"),
    ("resnet20_gn", {"max_groups": 8.0}, "max_groups=8.0 (its default is 32)"),
    ("resnet20_l1bn", {"momentum": True}, "momentum=True (its default is 0.1)"),
])
def test_norm_kwargs_of_another_kind_are_refused(model, norm_kwargs, shown):
    with pytest.raises(ValueError, match="takes each argument as the kind of value its default is") as e:
        zoo.create_model(model, norm_kwargs=norm_kwargs)
    assert str(e.value).endswith(shown)
    with pytest.raises(ValueError, match="the kind of value its default is"):
        zoo.create_norm(model.split("_")[1], 16, **norm_kwargs)


def test_an_int_stands_for_a_float_norm_kwarg():
    model = zoo.create_model("resnet20_gn", norm_kwargs={"eps": 1})
    assert model.config["norm_kwargs"]["eps"] == 1 and model.bn1.eps == 1

