"""The four reference networks written the way PyTorch users write them: ``nn.Module``
subclasses holding their layers as attributes, with ``F.*`` calls for the stateless steps
in ``forward()``. ``bench_module_style.py`` times them against their ``Sequential`` twins
(``reference_models.py``), whose runs the fusion planner may combine."""

from __future__ import annotations

import cnnkit
import cnnkit.nn as nn
import cnnkit.nn.functional as F


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, 5)
        self.conv2 = nn.Conv2d(10, 20, 5)
        self.fc = nn.Linear(320, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        return self.fc(cnnkit.flatten(x, 1))


class Seed000(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 3)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(800, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(cnnkit.flatten(x, 1)))
        return self.fc2(x)


class Conv4(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv4 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc1 = nn.Linear(3136, 256)
        self.fc2 = nn.Linear(256, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        x = F.max_pool2d(F.relu(self.conv4(x)), 2)
        x = F.relu(self.fc1(cnnkit.flatten(x, 1)))
        x = F.dropout(x, 0.5, self.training)
        return self.fc2(x)


class VGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 64, 3, padding=1), nn.Conv2d(64, 128, 3, padding=1),
                                    nn.Conv2d(128, 256, 3, padding=1), nn.Conv2d(256, 512, 3, padding=1),
                                    nn.Conv2d(512, 512, 3, padding=1)])
        self.fc1 = nn.Linear(2048, 512)
        self.fc2 = nn.Linear(512, 10)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i != 3:
                x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(cnnkit.flatten(x, 1)))
        return self.fc2(x)


MODELS = {"lenet": LeNet, "seed000": Seed000, "conv4": Conv4, "vgg_cifar": VGG}
