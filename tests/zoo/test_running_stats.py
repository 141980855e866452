"""zoo.recalibrate_norms and zoo.freeze_norms for every registered norm, on ResNet-20.

Recalibrated statistics are checked against the statistics' formulas (zoo.reference where it
has them) in float64, applied to each layer's inputs captured in a separate forward pass.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

import zoo
from zoo import reference
from zoo.norms.norm_matters import L1BatchNorm2d, LpBatchNorm2d, MeanBatchNorm2d, TopKBatchNorm2d
from zoo.norms.running_stats import norms_with_statistics

pytestmark = pytest.mark.usefixtures("one_thread")

WITH_STATISTICS = ["bn", "mimic", "l1bn", "linfbn", "topkbn", "lpbn", "meanbn", "bwn"]
PER_SAMPLE = ["gn", "in", "ln", "ilm", "ilm_in", "ilm_ln"]


def model_for(norm, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return zoo.create_model(f"resnet20_{norm}", num_classes=10).to(dtype)


def random_batches(count, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 32, 32, generator=gen, dtype=dtype) for _ in range(count)]


def averaged_model(norm):
    """Two differently initialised float64 models, each with running statistics of its own
    batch, averaged as SWA averages weights: their statistics are now stale."""
    models = []
    for seed in (0, 1):
        model = model_for(norm, seed, torch.float64)
        with torch.no_grad():
            model.train()(random_batches(1, torch.float64, seed=10 + seed)[0])
        models.append(model)
    a, b = (m.state_dict() for m in models)
    models[0].load_state_dict({k: (a[k] + b[k]) / 2 if a[k].is_floating_point() else a[k] for k in a})
    return models[0]


def batch_statistics(layer, x):
    """The statistics a norm layer keeps, computed naively from one batch of its input."""
    rows = x.T if x.dim() == 2 else reference.channel_rows(x)
    mean = rows.mean(1)
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return {"running_mean": mean, "running_var": rows.var(1, unbiased=True)}
    if isinstance(layer, MeanBatchNorm2d):
        return {"running_mean": mean}
    deviation = (rows - mean[:, None]).abs()
    if isinstance(layer, L1BatchNorm2d):
        scale = reference.l1_scale(deviation, eps=layer.eps)
    elif isinstance(layer, TopKBatchNorm2d):
        scale = reference.top_k_scale(deviation, layer.k, eps=layer.eps)
    else:
        assert isinstance(layer, LpBatchNorm2d)
        scale = reference.lp_scale(deviation, layer.p, eps=layer.eps)
    return {"running_mean": mean, "running_scale": scale}


def expected_statistics(model, batches):
    """{layer name: {buffer: the average over batches of its batch statistics}}, from a copy
    of ``model`` run in training mode with each norm's input captured."""
    model = copy.deepcopy(model).train()
    layers = norms_with_statistics(model)
    inputs = {name: [] for name in layers}
    for name, layer in layers.items():
        layer.register_forward_pre_hook(lambda m, args, name=name: inputs[name].append(args[0].clone()))
    with torch.no_grad():
        for x in batches:
            model(x)
    expected = {}
    for name, layer in layers.items():
        per_batch = [batch_statistics(layer, x) for x in inputs[name]]
        expected[name] = {key: torch.stack([s[key] for s in per_batch]).mean(0) for key in per_batch[0]}
    return expected


def statistics_keys(model):
    return {f"{name}.{key}" for name, layer in norms_with_statistics(model).items()
            for key, _ in layer.named_buffers()}


def test_every_registered_norm_is_either_kept_or_per_sample():
    assert sorted(WITH_STATISTICS + PER_SAMPLE + ["none"]) == sorted(zoo.list_norms())
    for norm in zoo.list_norms():
        assert bool(norms_with_statistics(model_for(norm))) == (norm in WITH_STATISTICS), norm


