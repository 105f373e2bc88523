"""A PyTorch training script, run on cnnkit: only the imports differ.

Written the way PyTorch's own MNIST example writes it: an ``nn.Module`` subclass with only
a ``forward()``, ``F.*`` calls, ``torch.flatten``, ``loss.backward()``, ``optimizer.step()``,
``loss.item()``, a test loop under ``no_grad()`` counting ``pred.eq(target.view_as(pred))``,
a ``StepLR`` schedule and ``torch.save(model.state_dict(), ...)``. The data is
Fashion-MNIST (same 28x28 grayscale format as MNIST) from cnnkit's own dataset classes,
where PyTorch would use torchvision's.

    python examples/pytorch_mnist_style.py --epochs 1
    python examples/pytorch_mnist_style.py --limit 2000 --epochs 1    # seconds
"""

import argparse

import cnnkit as torch                      # <- was: import torch
import cnnkit.nn as nn                      # <- was: import torch.nn as nn
import cnnkit.nn.functional as F            # <- was: import torch.nn.functional as F
import cnnkit.optim as optim                # <- was: import torch.optim as optim
from cnnkit.data import FashionMNIST, Normalize, Subset   # <- was: from torchvision import ...
from cnnkit.optim.lr_scheduler import StepLR
from cnnkit.utils.data import DataLoader


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def train(args, model, device, train_loader, optimizer, epoch, losses):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if batch_idx % args.log_interval == 0:
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))
        if args.dry_run:
            break


def test(model, device, test_loader):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.0f}%)\n".format(
        test_loss, correct, len(test_loader.dataset), 100. * correct / len(test_loader.dataset)))
    return correct / len(test_loader.dataset)


def main(argv=None):
    parser = argparse.ArgumentParser(description="PyTorch-style Fashion-MNIST example on cnnkit")
    parser.add_argument("--batch-size", type=int, default=64, help="input batch size for training (default: 64)")
    parser.add_argument("--test-batch-size", type=int, default=1000, help="input batch size for testing")
    parser.add_argument("--epochs", type=int, default=1, help="number of epochs to train (default: 1)")
    parser.add_argument("--lr", type=float, default=1.0, help="learning rate (default: 1.0)")
    parser.add_argument("--gamma", type=float, default=0.7, help="learning rate step gamma (default: 0.7)")
    parser.add_argument("--dry-run", action="store_true", help="quickly check a single pass")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: 1)")
    parser.add_argument("--log-interval", type=int, default=100, help="batches between log lines")
    parser.add_argument("--limit", type=int, default=None, help="use only this many images of each split")
    parser.add_argument("--save-model", action="store_true", help="save the model's state dict")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    transform = Normalize((0.2860,), (0.3530,))      # Fashion-MNIST's mean and std
    dataset1 = FashionMNIST(train=True, transform=transform)
    dataset2 = FashionMNIST(train=False, transform=transform)
    if args.limit:
        dataset1, dataset2 = Subset(dataset1, range(args.limit)), Subset(dataset2, range(args.limit))
    train_loader = DataLoader(dataset1, batch_size=args.batch_size, shuffle=True, num_workers=1)
    test_loader = DataLoader(dataset2, batch_size=args.test_batch_size)

    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    losses = []
    accuracy = None
    for epoch in range(1, args.epochs + 1):
        train(args, model, device, train_loader, optimizer, epoch, losses)
        accuracy = test(model, device, test_loader)
        scheduler.step()

    if args.save_model:
        torch.save(model.state_dict(), "mnist_cnn.pt")
    return losses, accuracy


if __name__ == "__main__":
    main()
