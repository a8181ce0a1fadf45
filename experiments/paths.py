"""Where the experiment configs find data the user owns: folders under the data root.

The paths are written as ``$RESEARCH_DATA_DIR/<file>`` and expanded when a run opens the dataset
(``research.data.roots``; unset, the root is ``~/research_data``), so no config holds a path of one
machine. Make the folders with ``python -m research.data.make_folders --dataset=cifar10`` (and
``mnist10k``) where TFDS can download, or point ``data.path`` / ``$RESEARCH_DATA_DIR`` at your own
``<split>/<class>/<image>`` folders. See docs/data.md.
"""

from pathlib import Path

from research.data.roots import CIFAR10_FOLDER, DATA_ROOT_ENV, MNIST10K_FOLDER

REPO = Path(__file__).resolve().parents[1]

__all__ = ['CIFAR10_FOLDER', 'DATA_ROOT_ENV', 'MNIST10K_FOLDER', 'REPO']
