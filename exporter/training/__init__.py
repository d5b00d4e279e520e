"""The training stage: configuration, the epoch loop, run directories, checkpoints, transfer learning."""
