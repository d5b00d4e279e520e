"""The data stage: the built-in digits and ImageFolder trees, decoded for training, calibration and parity."""
