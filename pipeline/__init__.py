"""Pre-compression pipeline: source images -> 224² crops -> codec -> metrics -> WebDataset shards."""

__version__ = "0.1.0"
