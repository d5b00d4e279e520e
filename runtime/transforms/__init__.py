"""Preprocessing, test-time augmentation, train-time augmentation and image decoding: numpy and Pillow only."""
