"""Data cards -> torch datasets through one registered reader per card format, and the fixed calibration indices."""

from .calibration import calibration_indices, indices_sha256
from .cards import IMAGENET_MEAN, IMAGENET_STD, Card, get_card, list_cards
from .datasets import ArrayDataset, DatasetHandle, FileDataset, SyntheticDataset
from .load import load_dataset
from .locate import Availability, availability, locate
from .readers import IMAGE_EXTENSIONS  # importing readers registers the built-in formats
from .registry import READERS, Loaded, Reader, register_reader

__all__ = [
    "Card", "DatasetHandle", "Availability", "list_cards", "get_card", "locate", "availability", "load_dataset",
    "calibration_indices", "indices_sha256", "register_reader", "Reader", "Loaded", "READERS",
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "ArrayDataset", "FileDataset", "SyntheticDataset",
]
