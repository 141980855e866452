"""Every norm on a CIFAR and an ImageNet ResNet learns on real CIFAR-10 images, without NaN."""

import pytest
import torch
import torch.nn.functional as F

import zoo
from zoo.data import CIFAR_MEAN, CIFAR_STD, load_cifar


@pytest.fixture(scope="module")
def cifar_batch(data_root):
    data = load_cifar(data_root / "cifar10", "test")
    x = data.images[:32].float() / 255
    x = (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)
    return x, data.labels[:32]


@pytest.mark.parametrize("norm", zoo.list_norms())
# plain SGD; ResNet-50 at batch 4 (16 values a channel at its last, 2x2 stage) needs a smaller
# step than the linear scaling rule's: without zero-init residuals, ILM's initial gains in
# (1, 2) make the deep network's first steps jumpy
@pytest.mark.parametrize("arch, size, batch, lr", [("resnet20", 32, 32, 0.0125),
                                                   ("resnet50", 64, 4, 0.001)])
def test_every_norm_trains_a_few_steps(arch, size, batch, lr, norm, cifar_batch):
    torch.manual_seed(0)
    model = zoo.create_model(arch, norm=norm, num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    if norm == "mimic":
        zoo.attach_weight_mean(model, optimizer)
    x, y = cifar_batch
    x = F.interpolate(x[:batch], size=size, mode="bilinear", align_corners=False)
    y = y[:batch]
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        losses.append(loss.item())
    assert min(losses[1:]) < losses[0], losses  # it learns (a few steps may oscillate)
