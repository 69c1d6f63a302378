from .images import InputConfig, Rejected, load_image, load_mask
from .labels import label_folder
from .sources import Record, Source, load_example

__all__ = ["InputConfig", "Rejected", "Record", "Source", "label_folder", "load_example", "load_image", "load_mask"]
