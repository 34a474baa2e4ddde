"""PathAlign model library: slide tiling, patch encoders, the Q-Former, training and generation.

Pure Python + PyTorch + transformers + OpenSlide; never imports Django.
"""
