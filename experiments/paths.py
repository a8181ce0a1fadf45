"""Where the project's offline data lives: ``../shared/data`` beside the repository."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CIFAR10_FOLDER = str(SHARED_DATA / "cifar10-jpg.tgz")
MNIST10K_FOLDER = str(SHARED_DATA / "mnist10k-png.tgz")
