"""Media: acquisition (archives, folders, YouTube), decoding, segmentation into clips, previews."""
