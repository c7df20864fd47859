"""Import-path model factories used by the tests (``tests.factories:tiny_net``)."""

from torch import nn


def tiny_net(num_classes: int, hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def wrong_width(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1))


nothing = None
