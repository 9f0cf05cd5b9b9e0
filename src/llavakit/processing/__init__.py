"""Text and pixels to model inputs: conversation templates, image and video preprocessing, the processor."""
