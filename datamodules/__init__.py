"""LightningDataModules: embedded default (digits), CIFAR-10/100, ImageFolder, streamed shards (litdata), synthetic."""
from lightning_kd.datamodules.base import InMemoryDataModule
from lightning_kd.datamodules.class_split import ClassSplitDataModule
from lightning_kd.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_kd.datamodules.digits import DigitsDataModule
from lightning_kd.datamodules.image_folder import ImageFolderDataModule
from lightning_kd.datamodules.streaming import StreamingImageDataModule
from lightning_kd.datamodules.synthetic import SyntheticDataModule

__all__ = ["InMemoryDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "DigitsDataModule",
           "ImageFolderDataModule", "SyntheticDataModule", "ClassSplitDataModule",
           "StreamingImageDataModule"]
