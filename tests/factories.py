"""Import-path model factories used by the tests (``tests.factories:tiny_net``)."""

import torch
from torch import nn


def tiny_net(num_classes: int, hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def wrong_width(num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes + 1))


nothing = None


class TwoHeads(nn.Module):
    """DeiT-distilled's shape on digits: two heads on one body, averaged."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(32, num_classes)
        self.head_dist = nn.Linear(32, num_classes)

    def forward(self, x):
        h = self.body(x)
        return (self.head(h) + self.head_dist(h)) / 2


def two_heads(num_classes: int) -> nn.Module:
    return TwoHeads(num_classes)


class ConvHead(nn.Module):
    """SqueezeNet's shape on digits: a 1x1 Conv head, ReLU, global pooling."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Conv2d(16, num_classes, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return torch.flatten(self.classifier(self.features(x)), 1)


def conv_head(num_classes: int) -> nn.Module:
    return ConvHead(num_classes)


def hidden_of_class_width(num_classes: int) -> nn.Module:
    """A hidden layer as wide as the classes, then the head: only the head feeds each logit alone."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes), nn.ReLU(), nn.Linear(num_classes, num_classes))


def bias_free_head(num_classes: int) -> nn.Module:
    """A classifier head without a bias (a cosine-classifier style head)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, num_classes, bias=False))