@pytest.mark.parametrize("norm", WITH_STATISTICS)
def test_recalibrated_statistics_are_the_float64_average_over_the_batches(norm):
    model = averaged_model(norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = random_batches(4, torch.float64)
    expected = expected_statistics(model, batches[:3])

    count = zoo.recalibrate_norms(model, iter(batches), num_batches=3)  # the 4th is never used

    layers = norms_with_statistics(model)
    assert count == len(layers) == len(expected) > 0
    for name, layer in layers.items():
        for key, value in expected[name].items():
            torch.testing.assert_close(getattr(layer, key), value, rtol=1e-10, atol=1e-12,
                                       msg=lambda m: f"{name}.{key}: {m}")
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            assert layer.num_batches_tracked == 3
    after = model.state_dict()
    stats = statistics_keys(model)
    assert any(not torch.equal(before[k], after[k]) for k in stats)  # they were stale
    # every parameter and every other buffer (bwn's weights and rho among them) as it was
    assert all(torch.equal(before[k], after[k]) for k in before if k not in stats)


def test_batchnorm_recalibrates_exactly_as_update_bn():
    model = model_for("bn")
    with torch.no_grad():
        model.train()(random_batches(1, seed=5)[0])
    ours, theirs = copy.deepcopy(model), copy.deepcopy(model)
    batches = [(x, torch.zeros(4, dtype=torch.long)) for x in random_batches(3)]  # (input, target)
    assert zoo.recalibrate_norms(ours, batches) == 19
    update_bn(batches, theirs)
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert all(torch.equal(ours_state[k], theirs_state[k]) for k in ours_state)
    assert not torch.equal(ours_state["bn1.running_var"], model.state_dict()["bn1.running_var"])


def test_modes_and_momenta_come_back_and_frozen_norms_stay_frozen():
    model = model_for("l1bn").train()
    model.layer2.eval()
    model.layer1[0].bn1.momentum = 0.3
    zoo.freeze_norms(model.layer3)
    modes = {name: m.training for name, m in model.named_modules()}
    momenta = {name: m.momentum for name, m in norms_with_statistics(model).items()}
    stale = model.layer3[0].bn1.running_scale.clone()

    assert zoo.recalibrate_norms(model, random_batches(2)) == 19

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: m.momentum for name, m in norms_with_statistics(model).items()} == momenta
    assert not torch.equal(model.layer3[0].bn1.running_scale, stale)  # re-estimated all the same
    model.train()
    assert not model.layer3[0].bn1.training and model.layer1[0].bn1.training


@pytest.mark.parametrize("norm", PER_SAMPLE + ["none"])
def test_a_model_without_statistics_is_refused_and_left_alone(norm):
    model = model_for(norm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="no norm with running statistics.*gn, in, ln and ilm"):
        zoo.recalibrate_norms(model, random_batches(1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("batches, num_batches, error, message", [
    ([], None, ValueError, "batches gave no batch"),
    (None, 0, ValueError, "num_batches must be a positive integer .* got 0"),
    (None, 1.5, ValueError, "num_batches must be a positive integer .* got 1.5"),
    (None, True, ValueError, "num_batches must be a positive integer .* got True"),
    ("second is a dict", None, TypeError, "an input tensor or an .input, target. pair, got dict"),
])
def test_bad_input_gets_one_clear_error_and_keeps_the_statistics(batches, num_batches, error, message):
    model = model_for("topkbn")
    with torch.no_grad():
        model.train()(random_batches(1, seed=7)[0])
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if batches is None:
        batches = random_batches(2)
    elif isinstance(batches, str):  # the first batch has run when the second fails
        batches = [random_batches(1)[0], {"image": random_batches(1)[0]}]
    with pytest.raises(error, match=message):
        zoo.recalibrate_norms(model, batches, num_batches)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())


def test_a_layer_of_its_own_without_momentum_is_refused():
    class Centre(nn.Module):  # a running mean, but none of BatchNorm's update conventions
        def __init__(self):
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(3))

        def forward(self, x):
            return x - self.running_mean.view(1, 3, 1, 1)

    model = nn.Sequential(nn.BatchNorm2d(3), Centre(), nn.BatchNorm2d(3, track_running_stats=False))
    assert list(norms_with_statistics(model)) == ["0", "1"]  # "2" holds running_mean None
    with pytest.raises(ValueError, match="layer '1' keeps running statistics but has no momentum"):
        zoo.recalibrate_norms(model, random_batches(1))
    assert torch.equal(model[0].running_var, torch.ones(3))


