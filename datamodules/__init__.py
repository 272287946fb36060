"""LightningDataModules: embedded default (digits), CIFAR-10/100, ImageFolder, synthetic."""
from datamodules.base import InMemoryDataModule
from datamodules.class_split import ClassSplitDataModule
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.digits import DigitsDataModule
from datamodules.image_folder import ImageFolderDataModule
from datamodules.synthetic import SyntheticDataModule

__all__ = ["InMemoryDataModule", "CIFAR10DataModule", "CIFAR100DataModule", "DigitsDataModule",
           "ImageFolderDataModule", "SyntheticDataModule", "ClassSplitDataModule"]
