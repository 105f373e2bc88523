"""PyTorch's CIFAR-10 tutorial network and loop, run on cnnkit: only the imports differ.

Written the way the official "Training a classifier" tutorial writes it: one ``pool``
layer used twice in ``forward()``, ``torch.flatten``, ``nn.CrossEntropyLoss``, SGD with
momentum, a running loss printed every few batches, ``torch.save(net.state_dict(), PATH)``
then ``net.load_state_dict(torch.load(PATH, weights_only=True))``, ``torch.max(outputs, 1)``
for the predictions and per-class accuracy with ``classes[label]`` (a 0-d Tensor indexing a
list). CIFAR-10 is used when it is on disk (``cnnkit datasets``); otherwise, so that the
script runs anywhere, random 32x32 colour images of 10 classes made learnable by a class
colour.

    python examples/pytorch_cifar_tutorial_style.py --epochs 2
"""

import argparse
import os
import tempfile

import numpy as np

import cnnkit as torch                      # <- was: import torch
import cnnkit.nn as nn                      # <- was: import torch.nn as nn
import cnnkit.nn.functional as F            # <- was: import torch.nn.functional as F
import cnnkit.optim as optim                # <- was: import torch.optim as optim
from cnnkit.utils.data import DataLoader, TensorDataset

classes = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)  # flatten all dimensions except batch
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def _datasets(limit):
    """CIFAR-10 when it is on disk, else learnable synthetic images of the same shape."""
    try:
        from cnnkit.data import CIFAR10, Normalize, Subset

        norm = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        train, test = CIFAR10(train=True, download=False, transform=norm), CIFAR10(train=False, download=False,
                                                                                    transform=norm)
        return Subset(train, range(min(limit, len(train)))), Subset(test, range(min(limit, len(test))))
    except Exception:                        # not on disk: made-up images, same format
        rng = np.random.default_rng(0)
        colours = rng.standard_normal((10, 3, 1, 1)).astype(np.float32)

        def make(n):
            y = rng.integers(0, 10, n)
            x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32) * 0.5 + colours[y]
            return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

        return make(limit), make(max(limit // 5, 10))


def main(argv=None):
    parser = argparse.ArgumentParser(description="PyTorch's CIFAR-10 tutorial on cnnkit")
    parser.add_argument("--epochs", type=int, default=2, help="passes over the training images (default 2)")
    parser.add_argument("--limit", type=int, default=2000, help="training images used (default 2000)")
    parser.add_argument("--print-every", type=int, default=100, help="batches between loss lines")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    trainset, testset = _datasets(args.limit)
    trainloader = DataLoader(trainset, batch_size=4, shuffle=True, num_workers=2)
    testloader = DataLoader(testset, batch_size=4, shuffle=False, num_workers=2)

    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(net.parameters(), lr=0.001, momentum=0.9)

    losses = []
    for epoch in range(args.epochs):  # loop over the dataset multiple times
        running_loss = 0.0
        for i, data in enumerate(trainloader, 0):
            # get the inputs; data is a list of [inputs, labels]
            inputs, labels = data

            # zero the parameter gradients
            optimizer.zero_grad()

            # forward + backward + optimize
            outputs = net(inputs)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()

            # print statistics
            running_loss += loss.item()
            losses.append(loss.item())
            if i % args.print_every == args.print_every - 1:
                print(f"[{epoch + 1}, {i + 1:5d}] loss: {running_loss / args.print_every:.3f}")
                running_loss = 0.0
    print("Finished Training")

    PATH = os.path.join(tempfile.mkdtemp(), "cifar_net.pth")
    torch.save(net.state_dict(), PATH)
    net = Net()
    net.load_state_dict(torch.load(PATH, weights_only=True))

    correct = 0
    total = 0
    correct_pred = {classname: 0 for classname in classes}
    total_pred = {classname: 0 for classname in classes}
    # since we're not training, we don't need to calculate the gradients for our outputs
    with torch.no_grad():
        for data in testloader:
            images, labels = data
            outputs = net(images)
            _, predicted = torch.max(outputs, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
            for label, prediction in zip(labels, predicted):
                if label == prediction:
                    correct_pred[classes[label]] += 1
                total_pred[classes[label]] += 1
    print(f"Accuracy of the network on the {total} test images: {100 * correct // total} %")
    for classname, correct_count in correct_pred.items():
        if total_pred[classname]:
            accuracy = 100 * float(correct_count) / total_pred[classname]
            print(f"Accuracy for class: {classname:5s} is {accuracy:.1f} %")
    return losses, correct / total


if __name__ == "__main__":
    main()