# ---------------------------------------------------------------------------------------------
# freeze_norms

def norm_parameters(model):
    return {f"{name}.{key}": p for name, layer in norms_with_statistics(model).items()
            for key, p in layer.named_parameters()}


@pytest.mark.parametrize("norm", zoo.list_norms())
def test_frozen_norms_compute_with_their_statistics_in_training_mode(norm):
    model = model_for(norm)
    x = random_batches(1)[0]
    with torch.no_grad():  # statistics of its own, so frozen is not the same as fresh
        model.train()(random_batches(1, seed=3)[0])
    unfrozen = copy.deepcopy(model)
    keys = set(model.state_dict())

    report = zoo.freeze_norms(model)

    assert set(report.frozen) == set(norms_with_statistics(model))
    assert bool(report.frozen) == (norm in WITH_STATISTICS)
    assert bool(report.per_sample) == (norm in PER_SAMPLE)
    assert set(model.state_dict()) == keys
    model.load_state_dict(unfrozen.state_dict())  # checkpoints load as before
    with torch.no_grad():
        train_out = model.train()(x)  # first: bwn's training mode renormalises its weights
        eval_out = model.eval()(x)
        unfrozen_out = unfrozen.train()(x)
    assert torch.equal(train_out, eval_out)
    if norm in WITH_STATISTICS:  # without freezing, training mode normalises by the batch
        assert not torch.allclose(unfrozen_out, eval_out, atol=1e-3)


@pytest.mark.parametrize("norm", WITH_STATISTICS)
@pytest.mark.parametrize("freeze_affine", [True, False])
def test_a_training_step_moves_no_frozen_statistic(norm, freeze_affine):
    model = model_for(norm)
    zoo.freeze_norms(model, freeze_affine=freeze_affine)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = norm_parameters(model)
    assert all(p.requires_grad is not freeze_affine for p in params.values())
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x, y = random_batches(1)[0], torch.arange(4)
    F.cross_entropy(model.train()(x), y).backward()
    optimizer.step()

    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in statistics_keys(model))
    changed_norm_params = [k for k in params if not torch.equal(before[k], after[k])]
    assert changed_norm_params == ([] if freeze_affine else list(params))
    assert not torch.equal(before["fc.weight"], after["fc.weight"])  # the rest trained


@pytest.mark.parametrize("norm", PER_SAMPLE)
def test_per_sample_norms_are_reported_and_left_as_they_are(norm):
    model = model_for(norm)
    report = zoo.freeze_norms(model)
    assert report.frozen == {} and len(report.per_sample) == 19
    kind = next(iter(report.per_sample.values()))
    assert set(report.per_sample.values()) == {kind}
    assert str(report) == (f"no norm with running statistics to freeze; left 19 {kind} as they "
                           f"are (per-sample statistics, nothing to freeze)")
    model.train()
    for name in report.per_sample:
        layer = model.get_submodule(name)
        assert layer.training and all(p.requires_grad for p in layer.parameters())


def test_the_report_reads_and_a_copy_stays_frozen():
    model = model_for("mimic")
    report = zoo.freeze_norms(model)
    assert report.frozen == {"logits_norm": "BatchNorm1d"}
    assert str(report) == ("froze 1 BatchNorm1d: running statistics in training mode too, "
                           "affine parameters frozen")
    copied = copy.deepcopy(model)  # as torch.optim.swa_utils.AveragedModel copies
    copied.train()
    assert not copied.logits_norm.training and copied.layer1.training
    model.logits_norm.training = True  # the copy's train() is its own, not the original's
    copied.eval()
    assert model.logits_norm.training
